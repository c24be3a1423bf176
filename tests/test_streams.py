"""Issue 12, points 3 and 4: lists are filtered wherever they travel, answers the proxy cannot check are refused,
and a stream resumes only for the credential and session it was sent to.

A scripted upstream (a small aiohttp app) plays the misbehaving server: it answers with whatever the test says,
lists under any id, on any stream, in any framing. The real SDK server covers replays and resumption.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import AUTH, TOKENS, Recorder, free_port
from tests.rawmcp import ACCEPT, LegacySession, next_event, slow_call

VISIBLE = {"name": "list_accounts", "inputSchema": {"type": "object"}}
HIDDEN = {"name": "hidden_tool", "description": "SECRET-TOOL", "inputSchema": {"type": "object"}}
TOOLS = {"tools": [VISIBLE, HIDDEN]}
RESOURCES = {"resources": [{"uri": "ledger://acme/chart-of-accounts", "name": "coa"},
                           {"uri": "ledger://acme/payroll", "name": "SECRET-RESOURCE"}]}
HEADERS = {**AUTH, "Content-Type": "application/json", "Accept": ACCEPT}


@dataclass
class Script:
    """The scripted upstream: `answer(request, body)` makes each response; every request is kept."""

    answer: Callable[[web.Request, Any], Any] | None = None
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((request.method, dict(request.headers), body))
        assert self.answer is not None
        return await self.answer(request, orjson.loads(body) if body else None)


@pytest.fixture
async def script() -> AsyncIterator[tuple[Script, str]]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/mcp", script.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield script, f"http://127.0.0.1:{port}/mcp"
    await runner.cleanup()


def json_answer(payload: Any, status: int = 200, content_type: str = "application/json") -> Callable:
    async def answer(request: web.Request, body: Any) -> web.Response:
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(status=status, body=raw, headers={"Content-Type": content_type})

    return answer


def sse_answer(*events: bytes, content_type: str = "text/event-stream") -> Callable:
    async def answer(request: web.Request, body: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    return answer


def result(msg_id: Any, payload: dict) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "result": payload}


def data_event(message: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n".encode() if event_id else b""
    return head + b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


async def post(url: str, message: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(message),
                                                          headers=headers or HEADERS) as resp:
        return resp.status, await resp.read()


TOOLS_LIST = {"jsonrpc": "2.0", "id": "7000", "method": "tools/list"}


@pytest.mark.parametrize("framing", ["json", "sse"])
async def test_a_list_under_a_colliding_or_repeated_id_is_filtered(framing: str, start_proxy: Any,
                                                                  script: Any) -> None:
    """The client asked with id "7000"; the upstream answers 7000 (a number), and again "7000" twice. Each is a
    list, so each is filtered: matching ids is not how the proxy finds lists."""
    fake, upstream = script
    answers = [result(7000, TOOLS), result("7000", TOOLS), result("7000", {**TOOLS, **RESOURCES})]
    if framing == "json":
        fake.answer = json_answer(answers)
    else:
        fake.answer = sse_answer(*(data_event(a, str(i)) for i, a in enumerate(answers)))
    url = await start_proxy(upstream)
    status, raw = await post(url, TOOLS_LIST)
    assert status == 200
    assert b"SECRET" not in raw and b"hidden_tool" not in raw
    assert raw.count(b'"list_accounts"') == 3 and raw.count(b"chart-of-accounts") == 1


async def test_a_list_on_a_get_stream_or_in_a_batch_is_filtered(start_proxy: Any, script: Any) -> None:
    """Lists nobody asked for: on the server's GET stream, and inside a batch answering other requests."""
    fake, upstream = script
    url = await start_proxy(upstream)
    fake.answer = sse_answer(data_event([result(1, TOOLS), result("x", RESOURCES)], "1"), data_event(
        {"jsonrpc": "2.0", "id": 2, "result": {"prompts": [], "resourceTemplates": [
            {"uriTemplate": "ledger://{w}/payroll/{m}", "name": "SECRET-TEMPLATE"}]}}, "2"))
    async with aiohttp.ClientSession() as http, http.get(url, headers=HEADERS) as resp:
        assert resp.status == 200
        raw = await resp.read()
    assert b"SECRET" not in raw and b"hidden_tool" not in raw and b'"list_accounts"' in raw
    fake.answer = json_answer([result(1, {"content": [], **TOOLS}), result(2, RESOURCES)])
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_accounts",
                                                                               "arguments": {"workspaceId": "acme"}}},
             {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
    status, raw = await post(url, batch)
    assert status == 200 and b"SECRET" not in raw and b"hidden_tool" not in raw and b"list_accounts" in raw


GZIPPED = gzip.compress(orjson.dumps(result("7000", TOOLS)))


async def gzipped(request: web.Request, body: Any) -> web.Response:
    return web.Response(body=GZIPPED, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (gzipped, 502),  # asked for identity, compressed anyway
        (json_answer(result("7000", TOOLS), content_type="application/x-ndjson"), 502),  # a type it cannot read
        (json_answer(b'{"jsonrpc":"2.0","id":"7000","result":{"tools":[' + orjson.dumps(HIDDEN) + b"]"), 502),
        (json_answer(b"hidden_tool SECRET", status=500, content_type="text/plain"), 502),  # error on a list request
        (json_answer(result("7000", {"tools": {"hidden_tool": HIDDEN}})), 502),  # a list that is not an array
        (json_answer(b'{"jsonrpc":"2.0","id":"7000","result":{"tools":[' + orjson.dumps(HIDDEN)
                     + b']},"result":{"tools":[]}}'), 200),  # duplicate keys: the client gets what was checked
        (sse_answer(data_event(result("7000", TOOLS)), content_type="Text/Event-Stream; charset=UTF-8"), 200),
        (sse_answer(b"data: {not json hidden_tool SECRET\n\n", data_event(result("7000", TOOLS))), 200),
    ],
    ids=["gzip", "content-type", "bad-json", "500-text", "not-array", "duplicate-keys", "sse-spelling", "sse-bad"],
)
async def test_what_the_proxy_cannot_read_is_refused_never_relayed(answer: Callable, status: int,
                                                                   start_proxy: Any, script: Any) -> None:
    fake, upstream = script
    fake.answer = answer
    url = await start_proxy(upstream)
    got, raw = await post(url, TOOLS_LIST)
    assert got == status and b"SECRET" not in raw and b"hidden_tool" not in raw
    if status == 502:
        assert orjson.loads(raw)["error"]["message"] == "upstream answer not understood"
    (_, sent, _), = fake.received
    assert sent["Accept-Encoding"] == "identity"


