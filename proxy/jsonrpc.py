"""JSON-RPC messages as plain dicts: the error codes, the error and reply builders every layer uses.

Framing a POST body (limits, envelopes, batches) is the edge's job (`proxy/edge/framing.py`); this module only says
what a message is and how the proxy answers with an error, as a JSON-RPC body or as an HTTP reply carrying one.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

JSON = "application/json"

Message = dict[str, Any]


def error(msg_id: Any, code: int, message: str, data: Any = None) -> Message:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}


def is_request(msg: Message) -> bool:
    return "method" in msg and "id" in msg


def is_response(msg: Message) -> bool:
    return "method" not in msg


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def rpc_error(
    status: int, code: int, message: str, *, msg_id: Any = None, request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An HTTP error whose body is a JSON-RPC error naming no internals; the request id lets an operator find it in
    the logs."""
    body = error(msg_id, code, message, {"requestId": request_id} if request_id else None)
    response = web.Response(status=status, body=dumps(body), content_type=JSON, headers=headers)
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response
