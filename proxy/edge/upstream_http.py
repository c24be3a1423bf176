"""The request path's HTTP/1.1 client to the one upstream: pooled keep-alive connections, responses parsed by llhttp
(httptools), bodies handed over as they arrive.

Why not aiohttp's client here: a proxy in front of one fixed upstream uses none of its per-request machinery
(redirects, cookies, auth, proxies, URL building, default headers, trace hooks), which cost more CPU than anything
else in a small call (`make bench`; issue notes). What is kept is what a proxy must not get wrong:

- a connection is reused only after a whole, well-framed answer the upstream agreed to keep alive, with nothing
  after it; anything else (a parse error, bytes nobody asked for, an answer cut short) closes it;
- header values that would split the request (CR, LF, NUL) and names that are not HTTP tokens are refused, never
  written;
- a body is read as it arrives, the upstream paused while too much waits unread (no buffering of SSE streams);
- at most `limit` connections at once: further requests wait for one (the caller's deadline bounds the wait);
- an idle connection is reused for at most `IDLE_SECONDS`, less than the 5 s after which uvicorn and Node's HTTP
  server (the usual MCP server stacks) close it: past that, reusing it races the upstream's close, and the request
  fails (measured: 3-7 % of requests spaced at the upstream's keep-alive timeout were 502s);
- when an upstream closes a reused connection before any byte of the answer came (that race, with some other
  upstream), an idempotent request (GET, DELETE) is sent once more on a new connection, as aiohttp's client does;
  a POST never is: it may have been carried out (a write), so it fails rather than risk running twice.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.memo import remember

MAX_HEADER_BYTES = 64 * 1024  # status line and headers of one answer
HIGH_WATER = 1 << 20  # unread body bytes at which the upstream is paused (until the reader takes them)
_OWN = frozenset({"host", "content-length", "transfer-encoding", "connection"})  # framed by this client alone
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2: what a header name may be
_NO_BODY = (204, 304)
IDLE_SECONDS = 4.0  # below the upstream's own keep-alive timeout (uvicorn's and Node's: 5 s)
_RETRIED = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # idempotent (RFC 9110 §9.2.2)


class UpstreamBroken(Exception):
    """The upstream answered with what HTTP does not allow, or the connection broke before the answer was whole."""


class HeadTimeout(TimeoutError):
    """No answer head within the request's `head_timeout`: the connection is given up (never reused, never retried)."""


class HeaderRefused(ValueError):
    """A header the request cannot carry (it would split it). Its own class: a failed certificate check is a
    ValueError too (ssl.SSLCertVerificationError), and must not be taken for the client's fault."""


# What a request may be traced with: start(method, url, headers) -> context; end(context, status); failed(context,
# exception). Tracing (ops/tracing.py) provides them; headers may be added to (`traceparent`).
Hooks = tuple[Callable[[str, URL, CIMultiDict[str]], Awaitable[Any]],
              Callable[[Any, int], Awaitable[None]],
              Callable[[Any, BaseException], Awaitable[None]]]


class Body:
    """A response body as it arrives: `read_nowait`, `readany`, `at_eof`, the calls the relay makes."""

    __slots__ = ("_chunks", "_connection", "_eof", "_error", "_size", "_waiter")

    def __init__(self, connection: Connection) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._connection = connection

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._eof:
            self._error = error
        self._wake()

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def read_nowait(self) -> bytes:
        """What has arrived and not been read (b"" for nothing yet, or at the end). Raises what broke the body once
        nothing that came before the break is left."""
        if not self._chunks:
            if self._error is not None:
                raise self._error
            return b""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._connection.resume()  # everything waiting was taken: the upstream may send again (if it was paused)
        return data

    async def readany(self) -> bytes:
        """The next bytes of the body, b"" at its end."""
        while not self._chunks and not self._eof and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()


