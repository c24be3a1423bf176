"""Admission check: refuse requests whose Host or Origin is not on the allow-list (DNS-rebinding protection).

The upstream cannot do this check any more: it sees the proxy's Host, never the client's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.jsonrpc import INVALID_REQUEST, rpc_error
from proxy.origin import OriginPolicy

if TYPE_CHECKING:
    from proxy.exchange import Exchange


class OriginCheck:
    def __init__(self, policy: OriginPolicy) -> None:
        self.policy = policy

    async def __call__(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | None:
        if not self.policy.host_allowed(request.headers.get("Host")):
            return rpc_error(403, INVALID_REQUEST, "Host not allowed", request_id=exchange.request_id)
        if not self.policy.origin_allowed(request.headers.get("Origin")):
            return rpc_error(403, INVALID_REQUEST, "Origin not allowed", request_id=exchange.request_id)
        return None
