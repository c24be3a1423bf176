"""Rewriter: list results show only what the caller may use, decided by the same function that gates calls.

A list is recognised by what it is, not by which request it seems to answer: every response whose result holds a
`tools`, `prompts`, `resources` or `resourceTemplates` array is filtered, whatever its id (ids collide, repeat, or
arrive on a GET stream, a resumed stream or a replay), in JSON bodies and SSE events alike, page by page (cursors
are left as they are). A list the proxy cannot read (such a key holding something other than an array, or a list
request answered with no result object) raises `UnreadableList`: the answer carrying it is refused, not relayed.
A filtered 2026-07-28 result says `cacheScope: "private"`: it was made for this caller. A write that needs
confirmation says so in its description and offers an optional `confirmationToken` argument; its `outputSchema`
(if any) accepts the preview too. Nothing seen here feeds a decision on calls: a list answers one client's
session; the guards consult the proxy's own catalog (`catalog.py`).

The same upstream list comes back again and again, and the same few scope sets ask for it: a filtered result is
kept (`ListCache`) under the digest of the upstream's result bytes and everything the filter reads besides
(method, effective scopes, protocol version, the credential's workspaces and whether a bound workspace is hidden;
the policy in force, whose reload empties it), and reused with the new id spliced in, without parsing the list
again. A miss is the whole path; the cache only ever holds what that path made.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from proxy.guards.confirmation import TOKEN_ARGUMENT, with_preview
from proxy.guards.pins import PinWatch, held_rule
from proxy.guards.workspace import workspace_problem
from proxy.jsonrpc import Message, RawResponse, dumps, dumps_kept
from proxy.policy.decide import Kind, Rules, remembered
from proxy.policy.model import Rule
from proxy.policy.pins import SECTIONS as PINNED
from proxy.policy.reload import LivePolicy

if TYPE_CHECKING:
    from proxy.exchange import Exchange

LISTS: dict[str, tuple[str, Kind, str]] = {  # method -> (result key, kind, item key)
    "tools/list": ("tools", "tool", "name"),
    "prompts/list": ("prompts", "prompt", "name"),
    "resources/list": ("resources", "resource", "uri"),
    "resources/templates/list": ("resourceTemplates", "resource", "uriTemplate"),
}
# What a list looks like, whichever method (if any) it answers: result key -> (kind, item key).
SHAPES: dict[str, tuple[Kind, str]] = {key: (kind, item_key) for key, kind, item_key in LISTS.values()}
MODERN = "2026-07-28"
LIST_CHANGED = "notifications/tools/list_changed"
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

PAGE_NOTE = (
    " Changes data only after a named person approves it on scopegate's approval page: the first call answers with "
    "a link for your user; after approval, call again with the same arguments. Nothing changes until then."
)


def advertise_confirmation(tool: dict[str, Any], rule: Rule | None = None) -> None:
    """Tell agents how confirmation works, where they look: the description and the input schema."""
    human = rule is not None and rule.confirmer == "human"
    note = PAGE_NOTE if rule is not None and rule.on_page else HUMAN_NOTE if human else CONFIRMATION_NOTE
    tool["description"] = (tool.get("description") or "").rstrip() + note
    schema = tool.get("inputSchema")
    tokens = not human or (rule is not None and rule.fallback == "token" and not rule.on_page)
    if tokens and isinstance(schema, dict) and isinstance(schema.get("properties", {}), dict):
        schema["properties"] = {**schema.get("properties", {}), TOKEN_ARGUMENT: _TOKEN_PROPERTY}
    if isinstance(tool.get("outputSchema"), dict):  # strict clients check the preview against it
        tool["outputSchema"] = with_preview(tool["outputSchema"])


def read_only_hint(tool: dict[str, Any]) -> bool:
    """The item's own hint: what this list says is what the caller sees (calls ask the proxy's own catalog)."""
    annotations = tool.get("annotations")
    return isinstance(annotations, dict) and annotations.get("readOnlyHint") is True


CacheKey = tuple[str, bytes, frozenset[str], str | None, Any]


class ListCache:
    """Filtered results by what made them, least recently used out first, bounded by their bytes. Tied to one
    `Rules`: a policy reload starts it afresh."""

    def __init__(self, limit_bytes: int = 32 * 1024 * 1024) -> None:
        self.limit = limit_bytes
        self.size = 0
        self.rules: Rules | None = None
        self.hits = self.misses = 0
        self._entries: OrderedDict[CacheKey, bytes] = OrderedDict()

    def get(self, rules: Rules, key: CacheKey) -> bytes | None:
        if rules is not self.rules:
            self.clear()
            self.rules = rules  # held, so its id cannot be reused by another policy while keyed on
            self.misses += 1
            return None
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        return found

    def put(self, rules: Rules, key: CacheKey, value: bytes) -> None:
        if rules is not self.rules or len(value) > self.limit // 4:
            return
        old = self._entries.pop(key, None)
        self.size += len(value) - (len(old) if old is not None else 0)
        self._entries[key] = value
        while self.size > self.limit:
            _, dropped = self._entries.popitem(last=False)
            self.size -= len(dropped)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)


class UnreadableList(Exception):
    """A list travels where the proxy cannot tell what it holds."""


class ListFilter:
    def __init__(self, live: LivePolicy, cache: ListCache | None = None, pins: PinWatch | None = None) -> None:
        self.live = live
        self.cache = cache if cache is not None else ListCache()
        self.pins = pins or PinWatch()

    def saw(self, message: Message) -> None:
        """An upstream watch: when it says its tools changed, what was made from its earlier lists goes (memory
        only: what the upstream sends next has other bytes, so other keys)."""
        if message.get("method") == LIST_CHANGED and "id" not in message:
            self.cache.clear()

    def cache_key(self, exchange: Exchange, method: str | None, digest: bytes) -> CacheKey:
        """Everything `__call__` reads besides the list and the policy: change one, and the result may differ.
        Any result may hold any kind of list, so the facts of every kind are in the key."""
        principal = exchange.principal
        held = principal.scopes if principal is not None else frozenset()
        # resources: the workspaces this credential may read (workspace_problem)
        reach = None if principal is None else (
            principal.bound_workspace, principal.workspaces,
            frozenset(name for name, level in principal.permissions.items() if level == "none"))
        # tools: whether the bound workspace's argument is hidden
        hidden = bool(self.live.of(exchange).rules.policy.hide_bound_workspace and principal is not None
                      and principal.bound_workspace)
        return (method or "", digest, held, exchange.protocol_version, (reach, hidden))

    def raw(self, exchange: Exchange, response: RawResponse, method: str | None) -> bytes:
        """The filtered result's bytes for a response not yet parsed: made once per key, then reused (lists only:
        another result is re-serialised, not kept). Raises orjson.JSONDecodeError when the result is not JSON,
        UnreadableList as `__call__` does."""
        if method is not None and method not in LISTS:  # an answer known to be no list: nothing worth keeping
            return dumps(self(exchange, response.message(), method)["result"])
        rules = self.live.of(exchange).rules  # the request's pinned policy (the cache is keyed on it too)
        key = self.cache_key(exchange, method, hashlib.sha256(response.result).digest())
        found = self.cache.get(rules, key)
        if found is not None:
            return found
        message = response.message()
        listed = isinstance(message["result"], dict) and any(k in message["result"] for k in SHAPES)
        made = self(exchange, message, method)["result"]
        if not listed:
            return dumps(made)
        kept = dumps_kept(made)  # its size is what the LRU counts
        self.cache.put(rules, key, kept)
        return kept

    def __call__(self, exchange: Exchange, response: Message, method: str | None) -> Message:
        """`response` with every list in its result filtered, whatever method (if any) it answers."""
        # What this reads of the exchange, `cache_key` must hold too (tests/test_list_cache.py attacks it).
        result = response.get("result")
        if not isinstance(result, dict):
            if method in LISTS and "result" in response:
                raise UnreadableList(method)
            return response
        found = False
        for key, (kind, item_key) in SHAPES.items():
            if key in result:
                if not isinstance(result[key], list):
                    raise UnreadableList(key)
                result[key] = self._visible(exchange, kind, item_key, result[key], key)
                found = True
        if not found:
            return response
        rules = self.live.of(exchange).rules  # the request's pinned policy (the cache is keyed on it too)
        principal = exchange.principal
        if "tools" in result and rules.policy.hide_bound_workspace and principal and principal.bound_workspace:
            self._hide_workspace(result["tools"], rules.policy.workspace_property, rules)
        if (exchange.protocol_version or "") >= MODERN:
            result["cacheScope"] = "private"
        return response

    def _visible(self, exchange: Exchange, kind: Kind, item_key: str, items: list[Any], section: str) -> list[Any]:
        rules = self.live.of(exchange).rules  # the request's pinned policy (the cache is keyed on it too)
        hints = kind == "tool" and rules.policy.default == "annotations"  # only then do hints count
        held = exchange.principal.scopes if exchange.principal is not None else frozenset()
        pinned = rules.pins is not None and section in PINNED
        kept = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(name := item.get(item_key), str):
                continue  # what cannot be named cannot be allowed
            hold = False
            if pinned:  # judged before anything here changes the item (the confirmation notes)
                judged = self.pins.item(rules, section, item)
                # Only a tool's call can be held; a prompt or template that would be is not shown.
                if judged.action == "hide" or (judged.action == "hold" and section != "tools"):
                    continue
                hold = judged.action == "hold"
            decision = remembered(rules, held, kind, name, read_only_hint(item) if hints else None)
            if decision.allowed and not (item_key == "uri" and self._other_workspace(exchange, name)):
                kept.append(item)
                if hold:
                    assert rules.policy.pins is not None
                    advertise_confirmation(item, held_rule(rules, name, rules.policy.pins.hold_confirm))
                elif decision.confirm:
                    found = rules.find("tool", name)
                    advertise_confirmation(item, found[1] if found else None)
        return kept

    def _other_workspace(self, exchange: Exchange, uri: str) -> bool:
        """A resource in a workspace this caller may not read is not shown: it could not be read either."""
        named, workspace = self.live.of(exchange).rules.resource_workspace(uri)
        if not named or exchange.principal is None:
            return named
        return workspace is None or workspace_problem(exchange.principal, workspace) is not None

    def _hide_workspace(self, tools: list[dict[str, Any]], prop: str, rules: Rules) -> None:
        """A bound credential need not (and should not guess to) name its workspace: the proxy supplies it."""
        for tool in tools:
            schema = tool.get("inputSchema")
            if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
                continue
            if prop in schema["properties"] and self.workspace_injected(tool["name"], rules):
                schema["properties"] = {k: v for k, v in schema["properties"].items() if k != prop}
                if isinstance(schema.get("required"), list):
                    schema["required"] = [r for r in schema["required"] if r != prop]

    def workspace_injected(self, tool: str, rules: Rules) -> bool:
        outcome = rules.outcome("tool", tool)
        return outcome is None or outcome.workspace in ("inject", None)
