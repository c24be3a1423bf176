"""RFC 9728 protected-resource metadata: how a client learns which authorization servers and scopes apply here.

Served at `/.well-known/oauth-protected-resource` and at its path-suffixed form
(`/.well-known/oauth-protected-resource/mcp`), without authentication: an unauthenticated client reads it after its
first 401. Only for a Host on the allow-list: without a public URL the document names the Host it was asked for, and
a client must not be able to make it name another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from proxy.jsonrpc import INVALID_REQUEST, dumps, rpc_error

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_document(resource: str, authorization_servers: list[str], scopes: tuple[str, ...]) -> dict:
    return {
        "resource": resource,
        "authorization_servers": authorization_servers,
        "scopes_supported": list(scopes),
        "bearer_methods_supported": ["header"],
        "resource_name": "scopegate",
    }


def add_routes(app: web.Application, mcp_path: str, public_url: str | None, authorization_servers: list[str],
               scopes: tuple[str, ...], host_allowed: Callable[[str | None], bool],
               wrap: Callable[[Any], Any] = lambda handler: handler) -> None:
    """`wrap`: what the edge puts around every handler (its last line of defence)."""

    async def handler(request: web.Request) -> web.Response:
        if not host_allowed(request.headers.get("Host")):
            return rpc_error(403, INVALID_REQUEST, "Host not allowed")
        resource = public_url or f"{request.scheme}://{request.host}{mcp_path}"
        body = dumps(metadata_document(resource, authorization_servers, scopes))
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "max-age=300"})

    app.router.add_get(WELL_KNOWN, wrap(handler))
    if mcp_path not in ("", "/"):
        app.router.add_get(WELL_KNOWN + mcp_path, wrap(handler))
