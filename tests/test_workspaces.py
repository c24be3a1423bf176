"""Workspace and project boundaries, end to end, asserting on what the upstream actually received."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from mcp import types

from proxy.guards.workspace import decode_header, encode_header, project_problem, workspace_problem
from proxy.identity.principal import Principal
from tests.conftest import MODERN_META, MODES, POLICIES, TOKENS, Recorder, sdk_client
from tests.rawmcp import LegacySession, rpc

PERIOD = {"period": "2026-10"}


def test_workspace_and_project_rules_are_pure() -> None:
    bound = Principal("u", "c", "l", "pat", frozenset(), workspaces=frozenset({"acme"}), bound_workspace="acme")
    assert workspace_problem(bound, "acme") is None
    assert "bound to workspace 'acme'" in workspace_problem(bound, "globex")
    listed = Principal("u", "c", "l", "pat", frozenset(), workspaces=frozenset({"acme", "globex"}),
                       projects=frozenset({"p-1", "p-2"}), permissions={"globex": "none", "p-2": "none"})
    assert "denied" in workspace_problem(listed, "globex")  # an explicit none wins over the grant
    assert "not one this credential may use" in workspace_problem(listed, "initech")
    assert project_problem(listed, "p-1") is None and "denied" in project_problem(listed, "p-2")
    assert "must be a non-empty string" in workspace_problem(listed, 42)
    for text in ("acme", "Zürich office", " padded"):
        assert decode_header(encode_header(text)) == text


async def call(url: str, token: str, tool: str, arguments: dict, extra: dict | None = None,
               msg_id: int = 1, params: dict | None = None) -> tuple[int, Any]:
    body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments, "_meta": MODERN_META, **(params or {})}})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/call", "Mcp-Name": tool, **(extra or {})}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


def received_arguments(recorder: Recorder, tool: str) -> list[dict]:
    return [c["params"]["arguments"] for c in recorder.calls("tools/call") if c["params"]["name"] == tool]


@pytest.mark.parametrize("mode", MODES)
async def test_bound_pat_gets_its_workspace_injected(mode: str, start_proxy: Any, upstream: Any,
                                                     recorder: Recorder, issue: Any) -> None:
    reader = issue("review script", ["mcp:read"], workspace="acme")
    url = await start_proxy(upstream.url, pat_file=issue.path)
    async with sdk_client(url, mode, token=reader) as client:
        await client.list_tools()
        result = await client.call_tool("list_accounts", {})
        assert not result.is_error and result.structured_content["workspaceId"] == "acme"
        # get_period_status mirrors workspaceId into Mcp-Param-Workspace: the header must follow the injection,
        # or the upstream would refuse the call.
        status = await client.call_tool("get_period_status", PERIOD)
        assert not status.is_error and status.structured_content["workspaceId"] == "acme"
    assert received_arguments(recorder, "list_accounts") == [{"workspaceId": "acme"}]
    (period_call,) = [r for r in recorder.posts() if b"get_period_status" in r.body and b"tools/call" in r.body]
    if mode == "auto":
        assert period_call.headers["mcp-param-workspace"] == "acme"


async def test_default_workspace_and_missing_workspace(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                       issue: Any) -> None:
    agent = issue("agent", ["mcp:read", "mcp:write"])  # user-scoped: every workspace, none bound
    plain = await start_proxy(upstream.url, pat_file=issue.path)
    status, answer = await call(plain, agent, "list_accounts", {})
    assert status == 200 and answer["result"]["isError"] is True
    assert "needs the workspaceId argument" in answer["result"]["content"][0]["text"]
    assert recorder.calls("tools/call") == []  # refused: nothing forwarded
    with_default = await start_proxy(upstream.url, pat_file=issue.path, default_workspace="globex")
    status, answer = await call(with_default, agent, "list_accounts", {})
    assert status == 200 and answer["result"]["structuredContent"]["workspaceId"] == "globex"
    assert received_arguments(recorder, "list_accounts") == [{"workspaceId": "globex"}]


async def test_other_workspace_and_explicit_deny(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                 issue: Any) -> None:
    reader = issue("review script", ["mcp:read"], workspace="acme")
    limited = issue("limited", ["mcp:read"], workspaces=["acme", "globex"], permissions={"globex": "none"})
    url = await start_proxy(upstream.url, pat_file=issue.path)
    for token, workspace, words in ((reader, "globex", "bound to workspace 'acme'"),
                                    (limited, "initech", "not one this credential may use"),
                                    (limited, "globex", "denied")):
        status, answer = await call(url, token, "list_journal_entries", {"workspaceId": workspace})
        assert status == 200 and answer["result"]["isError"] is True
        assert words in answer["result"]["content"][0]["text"]
    assert recorder.calls("tools/call") == []
    status, answer = await call(url, limited, "list_journal_entries", {"workspaceId": "acme"})
    assert status == 200 and answer["result"]["isError"] is False
    assert received_arguments(recorder, "list_journal_entries") == [{"workspaceId": "acme"}]


async def test_projects_checked_where_the_policy_says(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                      issue: Any, tmp_path: Path) -> None:
    policy = (POLICIES / "org-ceiling.yaml").read_text().replace("default: deny", "default: deny\ncheck_projects: true")
    path = tmp_path / "org.yaml"
    path.write_text(policy)
    member = issue("member", role="member", workspaces=["acme"], projects=["p-1", "p-2"],
                   permissions={"acme": "write", "p-2": "none"}, org_capabilities={"can_manage_kg": True})
    url = await start_proxy(upstream.url, policy=str(path), pat_file=issue.path)
    for project, ok in (("p-1", True), ("p-2", False), ("p-9", False)):
        args = {"workspaceId": "acme", "projectId": project}
        status, answer = await call(url, member, "rebuild_knowledge_graph", args)
        assert status == 200 and bool(answer["result"].get("isError")) is not ok, answer
        if ok:  # a write: the preview came back; confirm it
            token = answer["result"]["structuredContent"]["confirmationToken"]
            status, answer = await call(url, member, "rebuild_knowledge_graph", {**args, "confirmationToken": token})
            assert answer["result"]["structuredContent"]["projectId"] == "p-1"
    assert received_arguments(recorder, "rebuild_knowledge_graph") == [{"workspaceId": "acme", "projectId": "p-1"}]
    await call(url, member, "list_accounts", {})  # verify: nothing injected, nothing refused; the upstream decides
    assert recorder.calls("tools/call")[-1]["params"]["arguments"] == {}


async def test_header_and_body_must_agree(start_proxy: Any, upstream: Any, recorder: Recorder,
                                          issue: Any) -> None:
    agent = issue("agent", ["mcp:read"])
    url = await start_proxy(upstream.url, pat_file=issue.path)
    async with sdk_client(url, "auto", token=agent) as client:
        await client.list_tools()  # the proxy learns which argument is mirrored into which header
    recorder.received.clear()
    status, answer = await call(url, agent, "get_period_status", {"workspaceId": "acme", **PERIOD},
                                {"Mcp-Param-Workspace": "globex"})
    assert status == 400 and answer["error"]["code"] == -32020
    status, answer = await call(url, agent, "get_period_status", PERIOD, {"Mcp-Param-Workspace": "acme"})
    assert status == 400 and answer["error"]["code"] == -32020  # a header with no argument behind it
    assert recorder.calls("tools/call") == []
    status, answer = await call(url, agent, "get_period_status", {"workspaceId": "acme", **PERIOD},
                                {"Mcp-Param-Workspace": "acme"})
    assert status == 200 and answer["result"]["structuredContent"]["status"] == "open"


async def test_batches_and_task_augmented_calls(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                issue: Any) -> None:
    reader = issue("review script", ["mcp:read"], workspace="acme")
    url = await start_proxy(upstream.url, pat_file=issue.path)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_accounts", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "list_accounts", "arguments": {"workspaceId": "globex"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "get_trial_balance", "arguments": {}, "task": {"ttl": 60000}}},
    ]
    headers = {"Authorization": f"Bearer {reader}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(batch), headers=headers) as resp:
        answers = orjson.loads(await resp.read())
    (received,) = recorder.posts()
    assert [m["params"]["arguments"] for m in received.json()] == [{"workspaceId": "acme"}, {"workspaceId": "acme"}]
    assert received.json()[1]["params"]["task"] == {"ttl": 60000}  # the task-augmented call, injected too
    refused = next(a for a in answers if a.get("id") == 2)
    assert refused["result"]["isError"] is True


async def test_delegated_to_the_upstream_schema_and_hidden_for_bound_credentials(
    start_proxy: Any, upstream: Any, recorder: Recorder, issue: Any, tmp_path: Path
) -> None:
    reader = issue("review script", ["mcp:read"], workspace="acme")
    agent = issue("agent", ["mcp:read"])
    path = tmp_path / "learned.yaml"
    path.write_text(json.dumps({
        "version": 1, "scopes": ["mcp:read"], "hide_bound_workspace": True,
        "tools": [{"match": "list_*", "scopes": ["mcp:read"]}],  # the policy says nothing about workspaces
    }))
    url = await start_proxy(upstream.url, policy=str(path), pat_file=issue.path)
    await call(url, reader, "list_accounts", {})  # before any list: the proxy fetched the schema itself, then injected
    assert received_arguments(recorder, "list_accounts") == [{"workspaceId": "acme"}]
    assert recorder.catalog[0].json()["method"] == "tools/list"  # the proxy's own, before the call
    async with sdk_client(url, "auto", token=reader) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        schema = tools["list_accounts"].input_schema
        assert "workspaceId" not in schema["properties"] and "workspaceId" not in schema.get("required", [])
        result = await client.call_tool("list_accounts", {})
        assert result.structured_content["workspaceId"] == "acme"
    async with sdk_client(url, "auto", token=agent) as client:  # not bound: the argument stays in the schema
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "workspaceId" in tools["list_accounts"].input_schema["properties"]
    assert received_arguments(recorder, "list_accounts")[-1] == {"workspaceId": "acme"}


@pytest.mark.parametrize("mode", MODES)
async def test_org_ceiling_verifies_workspaces_with_the_sdk(mode: str, start_proxy: Any, upstream: Any,
                                                            recorder: Recorder, issue: Any) -> None:
    member = issue("member", role="member", workspaces=["acme", "globex"],
                   permissions={"acme": "write", "globex": "none"})
    url = await start_proxy(upstream.url, policy=str(POLICIES / "org-ceiling.yaml"), pat_file=issue.path)
    async with sdk_client(url, mode, token=member) as client:
        await client.list_tools()
        ok = await client.call_tool("list_accounts", {"workspaceId": "acme"})
        assert not ok.is_error and ok.structured_content["workspaceId"] == "acme"
        for workspace in ("globex", "initech"):  # explicitly denied; not held
            refused = await client.call_tool("list_accounts", {"workspaceId": workspace})
            assert refused.is_error and "refused" in refused.content[0].text
    assert received_arguments(recorder, "list_accounts") == [{"workspaceId": "acme"}]


async def test_list_changed_makes_the_proxy_fetch_the_schema_again(start_proxy: Any, recorder: Recorder,
                                                                    issue: Any, tmp_path: Path) -> None:
    """The upstream announces new tools (a parsed notification on a call's stream): the proxy fetches its catalog
    again before the next delegated decision, so a tool the client never listed is still workspace-checked."""
    from proxy.demo.event_store import resumable_app
    from proxy.demo.ledger import build_server
    from proxy.edge.app import FORWARDER
    from tests.conftest import ThreadedServer, free_port

    port = free_port()
    own = ThreadedServer(resumable_app(build_server()), port)
    own.start()
    try:
        reader = issue("review script", ["mcp:read"], workspace="acme")
        path = tmp_path / "learned.yaml"
        path.write_text(json.dumps({"version": 1, "scopes": ["mcp:read"], "tools": [
            {"match": "list_*", "scopes": ["mcp:read"]}, {"match": "enable_payroll_module", "scopes": ["mcp:read"]},
        ]}))
        url = await start_proxy(f"http://127.0.0.1:{port}/mcp", policy=str(path), pat_file=issue.path)
        catalog = start_proxy.runners[-1].app[FORWARDER].pipeline.upstream_watches[0].__self__
        async with sdk_client(url, "legacy", token=reader) as client:
            assert (await client.call_tool("list_accounts", {})).structured_content["workspaceId"] == "acme"
            assert "list_payslips" not in catalog.tools
            changes = catalog.changes
            await client.call_tool("enable_payroll_module", {})
            assert catalog.changes > changes and not catalog.fresh()  # the notice, parsed on the call's stream
            result = await client.call_tool("list_payslips", {"month": "2026-10"})  # never listed by the client
            assert result.structured_content["workspaceId"] == "acme"
            refused = await client.call_tool("list_payslips", {"month": "2026-10", "workspaceId": "globex"})
            assert refused.is_error and "bound to workspace 'acme'" in refused.content[0].text
        assert catalog.fresh() and "workspaceId" in catalog.tools["list_payslips"].properties
    finally:
        own.stop()


async def test_a_task_augmented_call_refused_for_its_workspace_gets_a_held_task(proxy_url: str,
                                                                               recorder: Recorder) -> None:
    """2025-11-25 tasks: a client that asked for a task chokes on a plain result. Whichever guard refuses the call
    (here the workspace guard), the refusal comes back as a task the proxy holds, its result the refusal; nothing
    reaches the upstream."""
    async with aiohttp.ClientSession() as http:
        reader = LegacySession(http, proxy_url, token=TOKENS["reader"])  # bound to acme
        await reader.open()
        created = await rpc(reader, 1, "tools/call", {"name": "list_accounts", "arguments": {"workspaceId": "globex"},
                                                      "task": {"ttl": 60000}})
        task = types.CreateTaskResult.model_validate(created["result"]).task
        assert task.status == "completed" and task.task_id.startswith("scopegate-task-")
        payload = (await rpc(reader, 2, "tasks/result", {"taskId": task.task_id}))["result"]
        refusal = types.CallToolResult.model_validate(payload)
        assert refusal.is_error and "bound to workspace 'acme'" in refusal.content[0].text
    assert recorder.calls("tools/call") == [] and recorder.calls("tasks/result") == []
