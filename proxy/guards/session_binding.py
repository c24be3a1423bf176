"""An `Mcp-Session-Id` belongs to the credential that opened it; another credential presenting it gets 404.

Sessions are not authentication (mcp-protocol.md): a leaked session id must not let a second caller ride on the
first one's session. The binding is made when the upstream hands out a session id, checked on every later request,
and dropped when the session is deleted. Keys hold a hash of the session id, never the id itself.

Bounded and fair: one credential holds at most `max_per_credential` bindings. Many clients never send DELETE and a
binding lives a week past its last use, so a busy honest credential must not be refused for a week: at its quota,
its own least recently used binding is dropped instead (that session then gets 404, and its client initializes
again). One credential's flood thus recycles its own room and never takes what others need. What the proxy keeps
per session beside the binding (`companions`: keys named by the same hash) ends with it.

The upstream is not told of a dropped session: the store holds only the id's hash, so the proxy cannot name it. The
upstream keeps it until its own idle timeout, as it does for every client that leaves without DELETE.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from proxy.exchange import Answer, acts_on
from proxy.identity.principal import OAUTH_GRANT_PREFIX
from proxy.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, error, rpc_error
from proxy.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from proxy.exchange import Exchange, Message
    from proxy.identity.principal import Principal

KEY = "scopegate:session:"
GROUP = "scopegate:sessions-of:"  # one credential's bindings, for its quota (a sorted set in Redis)
TTL_SECONDS = 7 * 86400  # refreshed on every use: an idle session is forgotten after a week
STALE_OK_SECONDS = 600.0  # while the store is down, bindings it confirmed this recently still hold


def session_key(session_id: str) -> str:
    return KEY + hashlib.sha256(session_id.encode()).hexdigest()


def owner(principal: Principal) -> str:
    return f"{principal.kind}:{principal.credential_id}"


def group_key(bound: str) -> str:
    return GROUP + hashlib.sha256(bound.encode()).hexdigest()


def quota_of(principal: Principal) -> str:
    """Whose quota a new session counts against. A person mints OAuth grants at will (each consent is one): their
    grants share one quota, the person's, or each new grant would bring a fresh one. Other credentials are made by
    an operator or an issuer: one quota each."""
    if principal.credential_id.startswith(OAUTH_GRANT_PREFIX):
        return f"person:{principal.subject}"
    return owner(principal)


class SessionBinding:
    def __init__(self, store: Store, max_per_credential: int = 1000, companions: tuple[str, ...] = (),
                 on_evict: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.max_per_credential = max_per_credential
        self.companions = companions  # key prefixes of per-session state named by the binding's hash
        self.on_evict = on_evict
        self._confirmed: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (owner, when), bounded
        self.upstream_sessions = False  # seen the upstream hand out a session: its `initialize` needs a binding

    @acts_on("initialize")
    async def opening(self, exchange: Exchange, message: Message) -> Message | Answer:
        """Guard: an `initialize` outside a session makes the upstream open one that must then be bound here. While
        the store cannot bind it, it is refused before the upstream opens a session nobody could use. Only once the
        upstream is known to hand out sessions: a stateless upstream's `initialize` needs no binding, and flows."""
        if message.get("method") != "initialize" or exchange.session_id is not None or not self.upstream_sessions:
            return message
        try:
            await self.store.exists(KEY + "probe")  # the breaker's answer when open: no wait on a dead store
        except StoreUnavailable:
            return Answer(error(message.get("id"), INTERNAL_ERROR, "session store unavailable, retry shortly"),
                          http_status=503, headers=(("Retry-After", "1"),), decision="refuse",
                          reason="store unavailable")
        return message

    def _remember(self, key: str, bound: str) -> None:
        now = time.monotonic()
        self._confirmed[key] = (bound, now)
        self._confirmed.move_to_end(key)
        # Oldest first: what is older than the stale window can never be used again, and the whole is bounded.
        while self._confirmed and (len(self._confirmed) > 100_000 or
                                   now - next(iter(self._confirmed.values()))[1] > STALE_OK_SECONDS):
            self._confirmed.popitem(last=False)

    async def check(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | None:
        """Admission check (after authentication)."""
        if exchange.session_id is None or exchange.principal is None:
            return None
        key = session_key(exchange.session_id)
        try:
            bound = await self.store.get(key, refresh_ttl=TTL_SECONDS)
        except StoreUnavailable:
            bound, when = self._confirmed.get(key, (None, float("-inf")))
            if time.monotonic() - when > STALE_OK_SECONDS:
                return rpc_error(503, INVALID_REQUEST, "session store unavailable, retry shortly",
                                 request_id=exchange.request_id, headers={"Retry-After": "1"})
        else:
            if bound is not None:
                self._remember(key, bound)
        if bound != owner(exchange.principal):
            # Unknown, or someone else's: the same answer, so a probe learns nothing.
            return rpc_error(404, INVALID_REQUEST, "Session not found", request_id=exchange.request_id)
        return None

    async def on_response(self, exchange: Exchange, status: int, headers: CIMultiDict[str]) -> None:
        """Response hook: bind a session the upstream just created; forget one it just ended."""
        if exchange.principal is None or status >= 400:
            return
        new_id = headers.get("Mcp-Session-Id")
        if new_id and new_id != exchange.session_id:
            self.upstream_sessions = True
            key, bound = session_key(new_id), owner(exchange.principal)
            evicted = await self.store.set_capped(key, bound, ttl=TTL_SECONDS,
                                                  group=group_key(quota_of(exchange.principal)),
                                                  limit=self.max_per_credential)
            self._remember(key, bound)
            if evicted:
                if self.on_evict is not None:
                    self.on_evict(len(evicted))
                for gone in evicted:
                    self._confirmed.pop(gone, None)
                # Those sessions are gone: should the store fail now, what was kept beside them waits out its ttl.
                with contextlib.suppress(StoreUnavailable):
                    await self.store.delete(*self._beside(evicted))
        elif exchange.http_method == "DELETE" and exchange.session_id:
            key = session_key(exchange.session_id)
            self._confirmed.pop(key, None)
            await self.store.delete(key, *self._beside([key]))

    def _beside(self, keys: list[str]) -> list[str]:
        """The companions' keys of these sessions' bindings."""
        return [prefix + key.removeprefix(KEY) for key in keys for prefix in self.companions]
