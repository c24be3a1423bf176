"""Tasks (2025-11-25 `params.task`): the proxy's own, and the upstream's sealed to whoever created them.

Proxy-held tasks: a task-augmented `tools/call` that the proxy answers itself.

A client that asks for a task expects a `CreateTaskResult`, then polls `tasks/get` and fetches `tasks/result`; a
plain result in its place breaks it (the TypeScript SDK: `path ["task"] expected object`). So when the proxy answers
such a call itself (a preview, or any guard's refusal: `HeldTasks`, the pipeline's answer hook), the answer is kept
as a finished task and the client is given the task. `TaskGuard` answers `tasks/get`, `tasks/result` and
`tasks/cancel` for those task ids, and only for the credential and session that made them.

Why a held task rather than a JSON-RPC error: an error would hide the preview (and its token) from every
task-augmented caller, so a write held for confirmation could never be confirmed from a client that uses tasks.

The upstream's tasks: the upstream sees no caller (scopegate keeps the credential from it), and its task ids are its
own (often guessable, always shared by every caller), so it would answer anyone's `tasks/result` with anyone's
result and list everyone's tasks to anyone. So no upstream task id reaches a client as it is:
- every task id the upstream sends in an answer to a request that touched tasks (`CreateTaskResult`, `tasks/get`,
  `tasks/cancel`, `tasks/result`'s related-task) and in its own messages (`notifications/tasks/status`, any
  related-task `_meta`) is sealed to the credential and session it is sent to (`TaskIds`, as SSE event ids are:
  an HMAC tag over credential, session and id); the upstream's own questions about the client's tasks (`tasks/*`
  requests from the server) carry the client's ids and are left alone;
- the task a `CreateTaskResult` announces is recorded (store: credential, session, upstream id -> the tool whose
  call created it) before the client sees its id;
- `tasks/get`, `tasks/result`, `tasks/cancel` (and the later revisions' `tasks/update`, `tasks/delete`) must name a
  sealed id that unseals for this caller and session, and that this caller's call created: anything else is
  refused as an unknown task, never forwarded; the upstream receives its own id;
- they need the scope of the call that created the task, decided now as a call of that tool would be (a credential
  whose scopes shrank loses its tasks' results with its calls); a task whose creating tool the proxy does not know
  (its `CreateTaskResult` arrived where no call of this request was waiting for it) is unknown, so refused;
- `tasks/list` is answered here: the upstream's page, reduced to this caller's own tasks whose tool it may still
  call, each id sealed, the upstream's cursor kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from proxy.exchange import Answer, Exchange, TaskTraffic
from proxy.guards.catalog import CatalogUnavailable, unavailable
from proxy.guards.scope import ScopeGuard, refusal
from proxy.guards.session_binding import owner
from proxy.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, Message, error
from proxy.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from proxy.policy.reload import LivePolicy

log = logging.getLogger("scopegate.tasks")

TASK_PREFIX = "scopegate-task-"  # a task the proxy holds
SEALED_PREFIX = "sgt1."  # an upstream task, sealed to its caller
RELATED_TASK = "io.modelcontextprotocol/related-task"
STATUS = "notifications/tasks/status"
# The methods that name one task by `params.taskId` (2025-11-25, and the later revisions' update and delete): each
# must name one of the caller's own.
BY_ID = frozenset({"tasks/get", "tasks/result", "tasks/cancel", "tasks/update", "tasks/delete"})
METHODS = BY_ID | {"tasks/list"}
RECORD_SECONDS = 24 * 3600  # how long the proxy remembers who created an upstream task (one ttl for all: see store)
TASKS_PER_CREDENTIAL = 1000  # beyond this, a credential's oldest task records go (those tasks become unknown)
_TAG_BYTES = 16
UpstreamCall = Callable[[Exchange, Message], Awaitable[Message | None]]


def wants_task(message: Message) -> bool:
    """A task-augmented `tools/call`. Only calls: clients also repeat `task` on `tasks/get` (the TypeScript SDK does),
    and those the task guard answers as they are."""
    params = message.get("params")
    return message.get("method") == "tools/call" and isinstance(params, dict) and isinstance(params.get("task"), dict)


def _key(task_id: str) -> str:
    return "scopegate:task:" + hashlib.sha256(task_id.encode()).hexdigest()


def _owner(exchange: Exchange) -> list[str]:
    principal = exchange.principal
    assert principal is not None
    return [principal.credential_id, principal.subject, principal.kind, exchange.session_id or ""]


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


async def hold(store: Store, exchange: Exchange, answer: Answer, ttl_seconds: int) -> Answer:
    """`answer` (the proxy's own result for a task-augmented call) kept as a completed task; the client gets the
    task. A store failure answers with a plain error instead: never a task the client could not fetch."""
    response = answer.response
    assert response is not None
    result = response.get("result")
    if not isinstance(result, dict) or result.get("resultType", "complete") != "complete":
        return answer  # a protocol error (or a question for the client) answers a task-augmented request as it is
    task_id = TASK_PREFIX + secrets.token_urlsafe(24)
    now = time.time()
    task = {"taskId": task_id, "status": "completed", "createdAt": _iso(now), "lastUpdatedAt": _iso(now),
            "ttl": ttl_seconds * 1000, "pollInterval": 1000}
    record = {"owner": _owner(exchange), "task": task, "result": result}
    try:
        await store.set(_key(task_id), orjson.dumps(record).decode(), ttl=ttl_seconds)
    except StoreUnavailable:
        return Answer(error(response.get("id"), INVALID_PARAMS, "confirmation store unavailable: nothing was "
                            "changed; retry shortly"), decision="refuse", reason="store unavailable")
    return Answer({"jsonrpc": "2.0", "id": response.get("id"), "result": {"task": task}},
                  decision=answer.decision, reason=answer.reason)


class HeldTasks:
    """The pipeline's answer hook: a guard's own answer to a task-augmented call is held as a finished task."""

    def __init__(self, store: Store, live: LivePolicy) -> None:
        self.store = store
        self.live = live

    async def __call__(self, exchange: Exchange, message: Message, answer: Answer) -> Answer:
        if answer.response is None or not wants_task(message) or exchange.principal is None:
            return answer
        return await hold(self.store, exchange, answer, self.live.of(exchange).policy.confirm_ttl_seconds)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def call_key(msg_id: Any) -> tuple[str, Any]:
    return (type(msg_id).__name__, msg_id)  # 1 and "1" are different JSON-RPC ids


def _who(exchange: Exchange) -> str:
    return owner(exchange.principal) if exchange.principal is not None else ""


def _unknown(msg_id: Any, task_id: Any) -> Answer:
    # Another credential's (or session's) task is as unknown as a made-up one: nothing tells them apart.
    shown = task_id[:80] if isinstance(task_id, str) else "(none)"
    return Answer(error(msg_id, INVALID_PARAMS, f"unknown task: {shown}"), decision="refuse", reason="unknown task")


class TaskIds:
    """Upstream task ids sealed to credential and session: `sgt1.<id, base64url>.<tag>`. Deterministic, so every
    message about one task shows its caller the same id. Pure but for the key."""

    def __init__(self, key: bytes) -> None:
        self._key = hmac.digest(key, b"scopegate upstream task ids", hashlib.sha256)  # apart from event ids' use

    def _tag(self, who: str, session: str, encoded: str) -> bytes:
        message = orjson.dumps([who, session, encoded])  # unambiguous: no value can shift into another's place
        return hmac.digest(self._key, message, hashlib.sha256)[:_TAG_BYTES]

    def seal(self, who: str, session: str, upstream_id: str) -> str:
        encoded = _b64(upstream_id.encode())
        return f"{SEALED_PREFIX}{encoded}.{_b64(self._tag(who, session, encoded))}"

    def unseal(self, who: str, session: str, sealed: str) -> str | None:
        """The upstream's id, or None when `sealed` was not made for this credential and session."""
        if not sealed.startswith(SEALED_PREFIX):
            return None
        encoded, dot, tag = sealed[len(SEALED_PREFIX):].rpartition(".")
        if not dot:
            return None
        try:
            given, upstream_id = _unb64(tag), _unb64(encoded).decode()
        except (binascii.Error, ValueError):
            return None
        return upstream_id if hmac.compare_digest(given, self._tag(who, session, encoded)) else None


class UpstreamTasks:
    """The upstream's task ids on their way out (sealed, new tasks recorded) and the records read on the way in."""

    def __init__(self, store: Store, ids: TaskIds) -> None:
        self.store = store
        self.ids = ids

    @staticmethod
    def _record_key(who: str, session: str, upstream_id: str) -> str:
        return "scopegate:upstream-task:" + hashlib.sha256(orjson.dumps([who, session, upstream_id])).hexdigest()

    def _seal_related(self, who: str, session: str, holder: dict[str, Any]) -> None:
        meta = holder.get("_meta")
        if isinstance(meta, dict) and isinstance(related := meta.get(RELATED_TASK), dict) \
                and isinstance(related.get("taskId"), str):
            meta[RELATED_TASK] = {**related, "taskId": self.ids.seal(who, session, related["taskId"])}

    def answer(self, exchange: Exchange, session: str | None, msg: Message, method: str | None) -> Message:
        """An upstream response relayed for a request that touched tasks (`exchange.tasks` set): its task ids
        sealed; a task it creates, in answer to a task-augmented call of this request, noted for recording."""
        result = msg.get("result")
        traffic = exchange.tasks
        if not isinstance(result, dict) or traffic is None:
            return msg
        who, where = _who(exchange), session or ""
        task = result.get("task")
        if isinstance(task, dict) and isinstance(task.get("taskId"), str):  # CreateTaskResult
            upstream_id = task["taskId"]
            try:
                tool = traffic.calls.get(call_key(msg.get("id"))) if method == "tools/call" else None
            except TypeError:  # an unhashable id: answers no call of ours
                tool = None
            if tool:  # known, and not ambiguous
                traffic.created.append((upstream_id, tool))
            result["task"] = {**task, "taskId": self.ids.seal(who, where, upstream_id)}
        if isinstance(result.get("taskId"), str):  # GetTaskResult, CancelTaskResult
            result["taskId"] = self.ids.seal(who, where, result["taskId"])
        self._seal_related(who, where, result)  # tasks/result
        return msg

    def from_server(self, exchange: Exchange, session: str | None, msg: Message) -> Message:
        """A request or notification the upstream sends: ids of its own tasks sealed (status notifications,
        related-task `_meta`). Its `tasks/*` requests ask about the client's tasks: the client's ids, left alone."""
        method = msg.get("method")
        params = msg.get("params")
        if not isinstance(params, dict) or not isinstance(method, str) or method.startswith("tasks/"):
            return msg
        who, where = _who(exchange), session or ""
        if method == STATUS and isinstance(params.get("taskId"), str):
            params["taskId"] = self.ids.seal(who, where, params["taskId"])
        self._seal_related(who, where, params)
        return msg

    async def record(self, exchange: Exchange, session: str | None) -> None:
        """The tasks this request's answers created, recorded for their caller before it sees their ids. A store
        that fails leaves a task unrecorded: its id is then refused (fail closed), and the failure is logged."""
        traffic = exchange.tasks
        if traffic is None or not traffic.created:
            return
        created, traffic.created = traffic.created, []
        who, where = _who(exchange), session or ""
        group = "scopegate:upstream-tasks-of:" + hashlib.sha256(who.encode()).hexdigest()
        for upstream_id, tool in created:
            try:
                await self.store.set_capped(self._record_key(who, where, upstream_id), tool, ttl=RECORD_SECONDS,
                                            group=group, limit=TASKS_PER_CREDENTIAL)
            except StoreUnavailable:
                log.warning("an upstream task could not be recorded: its id will be refused",
                            extra={"request_id": exchange.request_id})

    async def tool_of(self, exchange: Exchange, upstream_id: str) -> str | None:
        """The tool whose call by this caller (credential and session) created the upstream's task, or None."""
        return await self.store.get(self._record_key(_who(exchange), exchange.session_id or "", upstream_id))


class TaskGuard:
    """Answers the task methods for the tasks the proxy holds, for their owner only; lets the upstream's through
    for theirs (unsealed, gated by the scope of the call that made them); answers `tasks/list` with the caller's
    own; notes the task-augmented calls it lets through."""

    def __init__(self, store: Store, upstream: UpstreamTasks | None = None, scope: ScopeGuard | None = None,
                 upstream_call: UpstreamCall | None = None) -> None:
        self.store = store
        self.upstream = upstream
        self.scope = scope
        self.upstream_call = upstream_call

    methods = METHODS | {"tools/call"}

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        method = message.get("method")
        if method not in self.methods or exchange.principal is None:
            return message
        params = message.get("params")
        if method == "tools/call":
            if isinstance(params, dict) and isinstance(params.get("task"), dict):  # the scope guard checked `name`
                traffic = exchange.tasks = exchange.tasks or TaskTraffic()
                key = call_key(message.get("id"))
                # Two calls under one id (a batch may try it): neither answer can be told apart, so neither is known.
                traffic.calls[key] = params["name"] if key not in traffic.calls else ""
            return message
        if method == "tasks/list":
            return await self._list(exchange, message)
        task_id = params.get("taskId") if isinstance(params, dict) else None
        if not isinstance(task_id, str) or not task_id.startswith(TASK_PREFIX):
            return await self._upstreams(exchange, message, task_id)
        msg_id = message.get("id")
        try:
            raw = await self.store.get(_key(task_id))
        except StoreUnavailable:
            return Answer(error(msg_id, INVALID_PARAMS, "task store unavailable; retry shortly"), decision="refuse",
                          reason="store unavailable")
        record = orjson.loads(raw) if raw is not None else None
        if record is None or record["owner"] != _owner(exchange):
            return _unknown(msg_id, task_id)
        if method == "tasks/cancel":
            return Answer(error(msg_id, INVALID_PARAMS, "the task has already completed: nothing to cancel"),
                          decision="refuse", reason="task completed")
        if method != "tasks/result":  # get (update and delete, of a finished task, answer as get does)
            return Answer({"jsonrpc": "2.0", "id": msg_id, "result": record["task"]}, decision="allow")
        result: dict[str, Any] = record["result"]
        meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
        result = {**result, "_meta": {**meta, RELATED_TASK: {"taskId": task_id}}}
        return Answer({"jsonrpc": "2.0", "id": msg_id, "result": result}, decision="allow")


    async def _allowed(self, exchange: Exchange, msg_id: Any, tool: str) -> Answer | None:
        """None when this caller may use a task `tool`'s call created (it may call `tool` now), else the refusal."""
        assert self.scope is not None
        try:
            decision = await self.scope.tool_decision(exchange, tool)
        except CatalogUnavailable:
            return unavailable(msg_id, exchange.request_id)
        return None if decision.allowed else refusal(exchange, msg_id, decision)

    async def _upstreams(self, exchange: Exchange, message: Message, task_id: Any) -> Message | Answer:
        """A task method naming one of the upstream's tasks: forwarded with the upstream's id only when the sealed
        id is this caller's, its call is on record, and its tool is still this caller's to use."""
        msg_id = message.get("id")
        if self.upstream is None or not isinstance(task_id, str):
            return _unknown(msg_id, task_id)
        upstream_id = self.upstream.ids.unseal(_who(exchange), exchange.session_id or "", task_id)
        if upstream_id is None:
            return _unknown(msg_id, task_id)
        try:
            tool = await self.upstream.tool_of(exchange, upstream_id)
        except StoreUnavailable:
            return Answer(error(msg_id, INVALID_PARAMS, "task store unavailable; retry shortly"), decision="refuse",
                          reason="store unavailable")
        if tool is None:
            return _unknown(msg_id, task_id)
        if (refused := await self._allowed(exchange, msg_id, tool)) is not None:
            return refused
        exchange.tasks = exchange.tasks or TaskTraffic()  # its answer's ids are sealed on the way back
        return {**message, "params": {**message["params"], "taskId": upstream_id}}

    async def _list(self, exchange: Exchange, message: Message) -> Answer:
        """The upstream's page of tasks, reduced to this caller's own whose tool it may still call, ids sealed."""
        msg_id = message.get("id")
        if self.upstream is None or self.upstream_call is None:
            return Answer({"jsonrpc": "2.0", "id": msg_id, "result": {"tasks": []}}, decision="allow")
        answer = await self.upstream_call(exchange, message)
        if answer is None:
            return Answer(error(msg_id, INTERNAL_ERROR, "upstream unavailable"), http_status=502, decision="error",
                          reason="upstream")
        if isinstance(answer.get("error"), dict):  # e.g. the upstream lists no tasks: its own words
            return Answer({"jsonrpc": "2.0", "id": msg_id, "error": answer["error"]}, decision="allow")
        result = answer.get("result")
        listed = result.get("tasks") if isinstance(result, dict) else None
        if not isinstance(listed, list):
            return Answer(error(msg_id, INTERNAL_ERROR, "upstream task list not understood"), http_status=502,
                          decision="refuse", reason="unreadable answer")
        tasks = [t for t in listed if isinstance(t, dict) and isinstance(t.get("taskId"), str)]
        try:
            tools = await asyncio.gather(*(self.upstream.tool_of(exchange, t["taskId"]) for t in tasks))
        except StoreUnavailable:
            return Answer(error(msg_id, INVALID_PARAMS, "task store unavailable; retry shortly"), decision="refuse",
                          reason="store unavailable")
        who, session = _who(exchange), exchange.session_id or ""
        kept = []
        for task, tool in zip(tasks, tools, strict=True):
            if tool is not None and await self._allowed(exchange, msg_id, tool) is None:
                kept.append({**task, "taskId": self.upstream.ids.seal(who, session, task["taskId"])})
        return Answer({"jsonrpc": "2.0", "id": msg_id, "result": {**result, "tasks": kept}}, decision="allow")
