"""SSE relaying, resumption, disconnects, upstream failures and the headers that cross the proxy."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import AUTH, MODERN_META, Recorder, free_port, modern_headers, wait_until
from tests.rawmcp import LegacySession, interrupted_call_then_resume, next_event, slow_call


async def test_sse_lines_survive_unchanged(proxy_url: str, upstream: Any, recorder: Recorder) -> None:
    """The proxied stream carries the same lines as a direct one: id:, event:, retry:, data:, in order."""

    async def lines_of(url: str) -> list[str]:
        async with aiohttp.ClientSession() as http:
            session = LegacySession(http, url)
            await session.open()
            async with session.post(slow_call(5, steps=2, delay=0.01)) as resp:
                raw = (await resp.read()).decode()
        return raw.split("\r\n")

    direct, proxied = await lines_of(upstream.url), await lines_of(proxy_url)
    shape = [line.split(":", 1)[0] for line in proxied]
    assert shape == [line.split(":", 1)[0] for line in direct]
    assert "retry: 100" in proxied and "event: message" in proxied and any(x.startswith("id: ") for x in proxied)
    assert [x for x in proxied if x.startswith("data: {")] != []


async def test_resumption_with_last_event_id(proxy_url: str, recorder: Recorder) -> None:
    async with aiohttp.ClientSession() as http:
        events = await interrupted_call_then_resume(http, proxy_url, msg_id=3)
    progress = [e.data["params"]["progress"] for e in events if e.data and "method" in e.data]
    assert progress == [2, 3, 4]  # everything after the last event seen, nothing twice
    assert events[-1].data["result"]["structuredContent"]["period"] == "2026-10"
    gets = [r for r in recorder.received if r.method == "GET"]
    assert gets and gets[-1].headers["last-event-id"]


async def test_client_leaving_closes_the_upstream_stream(proxy_url: str, recorder: Recorder) -> None:
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, proxy_url)
        await session.open()
        # A server-to-client GET stream and a long POST stream, both dropped by the client.
        get = await http.get(proxy_url, headers=session.headers())
        post = await session.post(slow_call(4, steps=40, delay=0.1))
        assert (await next_event(post)) is not None
        assert await wait_until(lambda: recorder.in_flight == 2)
        get.close()
        post.close()
        assert await wait_until(lambda: recorder.in_flight == 0), "the upstream streams stayed open"
        # The proxy is unharmed and still serves the same session.
        async with session.post({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}) as resp:
            assert resp.status == 200
            event = await next_event(resp)
            while event is not None and not (event.data and event.data.get("id") == 5):
                event = await next_event(resp)
            assert event is not None and len(event.data["result"]["tools"]) == 11


async def test_upstream_down_is_a_502_that_names_no_internals(start_proxy: Any) -> None:
    port = free_port()  # nothing listens here
    url = await start_proxy(f"http://127.0.0.1:{port}/mcp")
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
    async with aiohttp.ClientSession() as http:
        for method in ("POST", "GET"):
            async with http.request(method, url, data=body if method == "POST" else None,
                                    headers=modern_headers("tools/list")) as resp:
                text = await resp.text()
                assert resp.status == 502
                answer = orjson.loads(text)
                assert answer["error"] == {"code": -32603, "message": "upstream unavailable",
                                           "data": {"requestId": resp.headers["X-Request-Id"]}}
                assert str(port) not in text and "127.0.0.1" not in text
    from proxy.edge.app import OPS_PORT
    from tests.test_operations import scrape, value

    samples = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    assert value(samples, "scopegate_upstream_errors_total", kind="connect") == 2


@pytest.mark.parametrize(
    ("extra", "status"),
    [({"MCP-Protocol-Version": "1999-01-01"}, 400), ({"Accept": "text/html"}, 406)],
)
async def test_upstream_4xx_passes_through_unchanged(extra: dict, status: int, proxy_url: str, upstream: Any) -> None:
    """Clients rely on the upstream's own 4xx bodies (e.g. to fall back between protocol revisions)."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    headers = {**AUTH, "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **extra}
    answers = []
    async with aiohttp.ClientSession() as http:
        for url in (upstream.url, proxy_url):
            async with http.post(url, data=body, headers=headers) as resp:
                answers.append((resp.status, resp.headers["Content-Type"], await resp.read()))
    assert answers[0] == answers[1]
    assert answers[0][0] == status


async def test_headers_crossing_both_ways(proxy_url: str, recorder: Recorder) -> None:
    recorder.extra_response_headers.extend(
        [
            (b"www-authenticate", b'Bearer resource_metadata="https://x.example/.well-known/oauth-protected-resource"'),
            (b"connection", b"x-upstream-hop"),
            (b"x-upstream-hop", b"1"),
            (b"proxy-authenticate", b"Basic"),
            (b"x-custom", b"kept"),
        ]
    )
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "get_period_status", "arguments": {"workspaceId": "acme", "period": "2026-10"}, "_meta": MODERN_META}})
    client_headers = {
        **modern_headers("tools/call", "get_period_status"),
        "Mcp-Param-Region": "eu",
        "Mcp-Param-Workspace": "acme",  # get_period_status mirrors workspaceId into this header (x-mcp-header)
        "Connection": "keep-alive, x-client-hop",
        "X-Client-Hop": "1",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Cookie": "session=abc",
        "X-Request-Id": "req-123",
        "User-Agent": "test-agent/1",
    }
    async with aiohttp.ClientSession() as http, http.post(proxy_url, data=body, headers=client_headers) as resp:
        assert resp.status == 200
        got = resp.headers
        assert got["WWW-Authenticate"].startswith("Bearer resource_metadata=")
        assert got["X-Custom"] == "kept" and got["Content-Type"].startswith("application/json")
        assert got["X-Request-Id"] == "req-123"
        assert "X-Upstream-Hop" not in got and "Proxy-Authenticate" not in got
        await resp.read()
    (received,) = recorder.posts()
    sent = received.headers
    assert sent["mcp-param-region"] == "eu" and sent["mcp-name"] == "get_period_status"
    assert sent["x-request-id"] == "req-123" and sent["user-agent"] == "test-agent/1"
    for gone in ("x-client-hop", "proxy-authorization", "cookie", "authorization"):
        assert gone not in sent


async def test_many_concurrent_streams(proxy_url: str, recorder: Recorder) -> None:
    """Twenty slow calls at once through one pooled upstream session: all complete, none mixed up."""
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, proxy_url)
        await session.open()

        async def one(i: int) -> int:
            async with session.post(slow_call(100 + i, steps=2, delay=0.05)) as resp:
                while (event := await next_event(resp)) is not None:
                    if event.data and event.data.get("id") == 100 + i:
                        return event.data["id"]
            return -1

        ids = await asyncio.gather(*(one(i) for i in range(20)))
    assert sorted(ids) == list(range(100, 120))
