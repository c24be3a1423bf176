"""The plain data one request carries through the pipeline: the Exchange, and a guard's own Answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from proxy.jsonrpc import Message
from proxy.principal import Principal


@dataclass
class Exchange:
    """One HTTP request through the proxy: what the steps read, and the facts they leave for later steps."""

    request_id: str
    session_id: str | None
    protocol_version: str | None
    upstream_headers: CIMultiDict[str]  # guards may adjust them (e.g. Mcp-Param-* when they rewrite an argument)
    http_method: str = "POST"
    principal: Principal | None = None  # set by authentication; every later step may rely on it
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """A guard's own reply to one message; the message is then not forwarded.

    `response` is None when the message was a notification (nothing to answer). `http_status` and `headers` apply
    when the answered message was the only one in the request (e.g. 403 with WWW-Authenticate for a step-up).
    """

    response: Message | None
    http_status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    decision: str = "deny"  # deny | preview | refuse | invalid: for metrics and the audit trail
    reason: str = ""  # a short, bounded code (scope, unlisted, workspace, unknown, already used, ...)


def tool_result(exchange: Exchange, msg_id: Any, text: str, *, error: bool, decision: str, reason: str = "",
                structured: dict[str, Any] | None = None) -> Answer:
    """A guard's answer as a tool result the model reads (a refusal with `error`, or a preview), not a protocol
    error: the call was understood. 2026-07-28 results carry `resultType`."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": error}
    if structured is not None:
        result["structuredContent"] = structured
    if (exchange.protocol_version or "") >= "2026-07-28":
        result["resultType"] = "complete"
    return Answer({"jsonrpc": "2.0", "id": msg_id, "result": result}, decision=decision, reason=reason)
