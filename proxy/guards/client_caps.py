"""What the client can do, per session: 2025-11-25 clients declare capabilities once, in `initialize`; 2026-07-28
clients declare them on every request (`_meta` clientCapabilities), so those need no memory.

Guard: notes the capabilities an `initialize` declares. Response hook: when the upstream opens a session for it, the
proxy remembers (in the store, beside the session binding) whether that client can show an elicitation form. A
session whose capabilities are not on record counts as one that cannot: a person's approval is never assumed.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from proxy.guards.approval import can_elicit, can_open_urls
from proxy.jsonrpc import Message
from proxy.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from proxy.exchange import Exchange

CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"
TTL_SECONDS = 7 * 86400  # as long as the session binding; refreshed on every read
KEY = "scopegate:session-elicit:"  # + the session binding's hash: it ends with the binding (session_binding.py)


def _key(session_id: str) -> str:
    return KEY + hashlib.sha256(session_id.encode()).hexdigest()


class ClientCapabilities:
    def __init__(self, store: Store) -> None:
        self.store = store

    methods = frozenset({"initialize"})

    async def __call__(self, exchange: Exchange, message: Message) -> Message:
        """Guard: note what `initialize` declares, for the response hook."""
        if message.get("method") == "initialize":
            params = message.get("params")
            declared = params.get("capabilities") if isinstance(params, dict) else None
            exchange.client_capabilities = declared if isinstance(declared, dict) else {}
        return message

    async def on_response(self, exchange: Exchange, status: int, headers: CIMultiDict[str]) -> None:
        """Response hook: a session the upstream just opened for an `initialize` gets its capabilities on record."""
        new_id = headers.get("Mcp-Session-Id")
        if exchange.client_capabilities is None or status >= 400 or not new_id or new_id == exchange.session_id:
            return
        declared = exchange.client_capabilities
        modes = [m for m, able in (("form", can_elicit(declared)), ("url", can_open_urls(declared))) if able]
        await self.store.set(_key(new_id), ",".join(modes), ttl=TTL_SECONDS)

    async def can_elicit(self, exchange: Exchange, message: Message) -> bool:
        """Can this request's client show a form to its person? Unknown means no."""
        return "form" in await self._modes(exchange, message)

    async def can_open_urls(self, exchange: Exchange, message: Message) -> bool:
        """Can this request's client send its person to a URL (URL-mode elicitation)? Unknown means no."""
        return "url" in await self._modes(exchange, message)

    async def _modes(self, exchange: Exchange, message: Message) -> tuple[str, ...]:
        if (exchange.protocol_version or "") >= "2026-07-28":
            params = message.get("params")
            meta = params.get("_meta") if isinstance(params, dict) else None
            declared = meta.get(CAPABILITIES_META) if isinstance(meta, dict) else None
            return tuple(m for m, able in (("form", can_elicit(declared)), ("url", can_open_urls(declared))) if able)
        if not exchange.session_id:
            return ()
        try:
            raw = await self.store.get(_key(exchange.session_id), refresh_ttl=TTL_SECONDS)
        except StoreUnavailable:
            return ()
        return tuple((raw or "").split(","))
