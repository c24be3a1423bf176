"""Guard: `tools/call` (task-augmented too), `prompts/get`, `resources/read`, resource subscriptions and completions
are allowed only when the policy's decision allows them. A refusal is answered here, nothing reaches the upstream:
HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope"` (so a client can step up) and a JSON-RPC error
naming what was refused and which scopes are missing.
"""

from __future__ import annotations

from typing import Any

from proxy.exchange import Answer, Exchange
from proxy.guards.catalog import Catalog
from proxy.jsonrpc import INVALID_PARAMS, Message, error
from proxy.policy.decide import Decision, Kind, decide
from proxy.policy.reload import LivePolicy

FORBIDDEN = -32003

# method -> (what it touches, where the name is in params)
GATED: dict[str, tuple[Kind, str]] = {
    "tools/call": ("tool", "name"),
    "prompts/get": ("prompt", "name"),
    "resources/read": ("resource", "uri"),
    "resources/subscribe": ("resource", "uri"),
    "resources/unsubscribe": ("resource", "uri"),
}


def _target(message: Message) -> tuple[Kind, Any] | None:
    method = message.get("method")
    params = message.get("params") or {}
    if method in GATED:
        kind, field = GATED[method]
        return kind, params.get(field)
    if method == "completion/complete":
        ref = params.get("ref") if isinstance(params.get("ref"), dict) else {}
        if ref.get("type") == "ref/prompt":
            return "prompt", ref.get("name")
        if ref.get("type") == "ref/resource":
            return "resource", ref.get("uri")
        return "resource", None
    return None


def refusal(exchange: Exchange, msg_id: Any, decision: Decision) -> Answer:
    if decision.missing:
        text = f"{decision.kind} {decision.name!r} needs scope {' '.join(decision.missing)}"
    else:
        text = f"{decision.kind} {decision.name!r} is not available to this credential"
    data = {"kind": decision.kind, "name": decision.name, "missing_scopes": list(decision.missing),
            "requestId": exchange.request_id}
    headers: tuple[tuple[str, str], ...] = ()
    if decision.missing:
        value = (f'Bearer error="insufficient_scope", scope="{" ".join(decision.required)}", '
                 f'resource_metadata="{exchange.resource_metadata}"')
        headers = (("WWW-Authenticate", value),)
    return Answer(error(msg_id, FORBIDDEN, text, data), http_status=403, headers=headers, decision="deny",
                  reason="scope" if decision.missing else "unlisted")


class ScopeGuard:
    def __init__(self, live: LivePolicy, catalog: Catalog) -> None:
        self.live = live
        self.catalog = catalog

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        target = _target(message)
        if target is None:
            return message
        kind, name = target
        msg_id = message.get("id")
        if not isinstance(name, str) or not name:
            field = "uri" if kind == "resource" else "name"
            return Answer(error(msg_id, INVALID_PARAMS, f"params.{field} must be a non-empty string",
                                {"requestId": exchange.request_id}), http_status=400, decision="invalid")
        if kind == "tool" and not isinstance(message["params"].get("arguments", {}), dict):
            return Answer(error(msg_id, INVALID_PARAMS, "params.arguments must be an object",
                                {"requestId": exchange.request_id}), http_status=400, decision="invalid")
        held = exchange.principal.scopes if exchange.principal is not None else frozenset()
        hint = self.catalog.read_only_hint(name) if kind == "tool" else None  # used under `default: annotations`
        decision = decide(self.live.rules, held, kind, name, hint)
        if not decision.allowed:
            return refusal(exchange, msg_id, decision)
        exchange.decision = decision  # the current message's: later guards read it
        return message
