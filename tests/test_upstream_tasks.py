"""The upstream's tasks through scopegate (issue 24, item 4): the upstream (tests/tasks_upstream.py, on the official
SDK) keeps one task table for everyone and sees no caller, so scopegate must keep each caller to its own tasks. Its
task ids reach clients only sealed to credential and session; a task method naming anything else (another
credential's sealed id, another session's, the upstream's raw id) is refused and never forwarded; `tasks/list`
shows the caller's own tasks only; and the task methods need the scope of the call that created the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from proxy.exchange import Exchange
from proxy.guards.catalog import Catalog
from proxy.guards.scope import FORBIDDEN, ScopeGuard
from proxy.guards.tasks import SEALED_PREFIX, TaskGuard, TaskIds, UpstreamTasks
from proxy.identity.pats import create_record, write_records
from proxy.identity.principal import Principal
from proxy.policy.decide import Rules
from proxy.policy.model import load_policy
from proxy.policy.reload import LivePolicy
from proxy.store import MemoryStore
from tests.rawmcp import LegacySession
from tests.tasks_upstream import POLICY, RELATED, STATUS, TasksUpstream, tasks_upstream_fixture  # noqa: F401

SCOPES = {"writer": ["mcp:read", "mcp:write"], "other": ["mcp:read", "mcp:write"], "nobody": [],
          "reader": ["mcp:read"]}


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[dict[str, str], str, str]:
    records, tokens = [], {}
    for name, scopes in SCOPES.items():
        record, token = create_record(kind="pat", label=name, subject=f"user-{name}", scopes=scopes, workspace=None,
                                      workspaces=None, role=None, expires_in=3600)
        records.append(record)
        tokens[name] = token
    write_records(tmp_path / "pats.yaml", records)
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tokens, str(tmp_path / "pats.yaml"), str(tmp_path / "policy.yaml")


async def messages(session: LegacySession, msg_id: int, method: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every message of the answer to one request (JSON body or SSE stream), in order."""
    async with session.post({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}) as resp:
        body = await resp.read()
    if resp.headers["Content-Type"].startswith("application/json"):
        return [orjson.loads(body)]
    return [orjson.loads(line[5:]) for line in body.decode().splitlines() if line.startswith("data:") and line[5:]
            .strip()]


