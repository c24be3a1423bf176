"""Proxy-held tasks: a task-augmented `tools/call` (2025-11-25 `params.task`) that the proxy answers itself.

A client that asks for a task expects a `CreateTaskResult`, then polls `tasks/get` and fetches `tasks/result`; a
plain result in its place breaks it (the TypeScript SDK: `path ["task"] expected object`). So when the proxy answers
such a call itself (a preview, or any guard's refusal: `HeldTasks`, the pipeline's answer hook), the answer is kept
as a finished task and the client is given the task. `TaskGuard` answers `tasks/get`, `tasks/result` and
`tasks/cancel` for those task ids, and only for the credential and session that made them; every other task id is
the upstream's business and passes through.

Why a held task rather than a JSON-RPC error: an error would hide the preview (and its token) from every
task-augmented caller, so a write held for confirmation could never be confirmed from a client that uses tasks.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from proxy.exchange import Answer, Exchange
from proxy.jsonrpc import INVALID_PARAMS, Message, error
from proxy.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from proxy.policy.reload import LivePolicy

TASK_PREFIX = "scopegate-task-"
RELATED_TASK = "io.modelcontextprotocol/related-task"
METHODS = frozenset({"tasks/get", "tasks/result", "tasks/cancel"})


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


class TaskGuard:
    """Answers the task methods for the tasks the proxy holds, for their owner only."""

    def __init__(self, store: Store) -> None:
        self.store = store

    methods = METHODS

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        if message.get("method") not in METHODS or exchange.principal is None:
            return message
        params = message.get("params")
        task_id = params.get("taskId") if isinstance(params, dict) else None
        if not isinstance(task_id, str) or not task_id.startswith(TASK_PREFIX):
            return message
        msg_id = message.get("id")
        try:
            raw = await self.store.get(_key(task_id))
        except StoreUnavailable:
            return Answer(error(msg_id, INVALID_PARAMS, "task store unavailable; retry shortly"), decision="refuse",
                          reason="store unavailable")
        record = orjson.loads(raw) if raw is not None else None
        # Another credential's (or session's) task is as unknown as a made-up one: nothing tells them apart.
        if record is None or record["owner"] != _owner(exchange):
            return Answer(error(msg_id, INVALID_PARAMS, f"unknown task: {task_id[:80]}"), decision="refuse",
                          reason="unknown task")
        method = message["method"]
        if method == "tasks/cancel":
            return Answer(error(msg_id, INVALID_PARAMS, "the task has already completed: nothing to cancel"),
                          decision="refuse", reason="task completed")
        if method == "tasks/get":
            return Answer({"jsonrpc": "2.0", "id": msg_id, "result": record["task"]}, decision="allow")
        result: dict[str, Any] = record["result"]
        meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
        result = {**result, "_meta": {**meta, RELATED_TASK: {"taskId": task_id}}}
        return Answer({"jsonrpc": "2.0", "id": msg_id, "result": result}, decision="allow")
