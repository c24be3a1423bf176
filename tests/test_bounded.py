"""Bounded and fair: the faults of an operator's worst day, injected with real parts. A hanging or stalling upstream,
a client that trickles its body, one credential's flood of streams or calls beside another's reads, a policy
reloaded while a batch is being decided, a policy file caught half-written, an upstream cut off mid-stream."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.edge.app import FORWARDER, OPS_PORT, RELOADER
from proxy.exchange import Exchange
from proxy.jsonrpc import Message
from proxy.store import MemoryStore, StoreUnavailable
from tests.conftest import MODERN_META, POLICIES, TOKENS, Recorder, modern_headers, wait_until
from tests.rawmcp import ACCEPT, LegacySession, next_event

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


class SocketUpstream:
    """A bare TCP server that speaks just enough HTTP to misbehave on purpose; it counts the requests it read."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            await self.behave(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/mcp"

    async def stop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def socket_upstream() -> AsyncIterator[Callable[[Behaviour], Any]]:
    made: list[SocketUpstream] = []

    async def make(behave: Behaviour) -> tuple[SocketUpstream, str]:
        upstream = SocketUpstream(behave)
        made.append(upstream)
        return upstream, await upstream.start()

    yield make
    for upstream in made:
        await upstream.stop()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()  # accepts, reads the request, never answers


def call_body(tool: str = "list_accounts", msg_id: int = 1, **arguments: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {
        "name": tool, "arguments": {"workspaceId": "acme", **arguments}, "_meta": MODERN_META}})


def ping_body(msg_id: int = 1) -> bytes:
    # The misbehaving upstreams below know no tools: a ping passes every guard straight to them.
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "ping"})


async def post(url: str, body: bytes, token: str = TOKENS["writer"], tool: str = "list_accounts",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    # The routing headers say what the body does (scopegate refuses headers that disagree with it).
    message = orjson.loads(body) if body.startswith(b"{") else {}
    method = message.get("method", "tools/call") if isinstance(message, dict) else "tools/call"
    hdrs = {**modern_headers(method, tool if method == "tools/call" else None), "Authorization": f"Bearer {token}",
            **(headers or {})}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=hdrs) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), orjson.loads(raw) if raw else None


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return await resp.text()


def counted(metrics: str, line: str) -> float:
    for row in metrics.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


# --- bounded time ------------------------------------------------------------------------------------------------

async def test_an_upstream_that_never_answers_gets_504_and_readyz_notices(start_proxy: Any,
                                                                         socket_upstream: Any) -> None:
    upstream, url = await socket_upstream(hang)
    proxy = await start_proxy(url, response_timeout=0.3)
    status, _, body = await post(proxy, ping_body())
    assert status == 504 and body["error"]["code"] == -32001
    assert "upstream did not answer within 0.3 s" in body["error"]["message"]
    assert upstream.requests == 1
    port = start_proxy.runners[-1].app[OPS_PORT]
    assert counted(await scrape(port), 'scopegate_upstream_errors_total{kind="timeout"}') == 1
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        ready = await resp.json()
        # It accepts connections, so only a real request shows it is not answering.
        assert resp.status == 503 and ready["checks"]["upstream"] == "upstream does not answer within 1 s"


async def stall_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                 b'{"jsonrpc":"2.0","id":1,"res')
    await writer.drain()
    await asyncio.Event().wait()


async def cut_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                 b'{"jsonrpc":"2.0","id":1,"res')
    await writer.drain()
    writer.transport.abort()  # as when the upstream process dies


async def test_a_json_body_that_stalls_gets_504_one_cut_short_502(start_proxy: Any, socket_upstream: Any) -> None:
    _, stalling = await socket_upstream(stall_json)
    proxy = await start_proxy(stalling, read_timeout=0.3)
    status, _, body = await post(proxy, ping_body())
    assert status == 504 and "stopped sending its answer for 0.3 s" in body["error"]["message"]
    port = start_proxy.runners[-1].app[OPS_PORT]
    assert counted(await scrape(port), 'scopegate_upstream_errors_total{kind="stall"}') == 1

    _, cutting = await socket_upstream(cut_json)
    proxy = await start_proxy(cutting)
    status, _, body = await post(proxy, ping_body())
    assert status == 502 and body["error"]["message"] == "upstream failed"  # never the half body as if whole


