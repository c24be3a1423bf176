"""The request path's upstream client (proxy/edge/upstream_http.py) attacked through the whole proxy: a hostile
upstream (raw sockets that send exactly the bytes a test gives them, on keep-alive connections the proxy reuses) and
hostile or slow clients. tests/test_upstream_http.py attacks the client alone; here what must hold is what a caller
sees: an answer meant for one request (one credential) never reaches another, broken answers are 502s and leave
nothing behind, connections the upstream closes while idle cost no caller an error where one can be avoided, a slow
reader pauses the upstream end to end, and headers cross byte-exact (or not at all).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
import uvicorn
from yarl import URL

from proxy.edge import upstream_http
from proxy.edge.app import FORWARDER
from proxy.edge.forward import CUT_SHORT
from tests.conftest import TOKENS, kernel_buffers, modern_headers, wait_until

# (request head and body, number of the request on its connection) -> bytes to send, or a coroutine that answers
Reply = Callable[["Request", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Request:
    head: bytes
    body: bytes
    connection: int  # which connection it came on (1, 2, ...)
    number: int  # its place on that connection (0 first)

    @property
    def msg_id(self) -> Any:
        return orjson.loads(self.body).get("id") if self.body else None

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def pong(msg_id: Any, extra: bytes = b"", headers: bytes = b"") -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {}})
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + headers
            + b"Content-Length: %d\r\n\r\n" % len(body) + body + extra)


def evil(msg_id: Any) -> bytes:
    """A whole answer meant to be taken for the next request's: `evil` in its result."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"evil": True}})
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@dataclass
class RawUpstream:
    """A keep-alive HTTP/1.1 server that answers each request with `reply(request, writer)`; it keeps every request
    it read. The proxy's own catalog fetches are answered with an empty tool list and not kept."""

    reply: Reply
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    idle_close: float | None = None  # close a connection idle this long (as uvicorn does after 5 s)
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, number = self.connections, 0
        self.writers.append(writer)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_close):
                        head = await reader.readuntil(b"\r\n\r\n")
                except TimeoutError:
                    break
                request = Request(head, b"", connection, number)
                length = int(request.header(b"content-length") or 0)
                request.body = await reader.readexactly(length)
                number += 1
                if request.header(b"x-request-id") == b"scopegate-catalog":
                    writer.write(catalog(request.msg_id))
                    continue
                self.requests.append(request)
                await self.reply(request, writer)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/mcp"

    def stop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()


def catalog(msg_id: Any) -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"tools": []}})
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., Awaitable[tuple[RawUpstream, str]]]]:
    made: list[RawUpstream] = []

    async def make(reply: Reply, **kw: Any) -> tuple[RawUpstream, str]:
        up = RawUpstream(reply, **kw)
        made.append(up)
        return up, await up.start()

    yield make
    for up in made:
        up.stop()


def answering(make: Callable[[Request], bytes | None]) -> Reply:
    """A reply from bytes: `make(request)`; None closes the connection without an answer."""
    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        data = make(request)
        if data is None:
            writer.close()
            return
        writer.write(data)
        await writer.drain()

    return reply


def ping(msg_id: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "ping"})


async def call(http: aiohttp.ClientSession, url: str, msg_id: int, token: str = TOKENS["writer"],
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    hdrs = {**modern_headers("ping"), "Authorization": f"Bearer {token}", **(headers or {})}
    async with http.post(url, data=ping(msg_id), headers=hdrs) as resp:
        return resp.status, await resp.read()


# --- one answer, one request -------------------------------------------------------------------------------------

SMUGGLING = {
    # the answer, then a whole second answer nobody asked for (for the next request's id)
    "two-answers": lambda n: pong(n) + evil(n + 1),
    # both framings: a parser that picks Content-Length leaves the chunked bytes for the next request
    "cl-and-te": lambda n: (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n"
                            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(evil(n + 1)), evil(n + 1))),
    # a 204 may have no body: what follows it is a second answer
    "204-with-body": lambda n: b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(evil(n + 1))
                               + evil(n + 1),
    "304-with-body": lambda n: b"HTTP/1.1 304 Not Modified\r\n\r\n" + evil(n + 1),
    # bare LF line ends, obs-fold: parsers that disagree on where a header ends disagree on where the body ends
    "bare-lf": lambda n: pong(n).replace(b"\r\n", b"\n") + evil(n + 1),
    "obs-fold": lambda n: pong(n, headers=b"X-Folded: a\r\n Content-Length: 0\r\n") + evil(n + 1),
    "chunk-size-overflow": lambda n: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n1000000000000000a\r\n" + evil(n + 1),
    "trailer-with-length": lambda n: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nContent-Length: 0\r\n\r\n"
                                     + evil(n + 1),
    "interim-then-two": lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + pong(n) + evil(n + 1),
    "http10-keepalive": lambda n: pong(n).replace(b"HTTP/1.1", b"HTTP/1.0", 1) + evil(n + 1),
    "connection-close": lambda n: pong(n, headers=b"Connection: close\r\n") + evil(n + 1),
    "late": lambda n: pong(n) + LATER + evil(n + 1),  # the second answer comes once the connection is idle
}
LATER = b"<later>"