async def test_a_bad_event_ends_the_stream_there(start_proxy: Any, script: Any) -> None:
    """Mid-stream the status line has gone out: the refusal is the end of the stream, before the bad event."""
    fake, upstream = script
    fake.answer = sse_answer(data_event(result(1, TOOLS), "1"), b"data: not json\n\n", data_event(result(2, TOOLS)))
    url = await start_proxy(upstream)
    async with aiohttp.ClientSession() as http, http.get(url, headers=HEADERS) as resp:
        first, second = await next_event(resp), await next_event(resp)
    assert first is not None and first.data["id"] == 1 and second is None


async def test_error_bodies_of_other_requests_pass_unchanged(start_proxy: Any, script: Any) -> None:
    """2026-07-28 clients probe and fall back on the upstream's own 4xx bodies: those are relayed as they are."""
    fake, upstream = script
    fake.answer = json_answer(b"<html>unsupported protocol version</html>", status=400, content_type="text/html")
    url = await start_proxy(upstream)
    status, raw = await post(url, {"jsonrpc": "2.0", "id": 1, "method": "server/discover"})
    assert (status, raw) == (400, b"<html>unsupported protocol version</html>")


async def test_get_and_post_ask_the_upstream_for_identity(start_proxy: Any, script: Any) -> None:
    fake, upstream = script
    fake.answer = json_answer(result(1, {}))
    url = await start_proxy(upstream)
    headers = {**HEADERS, "Accept-Encoding": "gzip, br"}
    await post(url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers)
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        await resp.read()
    assert [r[1]["Accept-Encoding"] for r in fake.received] == ["identity", "identity"]


