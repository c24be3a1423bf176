"""HTTP responses the proxy itself answers with: JSON-RPC error bodies that name no internals."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.jsonrpc import dumps, error

JSON = "application/json"


def rpc_error(
    status: int, code: int, message: str, *, msg_id: Any = None, request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An HTTP error whose body is a JSON-RPC error; the request id lets an operator find it in the logs."""
    body = error(msg_id, code, message, {"requestId": request_id} if request_id else None)
    response = web.Response(status=status, body=dumps(body), content_type=JSON, headers=headers)
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response