def smuggler(attack: str) -> Reply:
    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.msg_id != 1:
            writer.write(pong(request.msg_id))
            return
        now, _, later = SMUGGLING[attack](request.msg_id).partition(LATER)
        writer.write(now)
        if later:
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(later)

    return reply


@pytest.mark.parametrize("attack", list(SMUGGLING))
async def test_an_answer_meant_for_the_next_request_never_reaches_it(
        attack: str, start_proxy: Any, raw_upstream: Any) -> None:
    """The first answer on a connection carries a second one (through any framing trick); the next request, from
    another credential, must get its own answer from the upstream, never the one that was waiting on the wire."""
    up, url = await raw_upstream(smuggler(attack))
    proxy = await start_proxy(url)
    async with aiohttp.ClientSession() as http:
        first_status, first = await call(http, proxy, 1)
        assert b"evil" not in first
        await asyncio.sleep(0.05)  # whatever was left on the wire has arrived
        for msg_id in (2, 3, 4):
            status, body = await call(http, proxy, msg_id, token=TOKENS["other"])
            assert (status, orjson.loads(body)) == (200, {"jsonrpc": "2.0", "id": msg_id, "result": {}})
    assert [r.msg_id for r in up.requests] == [1, 2, 3, 4]  # each asked the upstream itself
    assert first_status in (200, 204, 304, 502)  # its own answer, or refused as broken


# --- headers -----------------------------------------------------------------------------------------------------

async def raw_call(proxy: str, head_lines: bytes, body: bytes) -> bytes:
    """One request written byte for byte (header values aiohttp's client would not send), the whole answer back."""
    url = URL(proxy)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\nContent-Length: %d\r\n"
                 % (url.path.encode(), url.host.encode(), url.port, len(body)) + head_lines + b"\r\n" + body)
    async with asyncio.timeout(5):
        answer = await reader.read(-1)
    writer.close()
    return answer


UTF8_AND_NOT = b"caf\xc3\xa9 caf\xe9"  # valid UTF-8, then a Latin-1 byte that is not


async def test_headers_reach_the_upstream_byte_exact_and_only_the_ones_that_may(start_proxy: Any,
                                                                               raw_upstream: Any) -> None:
    up, url = await raw_upstream(answering(lambda r: pong(r.msg_id, headers=(
        b"X-Back: caf\xc3\xa9\r\nMcp-Session-Id: s-1\r\nKeep-Alive: timeout=5\r\nConnection: X-Hop\r\n"
        b"X-Hop: 1\r\nTrailer: X-T\r\nSet-Cookie: a=b\r\n"))))
    proxy = await start_proxy(url, env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": "server-side-42"})
    head = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in modern_headers("ping").items()) \
        + b"X-Custom: " + UTF8_AND_NOT + b"\r\nX-Request-Id: rid-1\r\nCookie: c=d\r\nX-Forwarded-For: 10.0.0.1\r\n" \
        + b"Keep-Alive: timeout=99\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n"
    answer = await raw_call(proxy, head, ping(1))
    sent = up.requests[0].head
    port = URL(url).port
    assert sent.startswith(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port)
    assert sent.lower().count(b"\r\nhost:") == 1
    assert b"X-Custom: " + UTF8_AND_NOT + b"\r\n" in sent  # byte for byte, the Latin-1 byte too
    assert b"X-Request-Id: rid-1\r\n" in sent and b"x-app-token: server-side-42\r\n" in sent.lower()
    for gone in (b"authorization", b"bearer", b"cookie", b"x-forwarded-for", b"keep-alive", b"te:",
                 b"connection", b"proxy-authorization"):
        assert gone not in sent.lower(), gone
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    got = rest.split(b"\r\n\r\n")[0].lower()
    assert b"x-back: caf\xc3\xa9\r\n" in got and b"mcp-session-id: s-1\r\n" in got
    for gone in (b"keep-alive", b"x-hop", b"trailer", b"set-cookie"):
        assert gone not in got, gone


# --- connections the upstream closes -----------------------------------------------------------------------------

