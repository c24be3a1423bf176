"""Steps that keep the upstream's server-side headers (e.g. `x-app-token`) on the server.

They go on every upstream request (see `Pipeline.upstream_headers`); a client that sends one is refused (400: only
the proxy may), and any upstream response header that carries one, by name or by value, is removed. The same holds
for the header of the caller's identity assertion (identity/assertion.py), whose default name is refused even where
the policy asks for no assertion: an upstream that trusts it must never see a client's copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from proxy.jsonrpc import INVALID_REQUEST, rpc_error
from proxy.memo import remember

if TYPE_CHECKING:
    from proxy.exchange import Exchange


def normalised(name: str) -> str:
    """A header name as servers that map `_` to `-` (CGI, WSGI, many frameworks) see it. Pure."""
    return name.lower().replace("_", "-")


class RefuseSecretHeaders:
    """Admission check: a client may not send a header the proxy holds for the upstream (its secrets, the caller's
    identity assertion), nor any spelling of its name that an upstream could read as the same header (`X_App_Token`,
    `x-app_token`). Each spelling is judged once (bounded): a client sends the same few on every request."""

    MEMO = 1024

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(normalised(name) for name in names)
        self._seen: dict[str, bool] = {}

    async def __call__(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | None:
        seen = self._seen
        for name in request.headers:
            refused = seen.get(name)
            if refused is None:
                refused = remember(seen, name, normalised(name) in self.names, self.MEMO)
            if refused:
                return rpc_error(400, INVALID_REQUEST, f"header {normalised(name)} is set by the proxy; clients may "
                                 "not send it", request_id=exchange.request_id)
        return None


class ScrubSecretHeaders:
    """Response hook: nothing the upstream echoes may carry a server-side secret back to the client."""

    def __init__(self, secret_headers: Mapping[str, str], also: Iterable[str] = ()) -> None:
        """`also`: more names to remove (the identity assertion's header), whatever their value."""
        self.names = frozenset(secret_headers) | {name.lower() for name in also}
        self.values = tuple(secret_headers.values())

    async def __call__(self, exchange: Exchange, status: int, headers: CIMultiDict[str]) -> None:
        leaking = {name.lower() for name, value in headers.items()
                   if name.lower() in self.names or any(secret in value for secret in self.values)}
        for name in leaking:
            headers.popall(name, None)
