"""The request path's upstream HTTP/1.1 client (proxy/edge/upstream_http.py) against upstreams that misbehave.

Each upstream here is a raw socket server that answers with exactly the bytes a test gives it, so framing the
client must not trust (bytes after an answer, two answers to one request, a cut body, oversized headers, a header
that would split a request) is sent for real. What must hold: a connection is reused only after a whole answer
that may be followed; anything else is refused or closes the connection, and never leaks into the next answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from yarl import URL

from proxy.edge.upstream_http import HIGH_WATER, MAX_HEADER_BYTES, HeadTimeout, Pool, UpstreamBroken
from tests.conftest import kernel_buffers

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

Answer = Callable[[int, bytes], bytes | None]  # (request number on this connection, request bytes) -> reply


class RawUpstream:
    """Counts connections and requests; answers each request with what `answer` returns (None: close)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        count = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(count, request)
                count += 1
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}/mcp")


@contextlib.asynccontextmanager
async def raw_upstreams() -> AsyncIterator[Callable[[Answer], RawUpstream]]:
    """Makes raw upstreams; closes the servers of those it made on the way out."""
    made: list[RawUpstream] = []

    def make(answer: Answer) -> RawUpstream:
        up = RawUpstream(answer)
        made.append(up)
        return up

    try:
        yield make
    finally:
        for up in made:
            if up.server is not None:
                up.server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Answer], RawUpstream]]:
    async with raw_upstreams() as make:
        yield make


async def serve(up: RawUpstream) -> Pool:
    up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    return Pool(up.url, limit=4, connect_timeout=2)


async def whole(pool: Pool, **kw: object) -> tuple[int, bytes]:
    async with asyncio.timeout(5):  # a client that waits for an answer it already mis-parsed fails, not hangs
        response = await pool.request("POST", data=b"{}", headers={"Content-Type": "application/json", **kw})
        try:
            return response.status, await response.read()
        finally:
            response.release()


async def test_connections_are_reused_after_whole_answers(upstream: Callable[[Answer], RawUpstream]) -> None:
    up = upstream(lambda n, req: OK)
    pool = await serve(up)
    for _ in range(20):
        assert await whole(pool) == (200, b"{}")
    assert up.connections == 1  # keep-alive: one connection for all of them
    await pool.close()


async def test_chunked_and_close_delimited_bodies(upstream: Callable[[Answer], RawUpstream]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    up = upstream(lambda n, req: chunked)
    pool = await serve(up)
    assert await whole(pool) == (200, b"abcde")
    assert await whole(pool) == (200, b"abcde")
    assert up.connections == 1
    await pool.close()
    # No length, not chunked: the body is what comes until the upstream closes, and that connection is not reused.
    until_close = upstream(lambda n, req: None if n else b"HTTP/1.1 200 OK\r\n\r\npartial-then-close")

    async def close_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    until_close.server = await asyncio.start_server(close_after, "127.0.0.1", 0)
    pool = Pool(until_close.url, limit=4, connect_timeout=2)
    assert await whole(pool) == (200, b"all of it")
    assert await whole(pool) == (200, b"all of it")  # a second connection: the first ended with its body
    await pool.close()


async def test_bytes_after_an_answer_never_reach_the_next_request(upstream: Callable[[Answer], RawUpstream]) -> None:
    # A smuggled second answer rides behind the first: the next request must not get it as its own.
    smuggled = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"evil\":1}"
    up = upstream(lambda n, req: smuggled if len(up.requests) == 1 else OK)  # the first request of all
    pool = await serve(up)
    assert await whole(pool) == (200, b"{}")
    await asyncio.sleep(0.05)
    for _ in range(3):
        assert await whole(pool) == (200, b"{}")
    assert up.connections == 2  # the connection that carried extra bytes was closed, never reused
    await pool.close()


async def test_extra_bytes_arriving_late_close_the_idle_connection(upstream: Callable[[Answer], RawUpstream]) -> None:
    connections = 0

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"evil\":1}")  # nobody asked
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client closes
        writer.close()

    up = upstream(lambda n, req: OK)
    up.server = await asyncio.start_server(late, "127.0.0.1", 0)
    pool = Pool(up.url, limit=4, connect_timeout=2)
    assert await whole(pool) == (200, b"{}")
    await asyncio.sleep(0.3)
    status, body = await whole(pool)
    assert b"evil" not in body and (status, body) == (200, b"{}")
    assert connections == 2  # the first connection was closed when bytes nobody asked for came: not reused
    await pool.close()


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # cut: fewer bytes than it said, then closed
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # cut mid-chunk
    b"HTTP/1.1 2x0 OK\r\n\r\n",  # not a status line
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",  # two lengths
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",  # not a header
    b"garbage\r\n\r\n",
], ids=["short-body", "cut-chunk", "bad-status", "two-lengths", "bad-header", "garbage"])
async def test_malformed_or_cut_answers_raise(upstream: Callable[[Answer], RawUpstream], reply: bytes) -> None:
    up = upstream(lambda n, req: reply if n == 0 else None)

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(reply)
        await writer.drain()
        writer.close()

    up.server = await asyncio.start_server(once, "127.0.0.1", 0)
    pool = Pool(up.url, limit=4, connect_timeout=2)
    with pytest.raises(UpstreamBroken):
        await whole(pool)
    assert not pool._open  # nothing kept
    await pool.close()


