"""CORS for browser-based MCP clients (the Inspector's web UI, web apps), driven by the Origin allow-list.

A browser on another origin first sends a preflight `OPTIONS`; scopegate answers it for an allowed Origin (and
Host) with the methods and the request headers MCP uses (`Authorization`, `Content-Type`, `Mcp-Session-Id`,
`MCP-Protocol-Version`, `Last-Event-ID`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`), and refuses it with a bare 403
otherwise. Every later answer to an allowed Origin carries `Access-Control-Allow-Origin` and exposes the headers a
client must read (`Mcp-Session-Id`, `WWW-Authenticate`, ...). An Origin not on the list gets no CORS header at all,
so the browser keeps the answer from the page (and the Host/Origin admission check refuses the request itself).
No cookies are used, so credentials mode is never allowed.
"""

from __future__ import annotations

from aiohttp import web

from proxy.edge.errors import catch_all
from proxy.origin import OriginPolicy

METHODS = ("GET", "POST", "DELETE")
REQUEST_HEADERS = frozenset({"authorization", "content-type", "accept", "mcp-session-id", "mcp-protocol-version",
                             "last-event-id", "mcp-method", "mcp-name", "x-request-id"})
PARAM_PREFIX = "mcp-param-"  # 2026-07-28: arguments mirrored into headers, any name
EXPOSED = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate, X-Request-Id, Retry-After"
MAX_AGE = "600"


def refused_headers(requested: str) -> list[str]:
    """The names in an Access-Control-Request-Headers value that MCP does not use. Pure."""
    names = [name.strip().lower() for name in requested.split(",") if name.strip()]
    return [n for n in names if n not in REQUEST_HEADERS and not n.startswith(PARAM_PREFIX)]


class Cors:
    def __init__(self, policy: OriginPolicy) -> None:
        self.policy = policy

    def _allowed(self, request: web.BaseRequest) -> str | None:
        """The request's Origin when CORS applies to it, else None."""
        origin = request.headers.get("Origin")
        if origin and self.policy.origin_allowed(origin) and self.policy.host_allowed(request.headers.get("Host")):
            return origin
        return None

    async def preflight(self, request: web.Request) -> web.Response:
        origin = self._allowed(request)
        method = request.headers.get("Access-Control-Request-Method", "")
        requested = request.headers.get("Access-Control-Request-Headers", "")
        if origin is None or method not in METHODS or refused_headers(requested):
            return web.Response(status=403, text="CORS preflight refused: origin, method or headers not allowed")
        allow = requested.strip() or ", ".join(sorted(REQUEST_HEADERS))
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(METHODS),
            "Access-Control-Allow-Headers": allow,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        })

    async def on_prepare(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Every answer (JSON, SSE, errors) to an allowed Origin, before its headers go out."""
        if request.method == "OPTIONS":
            return
        origin = self._allowed(request)
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary and "origin" not in vary.lower() else (vary or "Origin")

    def install(self, app: web.Application) -> None:
        """Answer preflights on every route the app has (call it last), and decorate every answer."""
        for resource in list(app.router.resources()):
            if not any(route.method == "OPTIONS" for route in resource):
                resource.add_route("OPTIONS", catch_all(self.preflight))
        app.on_response_prepare.append(self.on_prepare)