async def answer(session: LegacySession, msg_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    (found,) = [m for m in await messages(session, msg_id, method, params) if m.get("id") == msg_id]
    return found


def unknown(reply: dict[str, Any]) -> bool:
    return reply.get("error", {}).get("message", "").startswith("unknown task")


async def test_upstream_tasks_are_each_callers_own(start_proxy: Any, tasks_upstream: TasksUpstream,
                                                   tokens: tuple[dict[str, str], str, str]) -> None:
    names, pat_file, policy = tokens
    proxy = await start_proxy(tasks_upstream.url, pat_file=pat_file, policy=policy)
    table, recorder = tasks_upstream.table, tasks_upstream.recorder
    async with aiohttp.ClientSession() as http:
        sessions = {}
        for name in ("writer", "other", "nobody"):
            sessions[name] = LegacySession(http, proxy, token=names[name])
            await sessions[name].open()
        writer, other, nobody = sessions["writer"], sessions["other"], sessions["nobody"]

        # The writer's task: the id it gets is sealed, on the status notification and the CreateTaskResult alike.
        created = await messages(writer, 1, "tools/call", {"name": "report", "arguments": {"title": "Q3"},
                                                           "task": {"ttl": 60000}})
        (status,) = [m for m in created if m.get("method") == STATUS]
        (result,) = [m for m in created if m.get("id") == 1]
        mine = result["result"]["task"]["taskId"]
        assert mine.startswith(SEALED_PREFIX) and status["params"]["taskId"] == mine
        upstream_id = max(table.tasks, key=lambda t: int(t.split("-")[1]))
        assert upstream_id not in orjson.dumps(created).decode()

        # Its owner uses it as any task: get, result (whose related-task names the same sealed id).
        got = await answer(writer, 2, "tasks/get", {"taskId": mine})
        assert got["result"]["taskId"] == mine
        payload = (await answer(writer, 3, "tasks/result", {"taskId": mine}))["result"]
        assert payload["content"][0]["text"] == "report: Q3"
        assert payload["_meta"][RELATED] == {"taskId": mine}
        forwarded = recorder.calls("tasks/result")
        assert [c["params"]["taskId"] for c in forwarded] == [upstream_id]  # the upstream gets its own id

        # Another credential: neither the sealed id nor the upstream's own reaches the upstream.
        before = len(recorder.calls("tasks/result")) + len(recorder.calls("tasks/get"))
        for msg_id, method in enumerate(("tasks/result", "tasks/get", "tasks/cancel"), start=10):
            assert unknown(await answer(other, msg_id, method, {"taskId": mine}))
            assert unknown(await answer(other, msg_id + 10, method, {"taskId": upstream_id}))
            assert unknown(await answer(other, msg_id + 20, method, {"taskId": "task-1"}))
        assert len(recorder.calls("tasks/result")) + len(recorder.calls("tasks/get")) == before
        assert recorder.calls("tasks/cancel") == []

        # The same credential in another session: the sealed id is the session's.
        again = LegacySession(http, proxy, token=names["writer"])
        await again.open()
        assert unknown(await answer(again, 30, "tasks/get", {"taskId": mine}))

        # A long task of the writer's, one of the other's: each lists its own; no scope lists nothing, cancels nothing.
        slow = (await answer(writer, 40, "tools/call", {"name": "slow_report", "arguments": {"title": "FY"},
                                                        "task": {}}))["result"]["task"]["taskId"]
        theirs = (await answer(other, 41, "tools/call", {"name": "report", "arguments": {"title": "theirs"},
                                                         "task": {}}))["result"]["task"]["taskId"]
        listed = {n: [t["taskId"] for t in (await answer(sessions[n], 42, "tasks/list", {}))["result"]["tasks"]]
                  for n in ("writer", "other", "nobody")}
        assert sorted(listed["writer"]) == sorted([mine, slow])
        assert listed["other"] == [theirs]
        assert listed["nobody"] == []
        assert len(table.tasks) >= 3  # the upstream itself lists everyone's
        slow_upstream = [t for t, task in table.tasks.items() if task["status"] == "working"][-1]
        assert unknown(await answer(nobody, 43, "tasks/cancel", {"taskId": slow_upstream}))
        assert unknown(await answer(other, 44, "tasks/cancel", {"taskId": slow}))
        assert table.tasks[slow_upstream]["status"] == "working"
        assert recorder.calls("tasks/cancel") == []

        # Its owner cancels it.
        cancelled = await answer(writer, 45, "tasks/cancel", {"taskId": slow})
        assert cancelled["result"]["status"] == "cancelled" and cancelled["result"]["taskId"] == slow
        assert table.tasks[slow_upstream]["status"] == "cancelled"


# --- the scope the task methods need --------------------------------------------------------------------------------


def principal(scopes: set[str]) -> Principal:
    return Principal(subject="s", credential_id="c0ffee000001", label="s", kind="pat", scopes=frozenset(scopes),
                     workspaces=None, bound_workspace=None, default_workspace=None)


async def test_task_methods_need_the_scope_of_the_call_that_made_the_task(tmp_path: Path) -> None:
    """The creating call's tool decides: a credential whose scopes no longer allow `rebuild_index` (mcp:write) cannot
    read or cancel the task its call made; one that may still call it can. A task whose tool is not on record is
    unknown. (The credential's scopes are changed here by hand: in service they shrink with its grant.)"""
    (tmp_path / "policy.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "policy.yaml")
    live = LivePolicy(policy, Rules(policy))
    store = MemoryStore()
    upstream = UpstreamTasks(store, TaskIds(b"k" * 32))
    guard = TaskGuard(store, upstream, ScopeGuard(live, Catalog(None)), None)

    def exchange(scopes: set[str]) -> Exchange:
        found = Exchange(request_id="r", session_id="s1", protocol_version="2025-11-25",
                         upstream_headers=CIMultiDict(), principal=principal(scopes))
        live.pin(found)
        return found

    made = exchange({"mcp:read", "mcp:write"})
    made.tasks = None
    await guard(made, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "rebuild_index", "arguments": {}, "task": {}}})
    assert made.tasks is not None
    upstream.answer(made, "s1", {"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "u-9"}}}, "tools/call")
    await upstream.record(made, "s1")
    sealed = upstream.ids.seal("pat:c0ffee000001", "s1", "u-9")

    ask = {"jsonrpc": "2.0", "id": 2, "method": "tasks/result", "params": {"taskId": sealed}}
    allowed = await guard(exchange({"mcp:read", "mcp:write"}), ask)
    assert allowed["params"]["taskId"] == "u-9"  # forwarded with the upstream's own id
    refused = await guard(exchange({"mcp:read"}), ask)
    assert refused.response["error"]["code"] == FORBIDDEN and refused.http_status == 403
    assert "mcp:write" in dict(refused.headers)["WWW-Authenticate"]

    # An upstream task the proxy saw created by no call of this request (no tool on record): unknown.
    stray = exchange({"mcp:read", "mcp:write"})
    stray.tasks = made.tasks.__class__()
    upstream.answer(stray, "s1", {"jsonrpc": "2.0", "id": 5, "result": {"task": {"taskId": "u-10"}}}, None)
    await upstream.record(stray, "s1")
    lost = {"jsonrpc": "2.0", "id": 3, "method": "tasks/get",
            "params": {"taskId": upstream.ids.seal("pat:c0ffee000001", "s1", "u-10")}}
    assert (await guard(exchange({"mcp:read", "mcp:write"}), lost)).reason == "unknown task"


def test_sealed_ids_unseal_only_for_their_credential_and_session() -> None:
    ids = TaskIds(b"k" * 32)
    sealed = ids.seal("pat:a", "s1", "task-1")
    assert ids.unseal("pat:a", "s1", sealed) == "task-1"
    assert ids.unseal("pat:b", "s1", sealed) is None
    assert ids.unseal("pat:a", "s2", sealed) is None
    assert ids.unseal("pat:a", "s1", "task-1") is None
    assert ids.unseal("pat:a", "s1", sealed[:-2] + "AA") is None
    assert TaskIds(b"j" * 32).unseal("pat:a", "s1", sealed) is None


async def test_what_cannot_be_told_apart_is_not_recorded_and_client_task_ids_are_left_alone(tmp_path: Path) -> None:
    """Two task-augmented calls under one id (a batch may try it): which tool made the task cannot be known, so
    neither is recorded. The upstream's own `tasks/*` requests ask about the client's tasks: their ids stay."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "policy.yaml")
    live = LivePolicy(policy, Rules(policy))
    store = MemoryStore()
    upstream = UpstreamTasks(store, TaskIds(b"k" * 32))
    guard = TaskGuard(store, upstream, ScopeGuard(live, Catalog(None)), None)
    made = Exchange(request_id="r", session_id="s1", protocol_version="2025-03-26", upstream_headers=CIMultiDict(),
                    principal=principal({"mcp:read", "mcp:write"}))
    live.pin(made)
    for tool in ("report", "rebuild_index"):
        await guard(made, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": tool, "arguments": {}, "task": {}}})
    created = upstream.answer(made, "s1", {"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "u-1"}}},
                              "tools/call")
    assert created["result"]["task"]["taskId"].startswith(SEALED_PREFIX)
    assert made.tasks is not None and made.tasks.created == []

    asking = {"jsonrpc": "2.0", "id": 9, "method": "tasks/get", "params": {"taskId": "client-task-1"}}
    assert upstream.from_server(made, "s1", asking)["params"]["taskId"] == "client-task-1"
    status = {"jsonrpc": "2.0", "method": STATUS, "params": {"taskId": "u-1", "status": "working"}}
    assert upstream.from_server(made, "s1", status)["params"]["taskId"] == created["result"]["task"]["taskId"]