SSE_DONE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n")
NOTE = b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}\n\n'


def closed_when_reused(answer: Callable[[Request], bytes]) -> Reply:
    """Every connection carries one answer; a second request on it is met by the close (an upstream closing an idle
    connection just as the proxy reused it: the race keep-alive timeouts lose now and then, here every time)."""
    return answering(lambda r: None if r.number else answer(r))


async def test_a_reused_connection_closed_under_an_idempotent_request_is_retried(start_proxy: Any,
                                                                                raw_upstream: Any) -> None:
    """GET and DELETE are sent again on a new connection when a reused one closes before any answer came (as
    aiohttp's client did); without it one request in 20-40 across the upstream's keep-alive timeout was a 502."""
    up, url = await raw_upstream(closed_when_reused(
        lambda r: SSE_DONE % (len(NOTE), NOTE) if r.head.startswith(b"GET") else b"HTTP/1.1 204 No Content\r\n\r\n"))
    proxy = await start_proxy(url)
    auth = {"Authorization": f"Bearer {TOKENS['writer']}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(proxy, headers={**auth, "Accept": "text/event-stream"}) as resp:
                assert resp.status == 200 and b"notifications/message" in await resp.read()
        for _ in range(3):
            async with http.delete(proxy, headers=auth) as resp:
                assert resp.status == 204
    methods = [r.head.split(b" ")[0] for r in up.requests]
    assert methods == [b"GET"] + [b"GET", b"GET"] * 2 + [b"DELETE"] + [b"DELETE", b"DELETE"] * 2


async def test_a_post_is_never_sent_twice(start_proxy: Any, raw_upstream: Any) -> None:
    """A call may have been carried out when its connection broke (a write): it is refused, never replayed."""
    up, url = await raw_upstream(closed_when_reused(lambda r: pong(r.msg_id)))
    proxy = await start_proxy(url)
    async with aiohttp.ClientSession() as http:
        assert (await call(http, proxy, 1))[0] == 200
        assert (await call(http, proxy, 2))[0] == 502
        assert (await call(http, proxy, 3))[0] == 200  # and the next one is fine
    assert [r.msg_id for r in up.requests] == [1, 2, 3]


async def test_an_idle_connection_is_not_reused_past_the_upstreams_keep_alive(
        start_proxy: Any, raw_upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool lets an idle connection go before the usual upstreams close it (uvicorn and Node: 5 s), so a call
    never races that close (scaled down here: the pool's 4 s to 0.2 s)."""
    assert uvicorn.Config(app=None).timeout_keep_alive > upstream_http.IDLE_SECONDS
    monkeypatch.setattr(upstream_http, "IDLE_SECONDS", 0.2)
    up, url = await raw_upstream(answering(lambda r: pong(r.msg_id)))
    proxy = await start_proxy(url)
    async with aiohttp.ClientSession() as http:
        assert (await call(http, proxy, 1))[0] == 200
        assert (await call(http, proxy, 2))[0] == 200
        connections = up.connections
        await asyncio.sleep(0.3)
        assert (await call(http, proxy, 3))[0] == 200
    assert up.connections == connections + 1


# --- limits ------------------------------------------------------------------------------------------------------

def delayed(seconds: float, gauge: dict[str, int]) -> Reply:
    """Answers each ping after `seconds`; `gauge` keeps how many were in the upstream at once, at most."""
    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        gauge["now"] = gauge.get("now", 0) + 1
        gauge["most"] = max(gauge.get("most", 0), gauge["now"])
        try:
            await asyncio.sleep(seconds)
        finally:
            gauge["now"] -= 1
        writer.write(pong(request.msg_id))
        await writer.drain()

    return reply


async def test_a_full_pool_answers_502_within_the_connect_timeout_and_recovers(start_proxy: Any,
                                                                               raw_upstream: Any) -> None:
    held = asyncio.Event()

    async def hold(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.msg_id < 10:
            await held.wait()
        writer.write(pong(request.msg_id))
        await writer.drain()

    up, url = await raw_upstream(hold)
    proxy = await start_proxy(url, call_connections=2, connect_timeout=0.5)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        busy = [asyncio.create_task(call(http, proxy, i)) for i in (1, 2)]
        assert await wait_until(lambda: len(up.requests) == 2)
        started = loop.time()
        status, body = await call(http, proxy, 3, token=TOKENS["other"])  # another credential: same pool
        assert status == 502 and b"upstream unavailable" in body
        assert 0.4 < loop.time() - started < 2.0
        held.set()
        assert [status for status, _ in await asyncio.gather(*busy)] == [200, 200]
        assert [(await call(http, proxy, 10 + i))[0] for i in range(3)] == [200] * 3  # recovered
    assert [r.msg_id for r in up.requests] == [1, 2, 10, 11, 12]  # the refused call never reached the upstream
    assert up.connections == 2


async def test_a_thousand_concurrent_calls_keep_every_budget(start_proxy: Any, raw_upstream: Any) -> None:
    """1,000 calls at once from two credentials, through a pool of 16 upstream connections: each credential has at
    most its budget in flight (the rest 429 at once), the upstream sees at most the pool, and nothing fails."""
    gauge: dict[str, int] = {}
    up, url = await raw_upstream(delayed(0.02, gauge))
    proxy = await start_proxy(url, call_connections=16, max_calls_per_credential=40)
    tokens = (TOKENS["writer"], TOKENS["other"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(*(call(http, proxy, i, token=tokens[i % 2]) for i in range(1000)))
    statuses = {status for status, _ in results}
    assert statuses == {200, 429}  # the budgets were reached, and nothing else went wrong
    for i, (status, body) in enumerate(results):
        if status == 200:
            assert orjson.loads(body)["id"] == i  # each its own answer
    assert gauge["most"] <= 16 and up.connections <= 16
    assert len(up.requests) == sum(status == 200 for status, _ in results)


async def test_an_upstream_that_resets_mid_body_costs_that_call_only(start_proxy: Any, raw_upstream: Any) -> None:
    async def reset(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.msg_id == 1:  # a JSON answer cut by a reset, then an SSE answer cut mid-event by one
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"json")
        elif request.msg_id == 2:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"%x\r\n%s\r\n" % (len(NOTE) + 9, NOTE + b"data: {\"j"))
        else:
            writer.write(pong(request.msg_id))
            return
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()  # RST

    _, url = await raw_upstream(reset)
    proxy = await start_proxy(url)
    forwarder = start_proxy.runners[-1].app[FORWARDER]
    async with aiohttp.ClientSession() as http:
        status, body = await call(http, proxy, 1)
        assert status == 502 and b"upstream failed" in body
        status, body = await call(http, proxy, 2)
        assert status == 200 and b"notifications/message" in body  # what came whole came through ...
        assert orjson.loads(body.split(b"data: ")[-1])["error"]["message"] == CUT_SHORT  # ... then the cut
        for msg_id in (3, 4):
            assert await call(http, proxy, msg_id, token=TOKENS["other"]) == (200, pong(msg_id).split(b"\r\n\r\n")[1])
    assert not forwarder.open_streams and len(forwarder.session._open) == 1  # nothing left behind


# --- backpressure ------------------------------------------------------------------------------------------------

async def test_a_client_that_stops_reading_pauses_the_upstream_end_to_end(start_proxy: Any, raw_upstream: Any) -> None:
    """A GET stream whose client stops reading: the upstream's writes stall once the buffers on the way are full
    (the relay pauses its upstream connection past 1 MB unread); the proxy never holds the whole stream, which is
    four times what the kernel's buffers on the way may hold on this machine."""
    event = b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{"data":"%s"}}\n\n' % (b"x" * 16000)
    on_the_way = kernel_buffers(send=2) + 1_000_000 + 64 * 1024  # the kernel's, the relay's 1 MB, the client's own
    total, sent, stalled = -(-4 * on_the_way // len(event)) * len(event), 0, asyncio.Event()

    async def firehose(request: Request, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        try:
            while sent < total:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1.0)
                sent += len(event)
        except (TimeoutError, ConnectionError):
            pass
        stalled.set()
        writer.transport.abort()

    _, url = await raw_upstream(firehose)
    proxy = URL(await start_proxy(url))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the client's own buffer kept small
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, (proxy.host, proxy.port))
    reader, writer = await asyncio.open_connection(sock=client)
    writer.write(b"GET /mcp HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\nAuthorization: Bearer %s\r\n\r\n"
                 % (proxy.host.encode(), proxy.port, TOKENS["writer"].encode()))
    assert b"200 OK" in await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(100_000)  # reads a little, then stops
    await asyncio.wait_for(stalled.wait(), 20)
    assert sent < on_the_way, (sent, on_the_way)  # not the whole stream
    writer.close()


# --- HTTPS upstream ----------------------------------------------------------------------------------------------

async def test_an_https_upstream_is_verified_and_a_private_ca_is_trusted_through_ssl_cert_file(
        start_proxy: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream behind a certificate no trusted CA signed is refused (502, nothing sent); trusted through
    SSL_CERT_FILE (OpenSSL's own variable, read when the proxy starts, as aiohttp's client did) it is used, with
    its keep-alive connections."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    up = RawUpstream(answering(lambda r: pong(r.msg_id)))
    up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{up.server.sockets[0].getsockname()[1]}/mcp"
    try:
        untrusting = await start_proxy(url)
        ca = tmp_path / "ca.pem"
        authority.cert_pem.write_to_path(str(ca))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        trusting = await start_proxy(url)
        async with aiohttp.ClientSession() as http:
            status, body = await call(http, untrusting, 1)
            assert status == 502 and b"upstream unavailable" in body, body
            assert up.requests == []  # refused during the handshake: nothing was sent
            for msg_id in (2, 3, 4):
                assert (await call(http, trusting, msg_id))[0] == 200
        assert [r.msg_id for r in up.requests] == [2, 3, 4] and len({r.connection for r in up.requests}) == 1
    finally:
        up.stop()


# --- answers to POSTs that asked nothing -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["notification", "client response"])
@pytest.mark.parametrize("answer", ["202 null", "200 not json", "202 a list"])
async def test_a_body_answering_nothing_is_passed_as_clients_take_it(kind: str, answer: str, start_proxy: Any,
                                                                      raw_upstream: Any) -> None:
    """A POST with no request in it (a notification, or the client's answer to a server's request) is answered 2xx
    by the upstream with some body: clients discard it unread, so scopegate passes the status without it (once a
    502 "upstream answer not understood", which left the TypeScript SDK unable to connect to git-mcp-server). A
    request answered the same way is still refused: that body was the answer it waits for."""
    listed = orjson.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": [{"name": "secret_tool",
                                                                            "inputSchema": {"type": "object"}}]}})
    bodies = {
        "202 null": b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\nnull",
        "200 not json": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        "202 a list": b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % len(listed) + listed,
    }
    up, url = await raw_upstream(answering(lambda request: bodies[answer]))
    proxy = await start_proxy(url)
    message = ({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}
               if kind == "notification" else {"jsonrpc": "2.0", "id": 3, "result": {}})
    async with aiohttp.ClientSession() as http:
        hdrs = {**modern_headers("notifications/cancelled" if kind == "notification" else "response"),
                "Authorization": f"Bearer {TOKENS['writer']}"}
        hdrs.pop("Mcp-Method")
        async with http.post(proxy, data=orjson.dumps(message), headers=hdrs) as resp:
            status, body = resp.status, await resp.read()
        assert (status, body) == (int(answer[:3]), b"")
        assert orjson.loads(up.requests[-1].body) == message  # it did reach the upstream
        status, refused = await call(http, proxy, 9)  # a request answered the same way: refused, or filtered
    assert b"secret_tool" not in refused and b"hello" not in refused
    assert status == 502 or answer == "202 a list"