class Response:
    __slots__ = ("_connection", "content", "headers", "status")

    def __init__(self, status: int, headers: CIMultiDictProxy[str], content: Body, connection: Connection) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self._connection = connection

    async def read(self) -> bytes:
        """The whole body (for answers known to be small: the dry run, a converse call's JSON answer)."""
        chunks = []
        while chunk := await self.content.readany():
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if the answer was whole and may be followed."""
        self._connection.finished()

    def close(self) -> None:
        """Done with it before its end (or unsure): the connection is closed, never reused."""
        self._connection.abort()


class Connection(asyncio.Protocol):
    """One upstream connection: one request at a time, its answer parsed as it comes."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.answers = 0  # whole answers this connection carried: above 0 it is a reused one
        self.heard = False  # any byte of the current request's answer arrived
        self.usable = True  # false once anything makes a further answer on this connection untrustworthy
        self._lost = False
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        self._waiting = False  # a request is out and its answer not complete
        self._head: asyncio.Future[Response] | None = None
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: Body | None = None
        self._until_close = False  # no length and not chunked: the body ends when the connection does
        self._complete = False

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = True
        if not self._waiting:  # bytes nobody asked for: this connection cannot be trusted with another request
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(UpstreamBroken("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            raised = exc.__context__  # what one of the callbacks below raised, if it was one of them
            self._broken(raised if isinstance(raised, UpstreamBroken) else
                         UpstreamBroken(f"malformed answer from the upstream ({exc})"))
        except UpstreamBroken as exc:
            self._broken(exc)

    def eof_received(self) -> bool | None:
        self.usable = False  # the upstream is closing it: not to be picked while the close is under way
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.usable = False
        self.pool.forget(self)
        if not self._waiting:
            return
        if self._body is not None and self._until_close and exc is None:
            self._body.feed_eof()  # the one clean way such a body ends
            self._waiting = False
            return
        self._broken(UpstreamBroken("the upstream closed the connection before its answer was whole"))

    def pause_writing(self) -> None:  # requests are small and written whole: nothing to wait for
        pass

    def resume_writing(self) -> None:
        pass

    # -- parser callbacks --
    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request
            raise UpstreamBroken("the upstream sent more than one answer")

    def on_status(self, status: bytes) -> None:
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # _count, inline: called for every header
        if self._header_bytes > MAX_HEADER_BYTES:
            raise UpstreamBroken(f"the upstream's answer headers exceed {MAX_HEADER_BYTES} bytes")
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: informational, the real answer follows (its headers are not relayed)
            self._headers.clear()
            self._header_bytes = 0
            return
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._until_close = "Content-Length" not in headers and not chunked and status not in _NO_BODY
        self._body = Body(self)
        head = self._head
        if head is not None and not head.done():
            head.set_result(Response(status, headers, self._body, self))

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body.feed(body)

    def on_message_complete(self) -> None:
        if self._body is None:  # the end of a 1xx answer
            return
        self._complete = True
        self.answers += 1
        if not self.parser.should_keep_alive():
            self.usable = False
        self._body.feed_eof()
        self._waiting = False

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise UpstreamBroken(f"the upstream's answer headers exceed {MAX_HEADER_BYTES} bytes")

    # -- use --
    def send(self, head: bytes, body: bytes | None) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._reset()
        self._waiting = True
        self.heard = False
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(head + body if body else head)
        return self._head

    def _broken(self, error: Exception) -> None:
        head, body = self._head, self._body
        self._waiting = False
        self.abort()
        if head is not None and not head.done():
            head.set_exception(error)
        if body is not None:
            body.fail(error)

    def head_timed_out(self) -> None:
        if self._head is not None and not self._head.done():
            self._broken(HeadTimeout("no answer head in time"))

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self._lost:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self._lost:
            self._paused = False
            self.transport.resume_reading()

    def finished(self) -> None:
        """The caller is done: back to the pool when the answer was whole and the connection may carry another."""
        if self._complete and self.usable and not self._lost and not self._paused:
            self._reset()
            self.pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.usable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.pool.forget(self)


class Pool:
    """At most `limit` connections to the upstream; idle ones kept `keepalive` seconds for the next request."""

    def __init__(self, upstream: URL, limit: int, connect_timeout: float, ssl_context: ssl.SSLContext | None = None,
                 keepalive: float | None = None, hooks: Hooks | None = None) -> None:
        self.upstream = upstream
        self.limit = limit
        self.connect_timeout = connect_timeout
        # https: verified against the system's CAs, as aiohttp's client did
        self.ssl = (ssl_context or ssl.create_default_context()) if upstream.scheme == "https" else None
        self.keepalive = IDLE_SECONDS if keepalive is None else keepalive
        self.hooks = hooks
        self.host = upstream.host or ""
        self.port = upstream.port or (443 if upstream.scheme == "https" else 80)
        default = self.port == (443 if upstream.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if default else f"{host}:{self.port}"
        self._target = upstream.raw_path_qs  # every request goes to the one upstream URL
        self._names: dict[str, bool] = {}  # header name as spelled -> sent as given (see _name)
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    # -- bookkeeping the connections call --
    def forget(self, connection: Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            if connection in self._idle:
                self._idle.remove(connection)
            self._wake_one()

    def put_back(self, connection: Connection) -> None:
        if self._closed:
            connection.abort()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- requests --
    def head(self, method: str, target: str, headers: Iterable[tuple[str, str]], length: int | None) -> bytes:
        """The request line and headers, or HeaderRefused for a header that would split the request."""
        names = self._names
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        for name, value in headers:
            sent = names.get(name)
            if sent is None:
                sent = self._name(name)
            if sent:
                lines.append(f"{name}: {value}\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Names were checked above; a value with CR, LF or NUL shows as a line ending too many (or a NUL): one scan
        # of the whole head rather than three of each value. (The first entry holds two lines.)
        ends = len(lines) + 1
        if text.count("\n") != ends or text.count("\r") != ends or "\0" in text:
            raise HeaderRefused("a header value would split the request")
        return text.encode("utf-8", "surrogateescape")

    def _name(self, name: str) -> bool:
        """Whether a header of this name is sent as given (False: this client frames it itself); HeaderRefused for
        a name that is not an RFC 9110 token (CR, LF, NUL or `:` would split the request; a space, a control
        character or a separator makes some parsers read another header than the one meant, `Transfer-Encoding `
        for `Transfer-Encoding`). Remembered per spelling (bounded); a refused name is not remembered."""
        if _TOKEN.fullmatch(name) is None:
            raise HeaderRefused(f"header {name!r} would split the request (not an HTTP token)")
        return remember(self._names, name, name.lower() not in _OWN, 1024)

    def _idle_one(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest to be alive
            if connection.usable and not connection._lost and now - connection.idle_since < self.keepalive \
                    and connection.transport is not None and not connection.transport.is_closing():
                return connection
            connection.abort()
        return None

    async def _connection(self) -> Connection:
        """An idle connection at once, else a new one or the next one freed, within the connect timeout (a full
        pool is answered like an unreachable upstream, never queued for longer)."""
        connection = self._idle_one()
        if connection is not None:
            return connection
        async with asyncio.timeout(self.connect_timeout):
            return await self._wait_or_connect()

    async def _wait_or_connect(self) -> Connection:
        while True:
            connection = self._idle_one()
            if connection is not None:
                return connection
            if len(self._open) < self.limit:
                return await self._connect()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the slot on
                raise

    async def _connect(self) -> Connection:
        if self._closed:
            raise OSError("upstream pool closed")
        loop = asyncio.get_running_loop()
        connection = Connection(self)
        self._open.add(connection)  # counted while connecting: the limit holds for connects too
        try:
            await loop.create_connection(lambda: connection, self.host, self.port, ssl=self.ssl)
        except BaseException:
            self.forget(connection)
            raise
        return connection

    async def request(self, method: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None,
                      head_timeout: float | None = None) -> Response:
        """Send one request to the upstream and return its answer's head; its body arrives on `content`. The caller
        ends it with `release()` (read to the end) or `close()`. Raises OSError (no connection; a failed TLS
        handshake too), UpstreamBroken (a malformed or cut answer), HeadTimeout (no answer head within
        `head_timeout` seconds of sending; one timer, no timeout scope) or HeaderRefused (a header that would split
        the request)."""
        hooks, context = self.hooks, None
        if headers is None:
            headers = {}
        if hooks is not None:
            headers = CIMultiDict(headers)  # the trace hook adds `traceparent`: to this request only
            context = await hooks[0](method, self.upstream, headers)
        try:
            length = len(data) if data is not None else (0 if method in ("POST", "PUT", "PATCH") else None)
            head = self.head(method, self._target, headers.items(), length)
            retry = method in _RETRIED
            while True:
                connection = await self._connection()
                timer = None if head_timeout is None else \
                    asyncio.get_running_loop().call_later(head_timeout, connection.head_timed_out)
                try:
                    response = await connection.send(head, data)
                    break
                except HeadTimeout:
                    raise  # given up, never sent again
                except UpstreamBroken:
                    connection.abort()
                    # Closed under a reused connection before anything was heard: the upstream most likely closed it
                    # idle as the request went out. Safe to send again only when sending twice does no harm.
                    if not (retry and connection.answers and not connection.heard):
                        raise
                    retry = False
                except BaseException:
                    connection.abort()
                    raise
                finally:
                    if timer is not None:
                        timer.cancel()
        except BaseException as exc:
            if hooks is not None:
                await hooks[2](context, exc)
            raise
        if hooks is not None:
            await hooks[1](context, response.status)
        return response

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(OSError("upstream pool closed"))
        self._waiters.clear()
