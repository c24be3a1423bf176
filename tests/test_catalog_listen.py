"""The catalog's own 2026-07-28 `subscriptions/listen` stream (proxy/edge/upstream_tools.py `watch`) against
upstreams that do not keep it open: a FastMCP upstream, which speaks 2026-07-28 but answers listen with
"Method not found", and a small aiohttp upstream that refuses it a few times, then opens one and closes it.

Each attempt that opens no stream waits twice as long as the one before (capped); a stream that opened starts the
waits over; the failure is said once per run of failures, not at every retry. Before, the catalog asked every 5 s
forever, with a log line and a failing upstream request each time."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from proxy.edge import upstream_tools
from proxy.edge.upstream_tools import UpstreamTools, listen_delay
from tests.conftest import TOKENS, sdk_client
from tests.fastmcp_billing import POLICY, billing_upstream  # noqa: F401  (the `billing` fixture)


def test_listen_delay_doubles_from_the_first_to_the_cap_and_starts_over() -> None:
    assert [listen_delay(n, 5.0, 300.0) for n in range(9)] == [5, 5, 10, 20, 40, 80, 160, 300, 300]
    assert listen_delay(10**6, 5.0, 300.0) == 300  # days of failures: still the cap, no overflow
    assert listen_delay(0, 5.0, 300.0) == 5.0  # a stream that opened, then ended: the first wait again


def listens(recorder: Any) -> list[Any]:
    return [r for r in recorder.catalog if r.method == "POST"
            and orjson.loads(r.body).get("method") == "subscriptions/listen"]


async def test_fastmcp_without_listen_is_asked_less_and_less_often_and_it_is_said_once(
        billing: Any, start_proxy: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(upstream_tools, "LISTEN_RETRY", 0.02)
    monkeypatch.setattr(upstream_tools, "LISTEN_RETRY_MAX", 0.64, raising=False)
    billing.recorder.catalog.clear()
    policy = tmp_path / "billing.yaml"
    policy.write_text(POLICY)
    url = await start_proxy(billing.url, policy=str(policy))
    with caplog.at_level(logging.INFO, logger="scopegate.catalog"):
        async with sdk_client(url, "auto", token=TOKENS["writer"]) as client:
            listed = await client.call_tool("list_invoices", {})  # the catalog is fetched, in 2026-07-28
            assert not listed.is_error
            started = time.monotonic()
            await asyncio.sleep(2.5)
    asked = listens(billing.recorder)
    elapsed = time.monotonic() - started
    # 0.02 s, 0.04, 0.08, ... 0.64, 0.64: about 8 in 2.5 s (asked every 0.02 s, it would be about a hundred)
    assert 4 <= len(asked) <= 10, (len(asked), elapsed)
    said = [r for r in caplog.records if r.name == "scopegate.catalog" and "listen" in r.getMessage()
            and r.levelno >= logging.INFO]
    assert len(said) == 1 and said[0].levelno == logging.INFO, [r.getMessage() for r in said]
    assert "subscriptions/listen answered HTTP 404" in said[0].getMessage()


@pytest.fixture
async def flaky_listen() -> AsyncIterator[tuple[str, list[tuple[float, int]]]]:
    """A 2026-07-28 upstream whose listen fails three times, opens (and at once ends) one stream, then fails again.
    Yields its URL and (time, status) for every listen request it got."""
    attempts: list[tuple[float, int]] = []

    async def mcp(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["method"] == "tools/list":
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": []}})
        status = 200 if len(attempts) == 3 else 404
        attempts.append((time.monotonic(), status))
        if status == 404:
            return web.json_response({"jsonrpc": "2.0", "id": body["id"],
                                      "error": {"code": -32601, "message": "Method not found"}}, status=404)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(b": opened\n\n")
        return stream  # and ended

    app = web.Application()
    app.router.add_post("/mcp", mcp)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mcp", attempts  # type: ignore[union-attr]
    await runner.cleanup()


async def test_a_stream_that_opened_starts_the_waits_over(flaky_listen: tuple[str, list[tuple[float, int]]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_tools, "LISTEN_RETRY", 0.1)
    monkeypatch.setattr(upstream_tools, "LISTEN_RETRY_MAX", 10.0, raising=False)
    url, attempts = flaky_listen
    seen: list[Any] = []
    async with aiohttp.ClientSession() as http:
        fetch = UpstreamTools(http, URL(url), [])
        assert await fetch() == [] and fetch.revision == upstream_tools.MODERN
        watcher = asyncio.create_task(fetch.watch(seen.append))
        try:
            async with asyncio.timeout(10):
                while len(attempts) < 6:
                    await asyncio.sleep(0.02)
        finally:
            watcher.cancel()
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(attempts)]
    assert [status for _, status in attempts[:6]] == [404, 404, 404, 200, 404, 404]
    # after failures 1, 2, 3: 0.1, 0.2, 0.4; after the stream that opened: 0.1; after the next failure: 0.1
    for gap, expected in zip(gaps[:5], [0.1, 0.2, 0.4, 0.1, 0.1], strict=True):
        assert expected * 0.9 <= gap < expected + 0.25, gaps
    assert seen.count(upstream_tools.CHANGED) == 2  # opening it and losing it: each a possible missed notice