async def test_oversized_headers_are_refused(upstream: Callable[[Answer], RawUpstream]) -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80)) \
        + b"Content-Length: 2\r\n\r\n{}"
    assert len(big) > MAX_HEADER_BYTES
    up = upstream(lambda n, req: big)
    pool = await serve(up)
    with pytest.raises(UpstreamBroken, match="headers exceed"):
        await whole(pool)
    await pool.close()


async def test_informational_answers_are_skipped(upstream: Callable[[Answer], RawUpstream]) -> None:
    up = upstream(lambda n, req: b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)
    pool = await serve(up)
    response = await pool.request("POST", data=b"{}", headers={})
    assert response.status == 200 and "Link" not in response.headers
    assert await response.read() == b"{}"
    response.release()
    await pool.close()


@pytest.mark.parametrize("name,value", [("X-Evil", "a\r\nX-Injected: 1"), ("X-Evil", "a\nb"), ("X-Ev\r\nil", "a"),
                                        ("X-Evil", "a\0b"), ("X-Ev:il", "a"), ("X-Evil", "a\rb"),
                                        ("X-Evil", "\r\n"), ("Accept", "x\r\n\r\nGET / HTTP/1.1")])
async def test_headers_that_would_split_the_request_are_refused(upstream: Callable[[Answer], RawUpstream],
                                                                 name: str, value: str) -> None:
    up = upstream(lambda n, req: OK)
    pool = await serve(up)
    assert await whole(pool, **{name.replace("\r", "").replace("\n", "").replace("\0", "").replace(":", ""): "ok"})
    for _ in range(2):  # names and values decided before (the pool remembers names) are refused all the same
        with pytest.raises(ValueError, match="split"):
            await pool.request("POST", data=b"{}", headers={name: value})
    assert len(up.requests) == 1  # nothing of the refused ones was written
    await pool.close()


async def test_the_client_owns_framing_headers(upstream: Callable[[Answer], RawUpstream]) -> None:
    up = upstream(lambda n, req: OK)
    pool = await serve(up)
    await whole(pool, **{"Content-Length": "999", "Transfer-Encoding": "chunked", "Host": "evil.example",
                         "Connection": "close"})
    request = up.requests[0].lower()
    assert b"content-length: 2\r\n" in request and b"999" not in request
    assert b"transfer-encoding" not in request and b"evil.example" not in request and b"connection:" not in request
    assert request.count(b"\r\nhost: ") == 1
    await pool.close()


async def test_a_full_pool_waits_then_gives_up_within_the_connect_timeout(
        upstream: Callable[[Answer], RawUpstream]) -> None:
    hold = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        await hold.wait()
        writer.write(OK)
        await writer.drain()
        writer.close()

    up = upstream(lambda n, req: OK)
    up.server = await asyncio.start_server(slow, "127.0.0.1", 0)
    pool = Pool(up.url, limit=1, connect_timeout=0.3)
    first = asyncio.create_task(pool.request("POST", data=b"{}", headers={}))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await pool.request("POST", data=b"{}", headers={})  # the one connection is busy: no second one is opened
    hold.set()
    response = await first
    assert await response.read() == b"{}"
    response.release()
    await pool.close()


async def test_a_slow_reader_pauses_the_upstream(upstream: Callable[[Answer], RawUpstream]) -> None:
    """A body nobody reads is not buffered without bound: past the high-water mark the socket stops being read."""
    on_the_way = kernel_buffers(send=1) + HIGH_WATER + 65536
    sent = 0
    done = asyncio.Event()

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            for _ in range(4 * on_the_way // 65536):  # four times what the buffers on the way may hold
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1.0)
                sent += 65536
        except (TimeoutError, ConnectionError):
            pass
        done.set()
        writer.close()

    up = upstream(lambda n, req: OK)
    up.server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    pool = Pool(up.url, limit=1, connect_timeout=2)
    response = await pool.request("POST", data=b"{}", headers={})
    await asyncio.wait_for(done.wait(), 10)  # the upstream's writes stalled: it was paused
    assert sent < on_the_way, (sent, on_the_way)
    assert len(response.content.read_nowait()) < 4 * 1024 * 1024 + 65536  # held: about the high-water mark
    response.close()
    await pool.close()


async def test_no_answer_head_in_time_gives_the_connection_up_and_never_sends_again() -> None:
    """A reused connection whose upstream takes a GET and never answers: HeadTimeout once `head_timeout` has passed
    (a GET is otherwise retried once on a reused connection: not after a timeout), and the connection is not used
    again (a late answer must not be taken for the next request's)."""
    requests: list[int] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                requests.append(connections)
                if len(requests) == 2:
                    await asyncio.sleep(0.5)  # past the timeout, then a late answer on the given-up connection
                writer.write(OK)
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = Pool(URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"), limit=4, connect_timeout=2)
    try:
        first = await pool.request("GET", headers={})
        assert first.status == 200 and await first.read() == b"{}"
        first.release()
        started = asyncio.get_running_loop().time()
        with pytest.raises(HeadTimeout):
            await pool.request("GET", headers={}, head_timeout=0.2)
        assert 0.15 < asyncio.get_running_loop().time() - started < 0.45 and requests == [1, 1]  # not sent again
        third = await pool.request("GET", headers={}, head_timeout=2)
        assert third.status == 200 and await third.read() == b"{}"
        third.release()
        assert requests == [1, 1, 2]  # on a new connection
    finally:
        await pool.close()
        server.close()