async def test_a_client_that_trickles_its_body_gets_408(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    proxy = await start_proxy(upstream.url, body_timeout=0.3)
    port = int(proxy.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = call_body()
    writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Accept: " + ACCEPT.encode() + b"\r\nAuthorization: Bearer " + TOKENS["writer"].encode() +
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
    await writer.drain()  # ... and the rest never comes
    answer = b""
    async with asyncio.timeout(10):
        while b"}" not in answer and (chunk := await reader.read(4096)):
            answer += chunk
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 0.3 s" in answer
    assert recorder.posts() == []
    assert counted(await scrape(start_proxy.runners[-1].app[OPS_PORT]),
                   'scopegate_limited_total{limit="body_timeout"}') == 1


# --- fair shares ---------------------------------------------------------------------------------------------------

async def test_one_credentials_streams_are_capped_and_others_are_unaffected(start_proxy: Any, upstream: Any,
                                                                            recorder: Recorder) -> None:
    """A flood of GET streams from one credential: the first `cap` open, the rest get 429 at once; another
    credential still opens its stream and makes its calls."""
    cap = 3
    proxy = await start_proxy(upstream.url, max_streams_per_credential=cap)
    async with aiohttp.ClientSession() as http:
        sessions = [LegacySession(http, proxy) for _ in range(cap + 1)]
        for s in sessions:
            await s.open()
        held = [await http.get(proxy, headers=s.headers(Accept="text/event-stream")) for s in sessions[:cap]]
        assert [r.status for r in held] == [200] * cap
        flood = await asyncio.gather(*(http.get(proxy, headers=sessions[cap].headers(Accept="text/event-stream"))
                                       for _ in range(50)))
        assert {r.status for r in flood} == {429}
        assert all(r.headers["Retry-After"] == "1" for r in flood)
        refusal = await flood[0].json()
        assert refusal["error"]["message"] == f"too many open streams for this credential (limit {cap}); retry shortly"
        for r in flood:
            r.release()

        other = LegacySession(http, proxy, TOKENS["other"])
        await other.open()
        async with http.get(proxy, headers=other.headers(Accept="text/event-stream")) as theirs:
            assert theirs.status == 200
            status, _, body = await post(proxy, call_body(), token=TOKENS["other"])
            assert status == 200 and body["result"]["isError"] is False
        for r in held:
            r.close()
    metrics = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    assert counted(metrics, 'scopegate_limited_total{limit="streams"}') == 50


async def test_streams_and_calls_have_separate_upstream_connections(start_proxy: Any, upstream: Any,
                                                                    recorder: Recorder) -> None:
    """The stream pool full of long-lived streams: calls still get upstream connections of their own."""
    proxy = await start_proxy(upstream.url, stream_connections=2, connect_timeout=1.0)
    async with aiohttp.ClientSession() as http:
        sessions = [LegacySession(http, proxy) for _ in range(3)]
        for s in sessions:
            await s.open()
        held = [await http.get(proxy, headers=s.headers(Accept="text/event-stream")) for s in sessions[:2]]
        assert [r.status for r in held] == [200, 200]
        # A third stream finds no free stream connection: refused once the connect timeout passes, not queued forever
        async with http.get(proxy, headers=sessions[2].headers(Accept="text/event-stream")) as third:
            assert third.status == 502
        for token in ("writer", "reader", "other"):
            status, _, body = await post(proxy, call_body(), token=TOKENS[token])
            assert status == 200 and body["result"]["isError"] is False
        for r in held:
            r.close()


class Gate:
    """An upstream that answers each JSON-RPC call only when released."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.open.wait()
        body = b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()


async def test_one_credentials_slow_calls_are_capped_and_others_get_through(start_proxy: Any,
                                                                            socket_upstream: Any) -> None:
    gate = Gate()
    upstream, url = await socket_upstream(gate)
    cap = 2
    proxy = await start_proxy(url, max_calls_per_credential=cap)
    slow = [asyncio.create_task(post(proxy, ping_body())) for _ in range(cap)]
    assert await wait_until(lambda: upstream.requests == cap)
    status, headers, body = await post(proxy, ping_body())
    assert status == 429 and headers["Retry-After"] == "1"
    assert body["error"]["message"] == f"too many requests in flight for this credential (limit {cap}); retry shortly"
    theirs = asyncio.create_task(post(proxy, ping_body(), token=TOKENS["other"]))
    assert await wait_until(lambda: upstream.requests == cap + 1)  # the other credential's call went upstream
    gate.open.set()
    assert [r[0] for r in await asyncio.gather(*slow, theirs)] == [200] * (cap + 1)
    assert upstream.requests == cap + 1  # the refused call never reached the upstream
    metrics = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    assert counted(metrics, 'scopegate_limited_total{limit="calls"}') == 1


VENDOR = {"workspaceId": "acme", "name": "Paper Co", "iban": "DE02120300000000202051"}


async def preview(url: str, token: str, n: int) -> dict:
    status, _, body = await post(url, call_body("create_vendor", n, **{**VENDOR, "name": f"v{n}"}), token=token,
                                 tool="create_vendor")
    assert status == 200
    return body["result"]


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_pending_previews_are_capped_per_credential(store: str, start_proxy: Any, upstream: Any,
                                                          recorder: Recorder, tmp_path_factory: Any) -> None:
    settings: dict[str, Any] = {"max_pending_previews": 3}
    server = None
    if store == "redis":
        from tests.conftest import RedisServer

        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        settings["redis_url"] = server.url
    try:
        url = await start_proxy(upstream.url, **settings)
        previews = [await preview(url, TOKENS["writer"], n) for n in range(3)]
        assert all(p["structuredContent"]["status"] == "confirmation_required" for p in previews)
        refused = await preview(url, TOKENS["writer"], 9)
        assert refused["isError"] is True
        assert refused["content"][0]["text"].startswith("too many unconfirmed previews for this credential (limit 3)")
        assert (await preview(url, TOKENS["other"], 1))["structuredContent"]["status"] == "confirmation_required"
        # Confirming one frees its slot.
        token = previews[0]["structuredContent"]["confirmationToken"]
        status, _, body = await post(url, call_body("create_vendor", 1, **{**VENDOR, "name": "v0",
                                                                          "confirmationToken": token}),
                                     tool="create_vendor")
        assert status == 200 and body["result"]["isError"] is False
        assert (await preview(url, TOKENS["writer"], 9))["structuredContent"]["status"] == "confirmation_required"
        metrics = await scrape(start_proxy.runners[-1].app[OPS_PORT])
        assert counted(metrics, 'scopegate_confirmations_total{outcome="refused",reason="pending_limit"}') == 1
    finally:
        if server is not None:
            server.stop()


async def test_a_flood_in_the_memory_store_never_evicts_a_live_key() -> None:
    store = MemoryStore(limit=10)
    await store.set("scopegate:session:abc", "pat:alice", ttl=3600)
    await store.set("scopegate:preview:bob", "bob's pending write", ttl=3600)
    refused = 0
    for n in range(1000):  # someone else's flood of previews, and of sessions
        for kind in ("preview", "session"):
            try:
                await store.set(f"scopegate:{kind}:flood{n}", "x", ttl=3600)
            except StoreUnavailable:
                refused += 1
    assert await store.get("scopegate:session:abc") == "pat:alice"
    assert await store.take("scopegate:preview:bob") == "bob's pending write"
    assert refused == 2 * 1000 - 2 * 9  # each kind took what room it had, then refused: never evicted
    await store.set("scopegate:pat:revoked:x", "1")  # another kind is not crowded out
    assert await store.exists("scopegate:pat:revoked:x")


async def test_an_expired_key_makes_room() -> None:
    store = MemoryStore(limit=2)
    await store.set("scopegate:preview:a", "1", ttl=3600)
    store._spaces["scopegate:preview"]["scopegate:preview:a"] = ("1", 0.0)  # as if its hour had passed
    await store.set("scopegate:preview:b", "2", ttl=3600)
    await store.set("scopegate:preview:c", "3", ttl=3600)
    assert not await store.exists("scopegate:preview:a") and await store.exists("scopegate:preview:c")


# --- one request, one policy ---------------------------------------------------------------------------------------

async def test_a_reload_racing_a_batch_does_not_split_its_decisions(start_proxy: Any, upstream: Any,
                                                                    recorder: Recorder, tmp_path: Path) -> None:
    """A guard awaits between the batch's two messages; the policy file is swapped and reloaded right then. The
    whole batch is decided by the policy it was admitted under."""
    path = tmp_path / "policy.yaml"
    original = (POLICIES / "pat-workspaces.yaml").read_text()
    path.write_text(original)
    url = await start_proxy(upstream.url, policy=str(path))
    app = start_proxy.runners[-1].app
    forwarder, reloader = app[FORWARDER], app[RELOADER]
    at_second, resume = asyncio.Event(), asyncio.Event()

    async def awaiting_guard(exchange: Exchange, message: Message) -> Message:
        if message.get("id") == 2:
            at_second.set()
            await resume.wait()
        return message

    forwarder.pipeline = dataclasses.replace(forwarder.pipeline,
                                             guards=(awaiting_guard, *forwarder.pipeline.guards))
    batch = orjson.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_journal_entries",
                                                                        "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_accounts", "arguments": {}}},
    ])
    headers = {"Authorization": f"Bearer {TOKENS['reader']}", "Content-Type": "application/json",
               "Accept": ACCEPT}
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, url, TOKENS["reader"])
        await session.open()
        task = asyncio.create_task(http.post(url, data=batch, headers={**headers,
                                                                        "Mcp-Session-Id": session.session_id,
                                                                        "MCP-Protocol-Version": "2025-03-26"}))
        async with asyncio.timeout(10):
            await at_second.wait()
        path.write_text(original.replace("{match: list_accounts, scopes: [mcp:read]",
                                         "{match: list_accounts, scopes: [mcp:write]"))
        assert reloader.reload()  # the new policy takes list_accounts away from the reader
        resume.set()
        async with await task as resp:
            await resp.read()  # (the SDK upstream itself refuses batches: what matters is what the proxy let through)
    (forwarded,) = [r.json() for r in recorder.posts() if isinstance(r.json(), list)]
    # Message 2 was decided by the policy the batch came in under, like message 1: both allowed, both forwarded.
    assert [m["params"]["name"] for m in forwarded] == ["list_journal_entries", "list_accounts"]
    # The next request is decided by the new policy.
    status, _, _ = await post(url, call_body("list_accounts"), token=TOKENS["reader"])
    assert status == 403


async def test_a_half_written_policy_file_is_not_loaded(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    original = (POLICIES / "pat-workspaces.yaml").read_text()
    path.write_text(original)
    await start_proxy(upstream.url, policy=str(path))
    reloader = start_proxy.runners[-1].app[RELOADER]
    full = original.replace("{match: list_accounts, scopes: [mcp:read]", "{match: list_accounts, scopes: [mcp:write]")
    half = full[: full.index("  - {match: create_journal_entry")]  # valid YAML, with every write rule missing
    path.write_text(half)
    polling = asyncio.create_task(reloader.poll(settle=0.2))
    await asyncio.sleep(0)  # the poll has seen the change and waits for the file to settle ...
    path.write_text(full)  # ... while the writer finishes
    assert await polling is False
    assert reloader.live.rules.find("tool", "create_journal_entry") is not None  # the half never came into force
    assert reloader.results == {"success": 0, "failure": 0}
    assert await reloader.poll(settle=0.05) is True  # settled: loaded whole
    assert reloader.live.rules.find("tool", "list_accounts")[1].scopes == ("mcp:write",)


# --- honest endings ------------------------------------------------------------------------------------------------

async def cut_sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    event = (b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress",'
             b'"params":{"progressToken":"p","progress":1}}\n\n')
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" +
                 f"{len(event):x}\r\n".encode() + event + b"\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()  # killed mid-stream: no last chunk, no response


async def test_an_upstream_stream_cut_mid_way_ends_with_an_error_for_the_waiting_request(
        start_proxy: Any, socket_upstream: Any) -> None:
    _, url = await socket_upstream(cut_sse)
    proxy = await start_proxy(url)
    headers = {**modern_headers("ping")}  # the routing header says what the body does
    async with aiohttp.ClientSession() as http, http.post(proxy, data=ping_body(7), headers=headers) as resp:
        assert resp.status == 200
        events = []
        while (event := await next_event(resp)) is not None:
            events.append(event.data)
    assert events[0]["method"] == "notifications/progress"  # what came before the cut came through
    assert events[1] == {"jsonrpc": "2.0", "id": 7, "error": {
        "code": -32603, "message": "upstream stream ended before the response",
        "data": {"requestId": events[1]["error"]["data"]["requestId"]}}}
    metrics = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    assert counted(metrics, 'scopegate_upstream_errors_total{kind="cut"}') == 1


async def test_a_get_stream_cut_mid_way_is_cut_for_the_client_too(start_proxy: Any, socket_upstream: Any) -> None:
    _, url = await socket_upstream(cut_sse)
    proxy = await start_proxy(url)
    headers = {"Authorization": f"Bearer {TOKENS['writer']}", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as http, http.get(proxy, headers=headers) as resp:
        assert resp.status == 200
        assert (await next_event(resp)).data["method"] == "notifications/progress"
        with pytest.raises(aiohttp.ClientPayloadError):  # not a clean end of stream: the client can tell
            await resp.content.read()


# --- Redis trouble -----------------------------------------------------------------------------------------------

async def eventually(probe: Callable[[], Any], seconds: float = 10.0) -> Any:
    """The first answer `probe` gives without StoreUnavailable, retried until `seconds` pass."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await probe()
        except StoreUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_hanging_redis_costs_one_budget_then_answers_at_once(redis_server: Any) -> None:
    """Redis frozen (SIGSTOP): the first operation waits out its budget and opens the circuit; every other answers
    'unavailable' at once instead of waiting too. Thawed, a probe finds it again."""
    from proxy.store import RedisStore

    failures, short_circuits = [], []
    store = RedisStore(redis_server.url, lambda: failures.append(1), breaker_seconds=2.0,
                       on_short_circuit=lambda: short_circuits.append(1))
    try:
        await store.set("scopegate:session:k", "pat:alice", ttl=60)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            for _ in range(20):
                with pytest.raises(StoreUnavailable):
                    await store.get("scopegate:session:k")
            assert len(failures) == 1 and len(short_circuits) == 19
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert await eventually(lambda: store.get("scopegate:session:k")) == "pat:alice"
        assert len(failures) == 1  # recovered through one probe, not a stampede of retries
    finally:
        await store.close()


async def test_a_killed_redis_opens_the_circuit_and_a_restarted_one_forgets_sessions(
        start_proxy: Any, upstream: Any, recorder: Recorder, redis_server: Any) -> None:
    """Killed: fast refusals. Restarted without persistence: the binding is gone, so the session gets 404 (safe;
    the README recommends AOF where sessions must survive a Redis restart)."""
    url = await start_proxy(upstream.url, redis_url=redis_server.url, redis_breaker_seconds=0.5)
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, url)
        await session.open()
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        async with session.post(ping) as resp:
            assert resp.status == 200
        redis_server.stop()
        redis_server.start()
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # while the circuit is open, the binding confirmed moments ago still holds (or 503)
            async with session.post(ping) as resp:
                status, body = resp.status, await resp.read()
            if status == 404 or asyncio.get_running_loop().time() > deadline:
                break
            assert status in (200, 503)
            await asyncio.sleep(0.1)
        assert status == 404 and orjson.loads(body)["error"]["message"] == "Session not found"


def test_the_session_binding_cache_keeps_nothing_past_its_window() -> None:
    """The local memory of confirmed bindings (used while Redis is away) holds only what it may still use."""
    import time

    from proxy.guards.session_binding import STALE_OK_SECONDS, SessionBinding

    binding = SessionBinding(MemoryStore())
    binding._remember("old", "pat:alice")
    binding._confirmed["old"] = ("pat:alice", time.monotonic() - STALE_OK_SECONDS - 1)
    binding._remember("new", "pat:bob")
    assert list(binding._confirmed) == ["new"]


async def test_answers_nobody_waits_for_expire_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A late approval answer (its waiter gave up or its client went away) is kept as long as Redis would keep it
    (the push's ttl), then dropped: a flood of them cannot grow the memory store, and a full store refuses."""
    import time
    from types import SimpleNamespace

    clock = SimpleNamespace(monotonic=lambda: now, time=time.time)
    now = 1000.0
    monkeypatch.setattr("proxy.store.time", clock)
    store = MemoryStore(limit=100)
    await store.push("scopegate:approval-answer:early", "yes", ttl=60)
    assert await store.pop_wait("scopegate:approval-answer:early", 0.01) == "yes"  # an answer before its waiter
    for n in range(1000):  # answers to questions whose waiters are gone, one a second
        await store.push(f"scopegate:approval-answer:late{n}", "yes", ttl=60)
        now += 1.0
    assert len(store._lists) <= 62  # the last minute's, nothing older
    assert await store.pop_wait("scopegate:approval-answer:late0", 0.01) is None
    with pytest.raises(StoreUnavailable):  # within one second: the bound holds before any expiry
        for n in range(200):
            await store.push(f"scopegate:approval-answer:burst{n}", "yes", ttl=60)


async def test_the_last_used_stamps_remember_a_bounded_number_of_credentials() -> None:
    """One entry per credential that ever authenticated (OAuth grants come and go): the oldest is forgotten first."""
    from proxy.durable import SqliteState
    from proxy.identity.authenticate import LAST_USED_KEEP, Authenticate, Challenge
    from proxy.identity.lifecycle import Tree

    auth = Authenticate(None, None, Tree(SqliteState(None)), Challenge(None, ()))
    for n in range(LAST_USED_KEEP + 100):
        auth._stamp(f"sgo_grant{n}")
    await asyncio.sleep(0.05)  # let the background writes run
    assert len(auth._last_used) == LAST_USED_KEEP
    assert f"sgo_grant{LAST_USED_KEEP + 99}" in auth._last_used and "sgo_grant0" not in auth._last_used
    assert (await auth.tree.last_used([f"sgo_grant{LAST_USED_KEEP + 99}"])) != {}
