"""The official SDK client, through scopegate, against the real demo server: both protocol revisions."""

from __future__ import annotations

import time

import pytest
from mcp.types import TextResourceContents

from tests.conftest import MODES, TOKENS, Recorder, Upstream, sdk_client

ENTRY = {
    "workspaceId": "acme",
    "date": "2026-10-31",
    "memo": "supplies",
    "lines": [{"account": "6000", "debit": 120}, {"account": "1000", "credit": 120}],
}


@pytest.mark.parametrize("mode", MODES)
async def test_list_call_prompt_resource(mode: str, proxy_url: str, recorder: Recorder, upstream: Upstream) -> None:
    async with sdk_client(proxy_url, mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        tools = await client.list_tools()
        assert {t.name for t in tools.tools} >= {"list_accounts", "create_journal_entry", "delete_journal_entry"}
        read_only = {t.name for t in tools.tools if t.annotations and t.annotations.read_only_hint}
        assert "list_accounts" in read_only and "create_journal_entry" not in read_only

        preview = await client.call_tool("create_journal_entry", ENTRY)  # a write: held for confirmation
        assert not preview.is_error and preview.structured_content["status"] == "confirmation_required"
        token = preview.structured_content["confirmationToken"]
        result = await client.call_tool("create_journal_entry", {**ENTRY, "confirmationToken": token})
        assert not result.is_error
        assert result.structured_content["posted"]["memo"] == "supplies"

        prompts = await client.list_prompts()
        assert "process_incoming_invoice" in {p.name for p in prompts.prompts}
        prompt = await client.get_prompt("process_incoming_invoice", {"vendor": "Acme Paper", "amount": "120 EUR"})
        assert "Acme Paper" in prompt.messages[0].content.text

        resource = await client.read_resource("ledger://acme/chart-of-accounts")
        contents = resource.contents[0]
        assert isinstance(contents, TextResourceContents) and "Bank" in contents.text

    calls = recorder.calls("tools/call")
    assert [c["params"]["name"] for c in calls] == ["create_journal_entry", "create_journal_entry"]
    assert calls[0]["params"]["arguments"] == {**ENTRY, "dry_run": True}  # the preview's dry run (the policy's)
    assert calls[1]["params"]["arguments"] == ENTRY  # the apply: once, after confirmation, without the token
    for received in recorder.received:
        # No token passthrough, and the upstream saw its own Host, not the proxy's.
        assert "authorization" not in received.headers
        assert TOKENS["writer"] not in str(received.headers) and TOKENS["writer"].encode() not in received.body
        assert received.headers["host"] == f"127.0.0.1:{upstream.port}"
        assert received.headers["accept-encoding"] == "identity"
        assert len(received.headers["x-request-id"]) >= 16


async def test_legacy_session_get_stream_and_delete(proxy_url: str, recorder: Recorder) -> None:
    async with sdk_client(proxy_url, "legacy") as client:
        await client.list_tools()
    methods = [r.method for r in recorder.received]
    assert methods.count("GET") >= 1 and methods[-1] == "DELETE"
    session_ids = {r.headers.get("mcp-session-id") for r in recorder.received[1:]}
    assert len(session_ids) == 1 and None not in session_ids  # every request after initialize carries the session
    assert all(r.headers.get("mcp-protocol-version") == "2025-11-25" for r in recorder.received[2:])


async def test_modern_headers_reach_upstream(proxy_url: str, recorder: Recorder) -> None:
    async with sdk_client(proxy_url, "auto") as client:
        await client.call_tool("get_period_status", {"workspaceId": "acme", "period": "2026-10"})
    call = next(r for r in recorder.posts() if r.json()["method"] == "tools/call")
    assert call.headers["mcp-method"] == "tools/call"
    assert call.headers["mcp-name"] == "get_period_status"
    assert call.headers["mcp-protocol-version"] == "2026-07-28"
    assert "mcp-session-id" not in call.headers


@pytest.mark.parametrize("mode", MODES)
async def test_progress_is_not_held_back(mode: str, proxy_url: str, recorder: Recorder) -> None:
    """Progress notifications reach the client while the tool is still running, one by one."""
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(time.monotonic())

    async with sdk_client(proxy_url, mode) as client:
        started = time.monotonic()
        result = await client.call_tool(
            "run_month_end_report",
            {"workspaceId": "acme", "period": "2026-10", "steps": 3, "delay": 0.4},
            progress_callback=on_progress,
        )
        finished = time.monotonic()
    assert not result.is_error
    assert len(seen) == 3
    # The first progress left the upstream after ~0.4 s; had the proxy buffered, it would arrive with the result.
    assert seen[0] - started < 0.8
    assert finished - seen[0] > 0.6
