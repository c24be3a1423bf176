"""Steps that keep the upstream's server-side headers (e.g. `x-app-token`) on the server.

They go on every upstream request (see `Pipeline.upstream_headers`); a client that sends one is refused (400: only
the proxy may), and any upstream response header that carries one, by name or by value, is removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from proxy.jsonrpc import INVALID_REQUEST, rpc_error

if TYPE_CHECKING:
    from proxy.exchange import Exchange


class RefuseSecretHeaders:
    """Admission check: a client may not send a header the proxy holds for the upstream."""

    def __init__(self, secret_headers: Mapping[str, str]) -> None:
        self.names = frozenset(secret_headers)

    async def __call__(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | None:
        for name in self.names:
            if name in request.headers:
                return rpc_error(400, INVALID_REQUEST, f"header {name} is set by the proxy; clients may not send it",
                                 request_id=exchange.request_id)
        return None


class ScrubSecretHeaders:
    """Response hook: nothing the upstream echoes may carry a server-side secret back to the client."""

    def __init__(self, secret_headers: Mapping[str, str]) -> None:
        self.names = frozenset(secret_headers)
        self.values = tuple(secret_headers.values())

    async def __call__(self, exchange: Exchange, status: int, headers: CIMultiDict[str]) -> None:
        leaking = {name.lower() for name, value in headers.items()
                   if name.lower() in self.names or any(secret in value for secret in self.values)}
        for name in leaking:
            headers.popall(name, None)
