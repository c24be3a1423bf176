"""The seam the policy steps plug into: guards answer or rewrite messages; rewriters change every response, in JSON
bodies, in SSE streams and on resumed GET streams, told the method when the proxy knows it; upstream watches see
every message the upstream sends. Test steps here stand in for the real ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.guards.pipeline import Answer, Exchange, Pipeline
from proxy.jsonrpc import error
from tests.conftest import AUTH, MODES, Recorder, sdk_client
from tests.rawmcp import LegacySession, interrupted_call_then_resume

DENIED = (("WWW-Authenticate", 'Bearer error="insufficient_scope", scope="journal:write"'),)


async def deny_deletes(exchange: Exchange, message: dict) -> dict | Answer:
    if message.get("method") == "tools/call" and message["params"].get("name") == "delete_journal_entry":
        return Answer(error(message["id"], -32003, "denied by test guard"), http_status=403, headers=DENIED)
    if message.get("method") == "notifications/roots/list_changed":
        return Answer(None)  # swallowed: never reaches the upstream
    return message


async def pin_workspace(exchange: Exchange, message: dict) -> dict:
    if message.get("method") == "tools/call":
        args = message["params"].setdefault("arguments", {})
        args["workspaceId"] = "pinned"
    return message


@dataclass
class OnlyListTools:
    def __call__(self, exchange: Exchange, response: dict, method: str | None) -> dict:
        result = response.get("result")
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            result["tools"] = [t for t in result["tools"] if t["name"].startswith("list_")]
        return response


@dataclass
class MarkCalls:
    def __call__(self, exchange: Exchange, response: dict, method: str | None) -> dict:
        result = response.get("result")
        if isinstance(result, dict) and "content" in result:
            result["_meta"] = {"rewritten-by": "test", "method": method}
        return response


SEEN: list[str] = []


def note_methods(message: dict) -> None:
    SEEN.append(message.get("method", "response"))


PIPELINE = Pipeline(guards=(deny_deletes, pin_workspace), rewriters=(OnlyListTools(), MarkCalls()),
                    upstream_watches=(note_methods,))


@pytest.fixture
async def seam_url(start_proxy: Any, upstream: Any, recorder: Recorder) -> str:
    return await start_proxy(upstream.url, pipeline=PIPELINE)


@pytest.mark.parametrize("mode", MODES)  # legacy answers over SSE, auto (2026-07-28) with JSON
async def test_rewriters_by_method_and_guard_rewrites(mode: str, seam_url: str, recorder: Recorder) -> None:
    async with sdk_client(seam_url, mode) as client:
        tools = await client.list_tools()
        assert {t.name for t in tools.tools} == {"list_accounts", "list_journal_entries", "list_bank_transactions"}
        result = await client.call_tool("list_accounts", {"workspaceId": "acme"})
        assert result.structured_content["workspaceId"] == "pinned"  # the guard's rewrite is what was forwarded
        assert result.meta == {"rewritten-by": "test", "method": "tools/call"}  # matched to the request it answers
        prompts = await client.list_prompts()  # no rewriter for prompts/list: untouched
        assert len(prompts.prompts) == 4
    (call,) = recorder.calls("tools/call")
    assert call["params"]["arguments"] == {"workspaceId": "pinned"}


async def test_guard_answer_single_message(seam_url: str, recorder: Recorder) -> None:
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, seam_url)
        await session.open()
        call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "delete_journal_entry", "arguments": {"workspaceId": "acme", "entry_id": "je-1"}}}
        async with session.post(call) as resp:
            assert resp.status == 403
            assert resp.headers["WWW-Authenticate"] == DENIED[0][1]
            assert await resp.json() == error(9, -32003, "denied by test guard")
        note = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
        async with session.post(note) as resp:
            assert resp.status == 202
    assert recorder.calls("tools/call") == [] and recorder.calls("notifications/roots/list_changed") == []


async def test_guard_answers_inside_a_batch(seam_url: str, recorder: Recorder) -> None:
    """Only the refused element is answered by the guard; in a batch the HTTP status stays 200."""
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_journal_entry"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_journal_entry"}},
        {"jsonrpc": "2.0", "id": 3, "method": 12},
    ]
    async with aiohttp.ClientSession() as http, http.post(
        seam_url, data=orjson.dumps(batch), headers={**AUTH, "Content-Type": "application/json",
                                                     "Accept": "application/json, text/event-stream"}
    ) as resp:
        assert resp.status == 200
        answers = await resp.json()
    assert sorted(a["error"]["code"] for a in answers) == [-32600, -32003, -32003]
    assert recorder.posts() == []


async def test_rewriter_applies_on_a_resumed_stream(seam_url: str, recorder: Recorder) -> None:
    """The call's response arrives on the GET stream after the POST stream dropped: it is still rewritten."""
    async with aiohttp.ClientSession() as http:
        events = await interrupted_call_then_resume(http, seam_url, msg_id=21)
    response = events[-1].data
    # The method is unknown on a GET stream; the rewriter still sees the response.
    assert response["id"] == 21 and response["result"]["_meta"] == {"rewritten-by": "test", "method": None}
    assert SEEN.count("notifications/progress") >= 3  # the hook saw every message of both streams
    # The events before it (progress notifications) came through as they were.
    assert all(e.data["method"] == "notifications/progress" for e in events[:-1] if e.data)


async def test_rewrite_keeps_sse_event_fields(seam_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, seam_url)
        await session.open()
        async with session.post({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}) as resp:
            raw = (await resp.read()).decode()
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b]
    rewritten = next(b for b in blocks if '"tools"' in b)
    lines = rewritten.split("\n")
    assert lines[0].startswith("id: ") and lines[1] == "event: message" and lines[2].startswith("data: {")
    assert len(orjson.loads(lines[2][6:])["result"]["tools"]) == 3
