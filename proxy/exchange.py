"""The plain data one request carries through the pipeline: the Exchange, and a guard's own Answer.

Each field after the request's own is written by one step (named beside it) and read by later ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from multidict import CIMultiDict

from proxy.jsonrpc import Message

if TYPE_CHECKING:
    from proxy.identity.principal import Principal
    from proxy.policy.decide import Decision
    from proxy.policy.reload import LivePolicy


_Guard = TypeVar("_Guard", bound=Callable[..., Any])
RESPONSE = None  # the `method` of a response, for a guard's `methods`


def acts_on(*methods: str | None) -> Callable[[_Guard], _Guard]:
    """A guard that is a function or method says which messages it acts on (`methods`, see pipeline.Guard); a bound
    method reads its function's attributes."""

    def mark(guard: _Guard) -> _Guard:
        guard.methods = frozenset(methods)  # type: ignore[attr-defined]
        return guard

    return mark


class Outcome(NamedTuple):
    """What became of one message: for metrics and the audit trail."""

    message: Message
    decision: str  # allow | deny | preview | confirm | refuse | invalid | unauthenticated | error
    reason: str


@dataclass
class WorkspaceFact:
    """The workspace guard's record of one workspace-scoped call."""

    tool: str
    mode: str  # inject | require | verify | none
    action: str = ""  # injected | verified | refused | absent
    workspace: str | None = None
    reason: str = ""
    project: str | None = None  # the project argument the call carries, where it names one


@dataclass(slots=True)
class TaskTraffic:
    """The task guard's record of one request's traffic with the upstream's tasks, for the relay: which task-augmented
    calls it forwarded (so a `CreateTaskResult` answering one is known to come from that tool) and the tasks those
    answers created, which the relay records before the client sees their ids."""

    calls: dict[tuple[str, Any], str] = field(default_factory=dict)  # (id type, id) of a task-augmented call -> tool
    created: list[tuple[str, str]] = field(default_factory=list)  # (upstream task id, tool), not yet recorded


@dataclass(slots=True)
class Exchange:
    """One HTTP request through the proxy: what the steps read, and what they leave for later steps."""

    request_id: str
    session_id: str | None
    protocol_version: str | None
    # Guards may adjust them (e.g. Mcp-Param-* when they rewrite an argument); the forwarder empties them once sent.
    upstream_headers: CIMultiDict[str]
    http_method: str = "POST"
    policy: LivePolicy | None = None  # forwarder: the policy generation pinned for the whole request
    principal: Principal | None = None  # authentication: every later step may rely on it
    auth_failure: str | None = None  # authentication: why it refused the request (a small fixed set)
    resource_metadata: str = ""  # authentication: the RFC 9728 URL a later 403's challenge names
    decision: Decision | None = None  # scope guard: the current message's decision, reused by later guards
    # scope guard (a drifted pin), provenance guard (a write after untrusted output): why this call is held for
    # confirmation though no rule asks it, in words, and who confirms it (human | token); the confirm guard then
    # confirms it so and shows the reason
    held: str | None = None
    held_confirm: str = "human"
    # provenance guard: repr(message id) of a call of an untrusted tool -> (tool, source: openWorldHint | rule)
    untrusted: dict[str, tuple[str, str]] | None = None
    # scope guard, only when the policy masks results: (id type, id) of each tools/call it let through -> the tool
    called: dict[tuple[str, Any], str] | None = None
    workspaces: list[WorkspaceFact] = field(default_factory=list)  # workspace guard
    confirmed: dict[str, str] = field(default_factory=dict)  # confirm guard: str(message id) -> preview id applied
    # human approval (guards/human.py): the confirmed ids a person approved at the client (None: none did)
    approved_by_person: set[str] | None = None
    # approval on the page (guards/page_approval.py): str(message id) -> the subject of the person who approved it
    approvers: dict[str, str] | None = None
    client_capabilities: dict[str, Any] | None = None  # client capabilities guard: what `initialize` declared
    tasks: TaskTraffic | None = None  # task guard: set only when this request touches the upstream's tasks
    upstream_status: int | None = None  # forwarder
    outcomes: list[Outcome] = field(default_factory=list)  # forwarder: one per message, audited after the request


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


Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Conversation:
    """A guard's reply that needs the client first: a question to ask on the request's own SSE stream (2025-11-25,
    e.g. `elicitation/create`), whose answer decides what becomes of the message.

    The edge answers the POST as an SSE stream at once and awaits `run(send)`, which may send messages on it; `run`
    returns the message to forward (the upstream's answer is then relayed on the same stream) or an `Answer` (written
    on the stream instead). Only a message alone in its POST can converse: in a batch, the edge answers `alone`.
    """

    run: Callable[[Send], Awaitable[Message | Answer]]
    alone: Answer
    opening: Answer | None = None  # what putting the question counts as (metrics, audit), e.g. a preview issued


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
