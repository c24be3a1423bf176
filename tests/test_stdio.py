"""A stdio MCP server behind scopegate (SCOPEGATE_UPSTREAM_COMMAND): the demo ledger run over stdio by the official
SDK, as child processes scopegate starts, driven through scopegate by the official SDK client in both protocol
revisions. Lists filtered, writes held and confirmed, progress relayed, the child's crash answered and recovered,
secrets given as environment variables, stderr logged with the session named, and no process left after shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import httpx2
import pytest

from proxy.config import ConfigError, load
from proxy.edge.app import OPS_PORT
from proxy.edge.stdio.bridge import KEY_HEADER
from tests.conftest import AUTH, MODES, POLICIES, TOKENS, sdk_client, wait_until
from tests.stdio_helpers import LEDGER, URL, bridge_of, environ, gone, group_members
from tests.test_sdk_through_proxy import ENTRY


@pytest.mark.parametrize("mode", MODES)
async def test_ledger_over_stdio_filtered_held_confirmed(mode: str, start_proxy: Any) -> None:
    url = await start_proxy(URL, upstream_command=LEDGER)
    async with sdk_client(url, mode, token=TOKENS["reader"]) as reader:
        names = {t.name for t in (await reader.list_tools()).tools}
        assert "list_accounts" in names and "create_journal_entry" not in names  # filtered for a read-only PAT
        accounts = await reader.call_tool("list_accounts", {})  # workspaceId injected (the PAT's workspace)
        assert not accounts.is_error and accounts.structured_content["workspaceId"] == "acme"

    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with sdk_client(url, mode) as writer:
        assert writer.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        preview = await writer.call_tool("create_journal_entry", ENTRY)
        assert not preview.is_error and preview.structured_content["status"] == "confirmation_required"
        token = preview.structured_content["confirmationToken"]
        done = await writer.call_tool("create_journal_entry", {**ENTRY, "confirmationToken": token})
        assert not done.is_error and done.structured_content["posted"]["memo"] == "supplies"
        again = await writer.call_tool("create_journal_entry", {**ENTRY, "confirmationToken": token})
        assert again.is_error  # single use
        report = await writer.call_tool("run_month_end_report", {"workspaceId": "acme", "period": "2026-10",
                                                                 "steps": 3, "delay": 0.05},
                                        progress_callback=on_progress)
        assert not report.is_error and seen == [1, 2, 3]  # the child's progress, relayed on the call's stream


@pytest.mark.parametrize("mode", MODES)
async def test_a_crashed_child_is_answered_and_recovered(mode: str, start_proxy: Any) -> None:
    url = await start_proxy(URL, upstream_command=LEDGER)
    bridge = bridge_of(start_proxy)
    async with sdk_client(url, mode) as client:
        await client.list_tools()
        call = asyncio.ensure_future(client.call_tool(
            "run_month_end_report", {"workspaceId": "acme", "period": "2026-10", "steps": 50, "delay": 0.2}))
        assert await wait_until(lambda: any(slot.waiting for slot in (*bridge.sessions.values(), *bridge.pool)))
        victims = [slot.child.pid for slot in (*bridge.sessions.values(), *bridge.pool)
                   if slot.waiting and slot.child is not None]
        assert len(victims) == 1
        os.kill(victims[0], signal.SIGKILL)
        with pytest.raises(Exception, match="upstream server process exited") as raised:
            await asyncio.wait_for(call, 10)
        assert "starts it again" in str(raised.value)
        # The next request starts it again (a session's child gets the session's initialize once more).
        result = await client.call_tool("get_period_status", {"workspaceId": "acme", "period": "2026-10"})
        assert not result.is_error
    assert gone(victims[0])


async def test_a_child_that_keeps_dying_is_started_again_after_a_wait(start_proxy: Any, tmp_path: Any) -> None:
    script = tmp_path / "dies.py"
    script.write_text("import sys; sys.stdin.readline(); sys.exit(3)\n")  # reads one message, then dies
    url = await start_proxy(URL, upstream_command=(sys.executable, str(script)))
    async with httpx2.AsyncClient(headers={**AUTH, "Accept": "application/json, text/event-stream"}) as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}}
        first = await http.post(url, json=body)
        assert first.status_code == 200
        assert "did not answer initialize" in first.text or "exited (status 3)" in first.text
        tries = []
        for _ in range(3):
            tries.append((await http.post(url, json={**body, "method": "tools/list", "params": {}},
                                          headers={"MCP-Protocol-Version": "2026-07-28",
                                                   "Mcp-Method": "tools/list"})).text)
        assert any("starts it again in" in text for text in tries), tries  # the backoff, said as such


async def test_the_childs_secrets_are_environment_variables_the_client_never_sees(start_proxy: Any,
                                                                                    caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="scopegate.upstream")
    secret = "commerce-app-token-42"
    command = ("sh", "-c", 'echo "starting on stderr" >&2; exec "$0" "$@"', *LEDGER)
    url = await start_proxy(URL, upstream_command=command, policy=str(POLICIES / "app-token.yaml"),
                            env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": secret})
    bridge = bridge_of(start_proxy)
    os.environ["SCOPEGATE_STREAM_KEY"] = "x" * 40  # scopegate's own settings never reach the child
    try:
        async with sdk_client(url, "legacy") as client:
            tools = await client.list_tools()
            assert secret not in str(tools)
            session = next(iter(bridge.sessions.values()))
            env = environ(session.child.pid)
    finally:
        del os.environ["SCOPEGATE_STREAM_KEY"]
    assert env["X_APP_TOKEN"] == secret
    assert not any(name.startswith("SCOPEGATE_") for name in env)
    assert bridge.key not in env.values() and "PATH" in env
    lines = [r for r in caplog.records if getattr(r, "stream", None) == "stderr"]
    assert any(r.getMessage() == "starting on stderr" and r.upstream_process.startswith("session-") for r in lines)
    # The bridge's key is a server-side header: a client that sends it is refused, the bridge refuses requests
    # without it.
    async with httpx2.AsyncClient() as http:
        refused = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                  headers={**AUTH, KEY_HEADER: bridge.key})
        assert refused.status_code == 400
        direct = await http.post(str(bridge.url), json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert direct.status_code == 403


async def test_no_child_is_left_after_shutdown(start_proxy: Any) -> None:
    # The server leaves a process of its own behind (a helper that does not read stdin, as npx or a server's
    # workers may): the group, not only the process scopegate started, must go.
    command = ("sh", "-c", 'sleep 300 & exec "$0" "$@"', *LEDGER)
    url = await start_proxy(URL, upstream_command=command)
    bridge = bridge_of(start_proxy)
    async with contextlib.AsyncExitStack() as clients:
        for mode in MODES:
            client = await clients.enter_async_context(sdk_client(url, mode))
            await client.list_tools()
        pids = bridge.children()
        assert len(pids) >= 2  # a session's child, and a pool child
        members = [pid for leader in pids for pid in group_members(leader)]
        assert len(members) > len(pids)  # each server has its helper beside it
        for runner in start_proxy.runners:
            await runner.cleanup()
        start_proxy.runners.clear()
        # SIGKILL is delivered, not awaited: a moment for the kernel to end them
        assert await wait_until(lambda: all(gone(pid) for pid in members), 2), [p for p in members if not gone(p)]


async def test_a_client_that_leaves_during_a_start_leaves_no_half_started_child(start_proxy: Any) -> None:
    """The readiness probe pings with a one-second budget; a server that takes longer to start must still be started
    whole (its handshake done) and used by the next request, not left half-initialized beside a second one."""
    import aiohttp

    slow = ("sh", "-c", 'sleep 1.5; exec "$0" "$@"', *LEDGER)
    url = await start_proxy(URL, upstream_command=slow, upstream_pool=2)
    bridge = bridge_of(start_proxy)
    port = start_proxy.runners[-1].app[OPS_PORT]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as first:
            assert first.status == 503  # the ping gave up after 1 s; the start goes on
        assert await wait_until(lambda: any(slot.alive for slot in bridge.pool), 10)
        async with http.get(f"http://127.0.0.1:{port}/readyz") as second:
            assert second.status == 200, await second.text()
    assert len(bridge.children()) == 1
    async with sdk_client(url, "auto") as client:
        assert (await client.list_tools()).tools
    assert len(bridge.children()) == 1  # scopegate's catalog and the client shared the one child


async def test_idle_children_are_stopped(start_proxy: Any) -> None:
    url = await start_proxy(URL, upstream_command=LEDGER, upstream_idle_seconds=0.4)
    bridge = bridge_of(start_proxy)
    async with sdk_client(url, "legacy") as client:
        await client.list_tools()
        pids = bridge.children()
        assert pids
        assert await wait_until(lambda: all(gone(pid) for pid in pids), 5)
        with pytest.raises(Exception):  # noqa: B017 -- the session ended: the SDK says so in its own words
            await client.list_tools()


def test_upstream_identity_is_refused_for_a_stdio_server(tmp_path: Any, pat_file: str) -> None:
    """The caller's signed identity travels as a header on each upstream request: a stdio server gets none, so a
    policy that asks for it is a configuration error, not a promise silently dropped."""
    from yarl import URL as Url

    from proxy.config import Config
    from proxy.identity.loader import load_identity
    from tests.test_upstream_identity import identity_policy

    config = Config(upstream=Url(URL), upstream_command=LEDGER, pat_file=pat_file, policy=identity_policy(tmp_path),
                    public_url=Url("http://127.0.0.1:2/mcp"))
    with pytest.raises(ConfigError, match="stdio server"):
        load_identity(config, {})


def test_settings() -> None:
    ok = load({"SCOPEGATE_UPSTREAM_COMMAND": '["sh", "-c", "echo hi"]', "PATH": os.environ["PATH"]}, {})
    assert ok.upstream_command == ("sh", "-c", "echo hi") and ok.upstream.path == "/mcp"
    split = load({"SCOPEGATE_UPSTREAM_COMMAND": "sh -c 'echo hi there'", "PATH": os.environ["PATH"]}, {})
    assert split.upstream_command == ("sh", "-c", "echo hi there")
    bad = {
        "SCOPEGATE_UPSTREAM_COMMAND": "",
        "SCOPEGATE_UPSTREAM_COMMAND=[1]": "JSON array of strings",
        "SCOPEGATE_UPSTREAM_COMMAND=sh 'open": "cannot split",
        "SCOPEGATE_UPSTREAM_COMMAND=no-such-program-here": "not a program scopegate can run",
        "SCOPEGATE_UPSTREAM=http://127.0.0.1:1/mcp": "set one of them",
        "SCOPEGATE_WORKERS=2": "one worker",
        "SCOPEGATE_UPSTREAM_ENV=SCOPEGATE_POLICY": "never SCOPEGATE_",
        "SCOPEGATE_UPSTREAM_CWD=/no/such/dir": "no directory",
    }
    for setting, expected in bad.items():
        if not expected:
            continue
        name, _, value = setting.partition("=")
        env = {"SCOPEGATE_UPSTREAM_COMMAND": "sh", "PATH": os.environ["PATH"], name: value}
        if name == "SCOPEGATE_WORKERS":
            env["SCOPEGATE_REDIS_URL"] = "redis://127.0.0.1:1"
        with pytest.raises(ConfigError, match=expected):
            load(env, {})
    with pytest.raises(ConfigError, match="needs SCOPEGATE_UPSTREAM_COMMAND"):
        load({"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp", "SCOPEGATE_UPSTREAM_POOL": "2"}, {})
