"""An upstream that runs tool calls as 2025-11-25 tasks, built on the official `mcp` SDK (`MCPServer`, with a server
middleware: the SDK's hook for methods its core does not serve, as `tasks/*` are in 2.3.0). Like most servers, it
knows nothing of who calls it (scopegate keeps the credential to itself): one task table for everyone, ids from a
counter, `tasks/list` lists every task. It sends `notifications/tasks/status` on the call's own stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Mapping
from typing import Any

import mcp_types as types
import pytest
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from proxy.demo.run import free_port
from tests.conftest import Recorder, ThreadedServer, Upstream

POLICY = """
version: 1
name: upstream-tasks
scopes: [mcp:read, mcp:write]
default: deny
tools:
  - {match: report, scopes: [mcp:read]}
  - {match: slow_report, scopes: [mcp:read]}
  - {match: rebuild_index, scopes: [mcp:read, mcp:write]}
"""
RELATED = "io.modelcontextprotocol/related-task"
STATUS = "notifications/tasks/status"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclasses.dataclass
class TaskTable:
    """The upstream's tasks: everyone's, in one table."""

    tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    running: dict[str, asyncio.Task[Any]] = dataclasses.field(default_factory=dict)
    counter: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))

    def new(self, ttl: Any) -> dict[str, Any]:
        now = _iso(time.time())
        task = {"taskId": f"task-{next(self.counter)}", "status": "working", "createdAt": now, "lastUpdatedAt": now,
                "ttl": ttl if isinstance(ttl, int) else 60000, "pollInterval": 100}
        self.tasks[task["taskId"]] = task
        return task

    def finish(self, task_id: str, status: str, result: dict[str, Any] | None = None) -> None:
        self.tasks[task_id].update(status=status, lastUpdatedAt=_iso(time.time()))
        if result is not None:
            self.results[task_id] = result


class Tasks:
    """The server middleware: task-augmented `tools/call` answered with a task, and the `tasks/*` methods."""

    def __init__(self, table: TaskTable) -> None:
        self.table = table

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        if ctx.method == "tools/call" and isinstance(params.get("task"), Mapping):
            return await self.create(ctx, call_next, params)
        table = self.table
        if ctx.method == "tasks/list":
            return {"tasks": list(table.tasks.values())}
        if ctx.method in ("tasks/get", "tasks/result", "tasks/cancel"):
            task = table.tasks.get(str(params.get("taskId")))
            if task is None:
                raise MCPError(code=-32602, message="no such task")
            if ctx.method == "tasks/cancel" and task["status"] == "working":
                table.running.pop(task["taskId"]).cancel()
                table.finish(task["taskId"], "cancelled")
            if ctx.method != "tasks/result":
                return dict(task)
            if task["taskId"] in table.running:
                await asyncio.shield(table.running[task["taskId"]])
            result = table.results.get(task["taskId"], {"content": [], "isError": True})
            return {**result, "_meta": {RELATED: {"taskId": task["taskId"]}}}
        return await call_next(ctx)

    async def create(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext,
                     params: Mapping[str, Any]) -> HandlerResult:
        table = self.table
        task = table.new(params["task"].get("ttl"))
        plain = dataclasses.replace(ctx, params={k: v for k, v in params.items() if k != "task"})

        async def run() -> None:
            try:
                done = await call_next(plain)
            except asyncio.CancelledError:
                return
            dumped = done.model_dump(by_alias=True, exclude_none=True) if hasattr(done, "model_dump") else done
            table.finish(task["taskId"], "completed", dumped)
            table.running.pop(task["taskId"], None)

        table.running[task["taskId"]] = asyncio.get_running_loop().create_task(run())
        status = types.TaskStatusNotification.model_validate({"method": STATUS, "params": dict(task)})
        await ctx.session.send_notification(status, related_request_id=ctx.request_id)  # type: ignore[arg-type]
        return {"task": dict(task)}


def build_reports(table: TaskTable) -> Any:
    server = MCPServer("reports", middleware=[Tasks(table)])

    @server.tool()
    async def report(title: str) -> str:
        """A short report."""
        return f"report: {title}"

    @server.tool()
    async def slow_report(title: str) -> str:
        """A report that takes a while."""
        await asyncio.sleep(60)
        return f"slow report: {title}"

    @server.tool()
    async def rebuild_index() -> str:
        """Rebuilds the search index."""
        return "rebuilt"

    return server


@dataclasses.dataclass
class TasksUpstream(Upstream):
    table: TaskTable = dataclasses.field(default_factory=TaskTable)


@pytest.fixture(scope="module", name="tasks_upstream")
def tasks_upstream_fixture() -> Any:
    table = TaskTable()
    port = free_port()
    recorder = Recorder(build_reports(table).streamable_http_app())
    server = ThreadedServer(recorder, port)
    server.start()
    yield TasksUpstream(f"http://127.0.0.1:{port}/mcp", recorder, port, table)
    server.stop()
