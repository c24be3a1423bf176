"""JSON-RPC framing: turn a POST body into checked messages, refusing what cannot be checked.

Pure functions over bytes and plain dicts. Everything the proxy forwards is re-serialised from what this module
returns, so the upstream acts on exactly the structure the guards saw (duplicate keys collapse to the last one here,
and the upstream receives that one only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.guards.workspace import decode_header
from proxy.jsonrpc import INVALID_REQUEST, PARSE_ERROR, Message, error

# Protocol revisions in which a POST body may be a JSON-RPC array. An absent MCP-Protocol-Version means 2025-03-26.
BATCH_VERSIONS = frozenset({"2025-03-26"})
HEADER_MISMATCH = -32020  # 2026-07-28: a routing header that disagrees with the body
# 2026-07-28 methods whose target is mirrored into `Mcp-Name`: method -> the params member it mirrors.
NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class FrameError(Exception):
    """The body as a whole is refused; nothing of it is forwarded."""

    def __init__(self, code: int, message: str, http_status: int = 400, msg_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.msg_id = msg_id


@dataclass
class Frame:
    """A parsed POST body: the valid messages, in order, and answers for the elements that were not valid."""

    messages: list[Message]
    is_batch: bool
    answers: list[Message] = field(default_factory=list)


def _valid_id(value: Any) -> bool:
    # JSON-RPC ids are strings or numbers; MCP forbids null. bool is an int subclass in Python, exclude it.
    return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))


def envelope_problem(obj: Any) -> str | None:
    """Why `obj` is not a JSON-RPC 2.0 request, notification or response; None when it is one."""
    if not isinstance(obj, dict):
        return "a JSON-RPC message must be an object"
    if obj.get("jsonrpc") != "2.0":
        return '"jsonrpc" must be "2.0"'
    if "method" in obj:
        if not isinstance(obj["method"], str) or not obj["method"]:
            return '"method" must be a non-empty string'
        if "id" in obj and not _valid_id(obj["id"]):
            return '"id" must be a string or a number'
        if "params" in obj and not isinstance(obj["params"], dict):
            return '"params" must be an object'
        if "result" in obj or "error" in obj:
            return "a request cannot carry a result or an error"
        return None
    if "id" not in obj:
        return 'a message needs "method" (request or notification) or "id" (response)'
    if ("result" in obj) == ("error" in obj):
        return 'a response carries exactly one of "result" and "error"'
    if "error" in obj and not isinstance(obj["error"], dict):
        return '"error" must be an object'
    if obj["id"] is not None and not _valid_id(obj["id"]):
        return '"id" must be a string or a number'
    return None


def depth_exceeds(obj: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit`; iterative, so a hostile body cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_body(body: bytes, *, max_depth: int, max_batch: int, protocol_version: str | None) -> Frame:
    """Parse and check one POST body. Raises FrameError when the body as a whole is refused."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):  # orjson's own nesting limit
            raise FrameError(INVALID_REQUEST, f"JSON nests deeper than {max_depth} levels") from None
        raise FrameError(PARSE_ERROR, "Parse error: body is not valid UTF-8 JSON") from None
    # Nesting cannot exceed the number of opening brackets (those inside strings only over-count), so the walk runs
    # only for bodies that could be too deep; counting bytes is C-speed, walking the tree is not.
    if body.count(b"{") + body.count(b"[") > max_depth and depth_exceeds(obj, max_depth):
        raise FrameError(INVALID_REQUEST, f"JSON nests deeper than {max_depth} levels")

    if isinstance(obj, list):
        version = protocol_version or "2025-03-26"
        if version not in BATCH_VERSIONS:
            raise FrameError(INVALID_REQUEST, f"JSON-RPC batches are not allowed in protocol version {version}")
        if not obj:
            raise FrameError(INVALID_REQUEST, "empty batch")
        if len(obj) > max_batch:
            raise FrameError(INVALID_REQUEST, f"batch of {len(obj)} messages exceeds the limit of {max_batch}")
        frame = Frame(messages=[], is_batch=True)
        for element in obj:
            problem = envelope_problem(element)
            if problem is None:
                frame.messages.append(element)
            else:
                msg_id = element.get("id") if isinstance(element, dict) and _valid_id(element.get("id")) else None
                frame.answers.append(error(msg_id, INVALID_REQUEST, f"Invalid request: {problem}"))
        return frame

    problem = envelope_problem(obj)
    if problem is not None:
        msg_id = obj.get("id") if isinstance(obj, dict) and _valid_id(obj.get("id")) else None
        raise FrameError(INVALID_REQUEST, f"Invalid request: {problem}", msg_id=msg_id)
    return Frame(messages=[obj], is_batch=False)


def header_problem(method_said: list[str], name_said: list[str], frame: Frame) -> str | None:
    """Why the 2026-07-28 routing headers (`Mcp-Method`, `Mcp-Name`: every value of each) disagree with the body,
    or None when they agree. Whatever routes or logs by these headers (a gateway, the upstream's own logs) must see
    the call the proxy decided on, so a header naming another method or tool is refused, never forwarded. Absent
    headers agree (clients of earlier revisions send none); with `Mcp-Method` present, a method that names a tool,
    prompt or resource needs `Mcp-Name`, as the 2026-07-28 revision requires. Pure."""
    if len(method_said) > 1 or len(name_said) > 1:
        return "Mcp-Method and Mcp-Name may each be sent once"
    if frame.is_batch:
        return "Mcp-Method and Mcp-Name describe one message, not a batch"
    message = frame.messages[0]
    method = message.get("method")
    if method_said and method_said[0] != method:
        return "Mcp-Method header does not match the request body's method"
    member = NAMED_BY.get(method) if isinstance(method, str) else None
    if member is None:
        return "Mcp-Name header names nothing in this request's body" if name_said else None
    params = message.get("params")
    named = params.get(member) if isinstance(params, dict) else None
    if not name_said:  # as the SDK's own check: required when the body names something (else it is malformed)
        return f"Mcp-Name header is required with Mcp-Method {method}" if method_said and named is not None else None
    if decode_header(name_said[0]) != named:
        return f"Mcp-Name header does not match the request body's {member!r}"
    return None