async def test_an_upstream_holding_its_get_head_back_delays_one_call_once(start_proxy: Any, raw_upstream: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A session's POSTs wait for its GET to be open upstream (edge/openings.py), boundedly: an upstream that never
    sends a GET's head costs the first call one wait, and no call after it anything."""
    from proxy.edge import openings

    monkeypatch.setattr(openings, "WAIT", 0.5)  # (1 s by default)

    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.head.startswith(b"GET"):
            return  # holds the head back (the connection stays open, silent)
        body = orjson.loads(request.body)
        if body.get("method") == "initialize":
            writer.write(pong(body["id"], headers=b"Mcp-Session-Id: s-held\r\n"))
        else:
            writer.write(pong(body["id"]))
        await writer.drain()

    up, url = await raw_upstream(reply)
    proxy = await start_proxy(url)
    legacy = {"Authorization": f"Bearer {TOKENS['writer']}", "Content-Type": "application/json",
              "Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        async with http.post(proxy, data=orjson.dumps(init), headers=legacy) as resp:
            assert resp.status == 200 and resp.headers["Mcp-Session-Id"] == "s-held"
        session = {**legacy, "Mcp-Session-Id": "s-held", "MCP-Protocol-Version": "2025-11-25"}
        held = asyncio.create_task(http.get(proxy, headers=session))
        assert await wait_until(lambda: any(r.head.startswith(b"GET") for r in up.requests))
        took = []
        for msg_id in (1, 2, 3):
            started = asyncio.get_running_loop().time()
            async with http.post(proxy, data=ping(msg_id), headers=session) as resp:
                assert resp.status == 200 and orjson.loads(await resp.read())["id"] == msg_id
            took.append(asyncio.get_running_loop().time() - started)
        held.cancel()
    assert 0.45 < took[0] < 0.9 and took[1] < 0.3 and took[2] < 0.3, took
