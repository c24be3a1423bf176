"""Rewriter: list results show only what the caller may use, decided by the same function that gates calls.

Applies to `tools/list`, `prompts/list`, `resources/list` and `resources/templates/list`, page by page (cursors
are left as they are), in JSON bodies and SSE events alike. A filtered 2026-07-28 result says
`cacheScope: "private"`: it was made for this caller. A write that needs confirmation says so in its description
and offers an optional `confirmationToken` argument; its `outputSchema` (if any) accepts the preview too.
Nothing seen here feeds a decision on calls: a list answers one client's session; the guards consult the proxy's
own catalog (`catalog.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.guards.confirmation import TOKEN_ARGUMENT, with_preview
from proxy.guards.workspace import workspace_problem
from proxy.jsonrpc import Message
from proxy.policy.decide import Kind, remembered
from proxy.policy.model import Rule
from proxy.policy.reload import LivePolicy

if TYPE_CHECKING:
    from proxy.exchange import Exchange

LISTS: dict[str, tuple[str, Kind, str]] = {  # method -> (result key, kind, item key)
    "tools/list": ("tools", "tool", "name"),
    "prompts/list": ("prompts", "prompt", "name"),
    "resources/list": ("resources", "resource", "uri"),
    "resources/templates/list": ("resourceTemplates", "resource", "uriTemplate"),
}
MODERN = "2026-07-28"
CONFIRMATION_NOTE = (
    " Changes data: the first call returns a preview and a confirmationToken without changing anything (a result "
    "with status confirmation_required, which the output schema allows); call again with the same arguments plus "
    "confirmationToken to apply."
)
_TOKEN_PROPERTY = {
    "type": "string",
    "description": "Leave out on the first call. To apply a previewed change, pass the confirmationToken the "
                   "preview returned, with the same arguments.",
}


HUMAN_NOTE = (
    " Changes data only after a person approves: the client shows them the exact change (an approval form) first; "
    "if they decline, nothing changes."
)


def advertise_confirmation(tool: dict[str, Any], rule: Rule | None = None) -> None:
    """Tell agents how confirmation works, where they look: the description and the input schema."""
    human = rule is not None and rule.confirmer == "human"
    tool["description"] = (tool.get("description") or "").rstrip() + (HUMAN_NOTE if human else CONFIRMATION_NOTE)
    schema = tool.get("inputSchema")
    tokens = not human or (rule is not None and rule.fallback == "token")
    if tokens and isinstance(schema, dict) and isinstance(schema.get("properties", {}), dict):
        schema["properties"] = {**schema.get("properties", {}), TOKEN_ARGUMENT: _TOKEN_PROPERTY}
    if isinstance(tool.get("outputSchema"), dict):  # strict clients check the preview against it
        tool["outputSchema"] = with_preview(tool["outputSchema"])


def read_only_hint(tool: dict[str, Any]) -> bool:
    """The item's own hint: what this list says is what the caller sees (calls ask the proxy's own catalog)."""
    annotations = tool.get("annotations")
    return isinstance(annotations, dict) and annotations.get("readOnlyHint") is True


class ListFilter:
    methods = frozenset(LISTS)

    def __init__(self, live: LivePolicy) -> None:
        self.live = live

    def __call__(self, exchange: Exchange, method: str, response: Message) -> Message:
        result = response.get("result")
        key, kind, item_key = LISTS[method]
        if not isinstance(result, dict) or not isinstance(result.get(key), list):
            return response
        items: list[Any] = result[key]
        rules = self.live.rules
        hints = kind == "tool" and rules.policy.default == "annotations"  # only then do hints count
        held = exchange.principal.scopes if exchange.principal is not None else frozenset()
        kept = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(name := item.get(item_key), str):
                continue
            decision = remembered(rules, held, kind, name, read_only_hint(item) if hints else None)
            if decision.allowed and not (item_key == "uri" and self._other_workspace(exchange, name)):
                kept.append(item)
                if decision.confirm:
                    found = rules.find("tool", name)
                    advertise_confirmation(item, found[1] if found else None)
        result[key] = kept
        principal = exchange.principal
        if kind == "tool" and rules.policy.hide_bound_workspace and principal and principal.bound_workspace:
            self._hide_workspace(result[key], rules.policy.workspace_property)
        if (exchange.protocol_version or "") >= MODERN:
            result["cacheScope"] = "private"
        return response

    def _other_workspace(self, exchange: Exchange, uri: str) -> bool:
        """A resource in a workspace this caller may not read is not shown: it could not be read either."""
        named, workspace = self.live.rules.resource_workspace(uri)
        if not named or exchange.principal is None:
            return named
        return workspace is None or workspace_problem(exchange.principal, workspace) is not None

    def _hide_workspace(self, tools: list[dict[str, Any]], prop: str) -> None:
        """A bound credential need not (and should not guess to) name its workspace: the proxy supplies it."""
        for tool in tools:
            schema = tool.get("inputSchema")
            if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
                continue
            if prop in schema["properties"] and self.workspace_injected(tool["name"]):
                schema["properties"] = {k: v for k, v in schema["properties"].items() if k != prop}
                if isinstance(schema.get("required"), list):
                    schema["required"] = [r for r in schema["required"] if r != prop]

    def workspace_injected(self, tool: str) -> bool:
        outcome = self.live.rules.outcome("tool", tool)
        return outcome is None or outcome.workspace in ("inject", None)
