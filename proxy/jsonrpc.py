"""JSON-RPC messages as plain dicts: the error codes, the error and reply builders every layer uses.

Framing a POST body (limits, envelopes, batches) is the edge's job (`proxy/edge/framing.py`); this module only says
what a message is and how the proxy answers with an error, as a JSON-RPC body or as an HTTP reply carrying one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


def dumps_kept(obj: Any) -> bytes:
    """`dumps` for bytes that live long (a stream's forwarded request, a cached list): orjson's bytes keep its whole
    working buffer (4 KiB at least, up to twice the length), this copy only what it holds."""
    return memoryview(orjson.dumps(obj)).tobytes()


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


# A response recognised in its bytes, without parsing its result: `{"jsonrpc":"2.0","id":ID,"result":R}`, members
# in any order, JSON whitespace anywhere. Only the small members are matched here; R is left as bytes. The split is
# exact once R is known to be one JSON value (whoever parses R checks that): JSON has one parse, so a text made of
# these members and R is that message and nothing else (no member repeated, none added).
_WS = rb"[ \t\n\r]*"
_ID = rb'-?(?:0|[1-9][0-9]{0,17})|"[^"\\\x00-\x1f]{0,256}"'  # integers and escape-free strings; others: parse
_MEMBER = rb'"(jsonrpc|id)"' + _WS + rb":" + _WS + rb'("2\.0"|' + _ID + rb")"
_OPEN = re.compile(_WS + rb"\{" + _WS)
_HEAD_MEMBER = re.compile(_MEMBER + _WS + rb"," + _WS)
_RESULT = re.compile(rb'"result"' + _WS + rb":")
_TAIL = re.compile(rb"((?:" + _WS + rb"," + _WS + rb'"(?:jsonrpc|id)"' + _WS + rb":" + _WS + rb'(?:"2\.0"|' + _ID
                   + rb")){0,2})" + _WS + rb"\}" + _WS + rb"\Z")
_TAIL_MEMBER = re.compile(_MEMBER)
_TAIL_WINDOW = 700


@dataclass(frozen=True)
class RawResponse:
    msg_id: int | str
    result: bytes  # the result member's bytes as they came: one JSON value, if the text was a message at all

    def message(self) -> Message:
        """The parsed message (raises orjson.JSONDecodeError when the result is not one JSON value)."""
        return {"jsonrpc": "2.0", "id": self.msg_id, "result": orjson.loads(self.result)}


def recognise_response(data: bytes) -> RawResponse | None:
    """The response `data` holds, its result unparsed; None when it is not plainly one (a batch, an error, another
    member, a fractional or escaped id...): then parse it whole."""
    opened = _OPEN.match(data)
    if opened is None:
        return None
    pos = opened.end()
    members: list[tuple[bytes, bytes]] = []
    while (head := _HEAD_MEMBER.match(data, pos)) is not None:
        members.append((head.group(1), head.group(2)))
        pos = head.end()
    result = _RESULT.match(data, pos)
    if result is None or len(members) > 2:
        return None
    if len(members) == 2:  # both before the result, as most servers write them: the text must end with its `}`
        end = len(data) - 1
        while end > 0 and data[end] in b" \t\n\r":
            end -= 1
        if end < result.end() or data[end] != 0x7D:
            return None
        return _response(members, data[result.end() : end])
    window = max(result.end(), len(data) - _TAIL_WINDOW)
    tail = _TAIL.search(data, window)
    if tail is None:
        return None
    members += [(m.group(1), m.group(2)) for m in _TAIL_MEMBER.finditer(tail.group(1))]
    return _response(members, data[result.end() : tail.start()])


def _response(members: list[tuple[bytes, bytes]], result: bytes) -> RawResponse | None:
    names = sorted(name for name, _ in members)
    if names != [b"id", b"jsonrpc"] or dict(members)[b"jsonrpc"] != b'"2.0"':
        return None
    try:
        msg_id = orjson.loads(dict(members)[b"id"])  # a string id must be UTF-8
    except orjson.JSONDecodeError:
        return None
    return RawResponse(msg_id, result)


def splice_response(msg_id: int | str, result: bytes) -> bytes:
    return b"".join((b'{"jsonrpc":"2.0","id":', dumps(msg_id), b',"result":', result, b"}"))  # one copy of a big result
