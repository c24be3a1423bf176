"""Rewriter: list results show only what the caller may use, decided by the same function that gates calls.

Applies to `tools/list`, `prompts/list`, `resources/list` and `resources/templates/list`, page by page (cursors
are left as they are), in JSON bodies and SSE events alike. A filtered 2026-07-28 result says
`cacheScope: "private"`: it was made for this caller. Tool annotations seen here feed the catalog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.catalog import Catalog
from proxy.decide import Kind, allowed
from proxy.jsonrpc import Message
from proxy.policy_reload import LivePolicy

if TYPE_CHECKING:
    from proxy.exchange import Exchange

LISTS: dict[str, tuple[str, Kind, str]] = {  # method -> (result key, kind, item key)
    "tools/list": ("tools", "tool", "name"),
    "prompts/list": ("prompts", "prompt", "name"),
    "resources/list": ("resources", "resource", "uri"),
    "resources/templates/list": ("resourceTemplates", "resource", "uriTemplate"),
}
MODERN = "2026-07-28"


class ListFilter:
    methods = frozenset(LISTS)

    def __init__(self, live: LivePolicy, catalog: Catalog) -> None:
        self.live = live
        self.catalog = catalog

    def __call__(self, exchange: Exchange, method: str, response: Message) -> Message:
        result = response.get("result")
        key, kind, item_key = LISTS[method]
        if not isinstance(result, dict) or not isinstance(result.get(key), list):
            return response
        items: list[Any] = result[key]
        rules = self.live.rules
        hints = kind == "tool" and rules.policy.default == "annotations"  # only then do hints count
        if hints:
            self.catalog.learn(items)
        held = exchange.principal.scopes if exchange.principal is not None else frozenset()
        hint = self.catalog.read_only_hint
        result[key] = [
            item for item in items
            if isinstance(item, dict) and isinstance(name := item.get(item_key), str)
            and allowed(rules, held, kind, name, hint(name) if hints else None)
        ]
        if (exchange.protocol_version or "") >= MODERN:
            result["cacheScope"] = "private"
        return response