async def first_events(resp: aiohttp.ClientResponse, until: Callable[[Any], bool]) -> list[Any]:
    events = []
    while (event := await next_event(resp)) is not None:
        events.append(event)
        if until(event):
            break
    return events


async def test_a_replayed_list_is_filtered_again(proxy_url: str, recorder: Recorder) -> None:
    """A list answer already delivered on a POST stream comes back when the stream is resumed: filtered again.
    (The reader holds mcp:read only: the write tools are hidden from it.)"""
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, proxy_url, token=TOKENS["reader"])
        await session.open()
        async with session.post({"jsonrpc": "2.0", "id": 41, "method": "tools/list"}) as resp:
            events = await first_events(resp, lambda e: bool(e.data) and e.data.get("id") == 41)
        assert "create_journal_entry" not in {t["name"] for t in events[-1].data["result"]["tools"]}
        priming = events[0].field("id")
        async with http.get(proxy_url, headers=session.headers(**{"Last-Event-ID": priming})) as resp:
            assert resp.status == 200
            replay = await first_events(resp, lambda e: bool(e.data) and e.data.get("id") == 41)
    names = {t["name"] for t in replay[-1].data["result"]["tools"]}
    assert "list_accounts" in names and "create_journal_entry" not in names and "lock_period" not in names


async def interrupted(http: aiohttp.ClientSession, url: str, token: str) -> tuple[LegacySession, str]:
    """A slow call whose stream the client drops after the first progress event; returns the last id seen."""
    session = LegacySession(http, url, token=token)
    await session.open()
    async with session.post(slow_call(3, steps=4, delay=0.2)) as resp:
        events = await first_events(resp, lambda e: bool(e.data) and e.data.get("method") == "notifications/progress")
        resp.close()
    return session, [e.field("id") for e in events if e.field("id")][-1]


async def test_a_stream_resumes_only_for_its_credential_and_session(proxy_url: str, recorder: Recorder) -> None:
    async with aiohttp.ClientSession() as http:
        owner, sealed = await interrupted(http, proxy_url, TOKENS["writer"])
        assert not sealed.isdigit()  # the upstream's own counter does not reach clients
        other = LegacySession(http, proxy_url, token=TOKENS["other"])
        await other.open()
        second = LegacySession(http, proxy_url, token=TOKENS["writer"])
        await second.open()
        raw_id = sealed.rpartition(".")[0]
        for session, presented in ((other, sealed), (second, sealed), (owner, "6"), (owner, raw_id),
                                   (owner, sealed + "x"), (owner, "")):
            async with http.get(proxy_url, headers=session.headers(**{"Last-Event-ID": presented})) as resp:
                assert resp.status == 400, presented
                assert (await resp.json())["error"]["code"] == -32600
        gets = [r for r in recorder.received if r.method == "GET"]
        assert gets == []  # none of them reached the upstream
        async with http.get(proxy_url, headers=owner.headers(**{"Last-Event-ID": sealed})) as resp:
            assert resp.status == 200
            events = await first_events(resp, lambda e: bool(e.data) and e.data.get("id") == 3)
        assert events[-1].data["result"]["structuredContent"]["period"] == "2026-10"
    (get,) = [r for r in recorder.received if r.method == "GET"]
    assert get.headers["last-event-id"].isdigit()  # unwrapped: the upstream sees its own id


async def test_the_demo_store_replays_a_session_its_own_events_only(upstream: Any, recorder: Recorder) -> None:
    """Straight at the demo upstream (no proxy): one session presenting another's event id gets nothing of it."""
    async with aiohttp.ClientSession() as http:
        _, event_id = await interrupted(http, upstream.url, TOKENS["writer"])
        stranger = LegacySession(http, upstream.url)
        await stranger.open()
        await asyncio.sleep(1.0)  # the call finishes upstream meanwhile: all its events are stored
        replayed: list[Any] = []
        async with http.get(upstream.url, headers=stranger.headers(**{"Last-Event-ID": event_id})) as resp:
            try:
                while (event := await asyncio.wait_for(next_event(resp), 1.5)) is not None:
                    replayed.append(event.data)
            except TimeoutError:
                pass  # the stream stays open, with nothing of the other session's on it
    assert [data for data in replayed if data] == []
