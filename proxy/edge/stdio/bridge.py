"""The stdio server as a Streamable HTTP upstream, on loopback, for scopegate's own request path only.

Why a bridge in front of the request path rather than a second kind of upstream inside it: everything between the
client and the upstream (the pipeline, the relay's per-event filtering and sealing, the SSE framing, the call and
stream pools, the catalog's own session, readiness) is written against one Streamable HTTP upstream, and stays so.
The bridge is the one place that knows stdio, and it speaks the transport the rest already trusts; the HTTP-upstream
path is untouched (no new per-request work there). It listens on 127.0.0.1 on a port of its own choosing and answers
only requests carrying a random key scopegate sends as a server-side header (refused from clients, scrubbed from
answers, like x-app-token), so nothing else on the host or in the pod reaches the children past the pipeline.

What it does, as an HTTP MCP server would:
- `initialize` (2025-11-25 and older) starts a child for that session: one process is one client session on stdio.
  The client's own `initialize` (its declared capabilities) is what the child gets, and it is kept: a child that
  dies is started again on the session's next request (at once the first time, then with a growing wait) and given
  the same `initialize` and `notifications/initialized` before the request.
- Requests without a session (2026-07-28 is stateless: each carries its protocol version and the client's
  capabilities in `_meta`) go to a bounded pool of children, to the least busy one, a new one started while all are
  busy and the pool is not full. A child that answers `server/discover` serves that revision with no handshake; one
  that does not makes the client fall back to `initialize`, as it would with an HTTP server.
- Each request is answered as an SSE stream: what the server says of its own while the request is in flight (progress
  for its token, logging, elicitation and sampling questions) goes on that stream; what fits no request in flight goes
  on the session's GET stream. A client's answer to a server's question is written to the child that asked.
- Ids are renumbered per child (pool children serve many clients), and put back on the way out.
- A child that dies answers every request in flight with a JSON-RPC error saying so; idle children are stopped;
  at most `sessions` session children and `pool` pool children run; on close every child is stopped (stdin closed,
  SIGTERM, SIGKILL, to its process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from proxy.edge.stdio.child import Child
from proxy.edge.stdio.rules import (
    LEGACY,
    MODERN,
    STEADY_SECONDS,
    declared,
    destination,
    progress_token,
    restart_delay,
    speaks_modern,
)

log = logging.getLogger("scopegate.upstream")
KEY_HEADER = "X-Scopegate-Bridge"  # the bridge's own key: a server-side header like any other
PATH = "/mcp"
MAX_LINE = 64 * 1024 * 1024  # one message from the server (a large tools/list is a few hundred KiB)
START_TIMEOUT = 30.0  # a restarted child's replayed initialize (npx may fetch a package first)
MAX_QUESTIONS = 1024  # open server-to-client questions of pool children remembered for their answers
SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
INTERNAL = -32603
SHUTTING_DOWN = "scopegate is shutting down"


@dataclass(frozen=True)
class StdioSettings:
    argv: tuple[str, ...]
    cwd: str | None
    env: Mapping[str, str] = field(repr=False)  # the child's whole environment (secrets included)
    sessions: int = 32  # session children at once
    pool: int = 4  # children for requests without a session
    idle_seconds: float = 600.0


class Waiting:
    """A request in flight to a child: where its stream's messages go."""

    __slots__ = ("method", "original_id", "queue", "token")

    def __init__(self, message: Mapping[str, Any]) -> None:
        self.original_id = message.get("id")
        self.method = message.get("method")
        self.token = progress_token(message)
        self.queue: asyncio.Queue[tuple[Any, bool]] = asyncio.Queue()  # (message, last)


class Crashes:
    """Deaths in a row of a session's child, or of any pool child (a server that dies, dies in every slot)."""

    __slots__ = ("count", "died_at", "status")

    def __init__(self) -> None:
        self.count = 0
        self.died_at = 0.0
        self.status: int | None = None

    def wait(self) -> float:
        """Seconds until the next start may be tried (0 or less: now)."""
        return self.died_at + restart_delay(self.count) - time.monotonic() if self.count else 0.0


class Slot:
    """A place for one child: a session's, or one of the pool's. The child may be gone (dead, idle): the slot keeps
    what restarting it needs."""

    def __init__(self, name: str, session: str | None, crashes: Crashes | None = None) -> None:
        self.name = name
        self.session = session
        self.child: Child | None = None
        self.waiting: OrderedDict[int, Waiting] = OrderedDict()  # child id -> request, oldest first
        self.ids = itertools.count(1)
        self.crashes = crashes or Crashes()
        self.last_used = time.monotonic()
        self.init: dict[str, Any] | None = None  # the client's initialize, replayed into a restarted child
        self.modern = False  # a pool child whose server serves 2026-07-28 itself (no handshake)
        self.caps = ""  # a pool child that needed a handshake: the capabilities it was initialized with (a key)
        self.stream: asyncio.Queue[Any] | None = None  # the session's GET stream
        # Starting a child (and its handshake) runs as a task of its own: a client that leaves meanwhile (a readiness
        # probe's one-second ping) must not cut it short and leave a half-initialized child behind.
        self.starting: asyncio.Task[str | None] | None = None
        self.ready = False  # the child's handshake is done: it may serve requests

    @property
    def alive(self) -> bool:
        return self.ready and self.child is not None and self.child.alive


def _busy(slot: Slot) -> int:
    """Requests the child is working on (a `subscriptions/listen` stream is held open, not worked on)."""
    return sum(1 for waiting in slot.waiting.values() if waiting.method != "subscriptions/listen")


def _error(msg_id: Any, text: str, code: int = INTERNAL) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": text}}


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


class Bridge:
    def __init__(self, settings: StdioSettings) -> None:
        self.settings = settings
        self.key = secrets.token_urlsafe(32)
        self.sessions: dict[str, Slot] = {}
        pool_crashes = Crashes()
        self.pool = [Slot(f"pool-{n}", None, pool_crashes) for n in range(settings.pool)]
        self.questions: OrderedDict[str, tuple[Slot, Any]] = OrderedDict()  # bridge id -> pool child, its own id
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.closing = False  # no child is started once close() began
        self.url = URL(f"http://127.0.0.1:0{PATH}")

    # -- lifecycle --
    async def start(self) -> URL:
        app = web.Application(client_max_size=MAX_LINE)
        app.router.add_route("POST", PATH, self._post)
        app.router.add_route("GET", PATH, self._get)
        app.router.add_route("DELETE", PATH, self._delete)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = URL(f"http://127.0.0.1:{port}{PATH}")
        self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return self.url

    async def close(self) -> None:
        """Every child stopped (their process groups too) before this returns."""
        self.closing = True
        if self._reaper is not None:
            self._reaper.cancel()
        slots = [*self.sessions.values(), *self.pool]
        self.sessions.clear()
        for slot in slots:
            self._fail(slot, SHUTTING_DOWN)
        # Starts under way end at once (their handshakes were just failed; a start that finishes now stops its
        # child itself), so every child there will be is known below.
        await asyncio.gather(*(slot.starting for slot in slots if slot.starting is not None),
                             return_exceptions=True)
        for slot in slots:
            self._fail(slot, SHUTTING_DOWN)
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.gather(*(slot.child.stop() for slot in slots if slot.child is not None),
                             return_exceptions=True)

    def children(self) -> list[int]:
        """PIDs of the children running now."""
        return [s.child.pid for s in (*self.sessions.values(), *self.pool)
                if s.child is not None and s.child.alive and s.child.pid is not None]

    # -- HTTP --
    def _admitted(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.headers.get(KEY_HEADER, "").encode(), self.key.encode())

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if not self._admitted(request):
            return web.Response(status=403)
        try:
            message = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json(400, _error(None, "Parse error", -32700))
        if not isinstance(message, dict):
            return _json(400, _error(None, "a stdio server is sent one message at a time, not a batch", -32600))
        method = message.get("method")
        is_request = isinstance(method, str) and "id" in message
        session = request.headers.get("Mcp-Session-Id")
        if session is not None:
            slot = self.sessions.get(session)
            if slot is None:
                return _json(404, _error(message.get("id"), "Session not found", -32001))
        elif method == "initialize" and is_request:
            return await self._open(request, message)
        elif method is None and "id" in message:  # a client's answer to a pool child's question
            return self._answer(message)
        else:
            found = await self._pick(declared(message)[0])
            if found is None:
                return _json(503, _error(message.get("id"), f"all {len(self.pool)} upstream server processes for "
                                                            "requests without a session are busy; try again"))
            slot = found
        slot.last_used = time.monotonic()
        if not is_request:
            await self._notify(slot, message)
            return web.Response(status=202)
        problem = await self._ensure(slot, message)
        if problem is not None:
            return _json(200, _error(message.get("id"), problem))
        return await self._call(request, slot, message)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if not self._admitted(request):
            return web.Response(status=403)
        session = request.headers.get("Mcp-Session-Id")
        if session is None:
            return web.Response(status=405, headers={"Allow": "POST, DELETE"})
        slot = self.sessions.get(session)
        if slot is None:
            return _json(404, _error(None, "Session not found", -32001))
        if slot.stream is not None:
            return _json(409, _error(None, "Only one GET stream per session", -32000))
        queue: asyncio.Queue[Any] = asyncio.Queue()
        slot.stream = queue
        response = web.StreamResponse(headers=SSE)
        try:
            await response.prepare(request)
            while (message := await queue.get()) is not None:
                await response.write(b"event: message\ndata: " + orjson.dumps(message) + b"\n\n")
        except ConnectionResetError:
            pass  # scopegate closed the stream (its client left)
        finally:
            if slot.stream is queue:
                slot.stream = None
        return response

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        if not self._admitted(request):
            return web.Response(status=403)
        session = request.headers.get("Mcp-Session-Id")
        if session is None or session not in self.sessions:
            return _json(404, _error(None, "Session not found", -32001))
        await self._end(session, "the session ended")
        return web.Response(status=200)

    # -- sessions and the pool --
    async def _open(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        if len(self.sessions) >= self.settings.sessions:
            return _json(503, _error(message.get("id"), f"scopegate runs as many upstream sessions as it may "
                                                        f"({self.settings.sessions}); try again later"))
        session = secrets.token_urlsafe(24)
        slot = Slot(f"session-{next(self._numbers)}", session)
        self.sessions[session] = slot
        problem = await self._ensure(slot, message)
        answer = await self._ask(slot, message) if problem is None else _error(message.get("id"), problem)
        if answer is None or "result" not in answer:
            await self._end(session, "initialize failed")
            return _json(200, answer or _error(message.get("id"), "the upstream server process did not answer "
                                                                  "initialize"))
        slot.init = message
        return _json(200, answer, {"Mcp-Session-Id": session})

    async def _pick(self, caps: str) -> Slot | None:
        """The least busy running pool child that can serve these capabilities (a server of 2026-07-28 serves any;
        an older one only those it was initialized with); a stopped slot when every fitting one is busy; an idle
        child of other capabilities stopped to make room; None when every child is busy."""
        fitting = [slot for slot in self.pool if slot.alive and (slot.modern or slot.caps == caps)]
        best = min(fitting, key=_busy, default=None)
        if best is not None and not _busy(best):
            return best
        stopped = [slot for slot in self.pool if not slot.alive and (slot.starting is None or slot.starting.done())]
        if stopped and (best is None or stopped[0].crashes.wait() <= 0):
            return stopped[0]
        if best is not None:
            return best
        starting = [slot for slot in self.pool if slot.starting is not None and not slot.starting.done()]
        if starting:  # wait for a child being started rather than refuse
            return starting[0]
        idle = [slot for slot in self.pool if slot.alive and not slot.waiting]
        if idle:
            oldest = min(idle, key=lambda slot: slot.last_used)
            assert oldest.child is not None
            await oldest.child.stop()
            return oldest
        return None

    async def _end(self, session: str, why: str) -> None:
        slot = self.sessions.pop(session, None)
        if slot is None:
            return
        self._fail(slot, f"{why} (upstream {slot.name})")
        if slot.stream is not None:
            slot.stream.put_nowait(None)
        if slot.child is not None:
            await slot.child.stop()

    async def _ensure(self, slot: Slot, message: dict[str, Any]) -> str | None:
        """The slot's child running (started, or started again after a crash once its wait is over, its session's
        initialize replayed, a pool child's handshake done), or the reason it is not. Requests that find a start
        under way wait for that one."""
        if slot.alive:
            return None
        if self.closing:
            return SHUTTING_DOWN
        if slot.starting is None or slot.starting.done():
            slot.starting = asyncio.get_running_loop().create_task(self._start(slot, message))
        return await asyncio.shield(slot.starting)

    async def _start(self, slot: Slot, message: dict[str, Any]) -> str | None:
        slot.ready = False
        wait = slot.crashes.wait()
        if wait > 0:
            return (f"the upstream server process exited (status {slot.crashes.status}); scopegate starts it "
                    f"again in {wait:.1f} s")
        child = Child(self.settings.argv, self.settings.cwd, self.settings.env, slot.name,
                      lambda message: self._heard(slot, message), lambda status: self._exited(slot, status),
                      MAX_LINE)
        try:
            await child.start()
        except OSError as exc:
            slot.crashes.count += 1
            slot.crashes.died_at = time.monotonic()
            log.warning("upstream process cannot be started (%s)", exc.strerror or type(exc).__name__,
                        extra={"upstream_process": slot.name})
            return f"the upstream server process cannot be started ({exc.strerror or type(exc).__name__})"
        if self.closing:
            await child.stop()
            return SHUTTING_DOWN
        slot.child = child
        if slot.init is not None:  # a restart: the session's handshake again, before its request
            init = {**slot.init, "id": f"scopegate-restart-{next(self._numbers)}"}
            answer = await self._ask(slot, init)
            if answer is None or "result" not in answer:
                await child.stop()
                return "the upstream server process was started again but did not accept the session"
            await self._send(slot, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        elif slot.session is None:
            problem = await self._handshake(slot, message)
            if problem is not None:
                await child.stop()
                return problem
        slot.ready = True
        return None

    async def _handshake(self, slot: Slot, message: dict[str, Any]) -> str | None:
        """A new pool child: asked `server/discover` first. A server that serves 2026-07-28 needs nothing more (each
        request carries its client's capabilities). An older one gets the `initialize` its clients would have sent:
        the capabilities and client info this request declares, so what it lists and asks fits that client."""
        caps, capabilities, info = declared(message)
        slot.modern, slot.caps = False, ""
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": capabilities, "io.modelcontextprotocol/clientInfo": info}
        probe = {"jsonrpc": "2.0", "id": "scopegate-discover", "method": "server/discover", "params": {"_meta": meta}}
        slot.modern = speaks_modern(await self._ask(slot, probe))
        if slot.modern:
            return None
        if slot.child is None or not slot.child.alive:  # some servers end the connection on a method they do not know
            return "the upstream server process exited when asked server/discover"
        init = {"jsonrpc": "2.0", "id": "scopegate-initialize", "method": "initialize",
                "params": {"protocolVersion": LEGACY, "capabilities": capabilities, "clientInfo": info}}
        answer = await self._ask(slot, init)
        if answer is None or "result" not in answer:
            return "the upstream server process did not accept initialize"
        await self._send(slot, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        slot.caps = caps
        return None

    # -- messages to a child --
    async def _send(self, slot: Slot, message: Any) -> bool:
        child = slot.child
        if child is None or not child.send(message):
            return False
        process = child.process
        if process is not None and process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()  # a child that does not read holds the writer, not scopegate's memory
        return True

    async def _notify(self, slot: Slot, message: dict[str, Any]) -> None:
        if message.get("method") == "notifications/cancelled":  # name the request by the id the child knows
            params = message.get("params")
            asked = params.get("requestId") if isinstance(params, dict) else None
            for child_id, waiting in slot.waiting.items():
                if waiting.original_id == asked:
                    message = {**message, "params": {**params, "requestId": child_id}}  # type: ignore[dict-item]
                    break
            else:
                return  # not in flight (any more): nothing to cancel
        if not slot.alive or not await self._send(slot, message):
            log.debug("a notification for a stopped upstream process was dropped",
                      extra={"upstream_process": slot.name})

    def _answer(self, message: dict[str, Any]) -> web.Response:
        found = self.questions.pop(str(message.get("id")), None)
        if found is not None:
            slot, own_id = found
            if slot.child is not None:
                slot.child.send({**message, "id": own_id})
        return web.Response(status=202)

    def _register(self, slot: Slot, message: dict[str, Any]) -> tuple[int, Waiting]:
        child_id = next(slot.ids)
        waiting = Waiting(message)
        slot.waiting[child_id] = waiting
        return child_id, waiting

    async def _ask(self, slot: Slot, message: dict[str, Any]) -> dict[str, Any] | None:
        """One request whose answer is wanted here (an initialize, a probe): its answer, or None."""
        child_id, waiting = self._register(slot, message)
        try:
            if not await self._send(slot, {**message, "id": child_id}):
                return None
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    answer, last = await waiting.queue.get()
                    if last:
                        return answer if isinstance(answer, dict) else None
        except TimeoutError:
            return None
        finally:
            slot.waiting.pop(child_id, None)

    async def _call(self, request: web.Request, slot: Slot, message: dict[str, Any]) -> web.StreamResponse:
        child_id, waiting = self._register(slot, message)
        response = web.StreamResponse(headers=SSE)
        done = False
        try:
            if not await self._send(slot, {**message, "id": child_id}):
                slot.waiting.pop(child_id, None)
                return _json(200, _error(waiting.original_id, "the upstream server process is not running"))
            await response.prepare(request)
            while not done:
                item, done = await waiting.queue.get()
                await response.write(b"event: message\ndata: " + orjson.dumps(item) + b"\n\n")
            return response
        except ConnectionResetError:
            done = False
            return response
        finally:
            slot.waiting.pop(child_id, None)
            slot.last_used = time.monotonic()
            if not done and slot.session is None and slot.alive:
                # 2026-07-28: a closed stream is the request's cancellation
                slot.child.send({"jsonrpc": "2.0", "method": "notifications/cancelled",  # type: ignore[union-attr]
                                 "params": {"requestId": child_id, "reason": "the client closed the stream"}})

    # -- messages from a child --
    def _heard(self, slot: Slot, message: Any) -> None:
        if not isinstance(message, dict):
            log.warning("upstream process sent something that is not a JSON-RPC message (skipped)",
                        extra={"upstream_process": slot.name})
            return
        slot.last_used = time.monotonic()
        if "method" not in message:  # an answer to one of ours
            waiting = slot.waiting.get(message.get("id"))  # type: ignore[arg-type]
            if waiting is None:
                log.debug("an answer nobody waits for was dropped", extra={"upstream_process": slot.name})
                return
            waiting.queue.put_nowait(({**message, "id": waiting.original_id}, True))
            return
        if "id" in message and slot.session is None:  # a pool child's question: answers come without a session
            bridge_id = f"scopegate-{slot.name}-{next(self._numbers)}"
            self.questions[bridge_id] = (slot, message["id"])
            while len(self.questions) > MAX_QUESTIONS:
                self.questions.popitem(last=False)
            message = {**message, "id": bridge_id}
        waits = list(slot.waiting.values())
        index = destination(message, [(w.method, w.token) for w in waits])
        if index is not None:
            waits[index].queue.put_nowait((message, False))
        elif slot.stream is not None:
            slot.stream.put_nowait(message)
        else:
            log.debug("a server message with no open stream to carry it was dropped",
                      extra={"upstream_process": slot.name})

    def _exited(self, slot: Slot, status: int | None) -> None:
        now = time.monotonic()
        ran = now - slot.child.started if slot.child is not None else 0.0
        crashes = slot.crashes
        crashes.count = 1 if ran >= STEADY_SECONDS else crashes.count + 1
        crashes.died_at = now
        crashes.status = status
        log.warning("upstream process exited; it is started again on the next request",
                    extra={"upstream_process": slot.name, "status": status})
        self._fail(slot, f"the upstream server process exited (status {status}) before answering; scopegate "
                         "starts it again on the next request")

    @staticmethod
    def _fail(slot: Slot, text: str) -> None:
        for waiting in slot.waiting.values():
            waiting.queue.put_nowait((_error(waiting.original_id, text), True))
        slot.waiting.clear()

    async def _reap(self) -> None:
        """Children idle longer than `idle_seconds` are stopped: a session's ends (its client starts another), a
        pool child's place is kept."""
        idle = self.settings.idle_seconds
        while True:
            await asyncio.sleep(min(idle / 4, 10.0))
            limit = time.monotonic() - idle
            for session, slot in list(self.sessions.items()):
                if not slot.waiting and slot.last_used < limit:
                    log.info("upstream session idle; ended", extra={"upstream_process": slot.name})
                    await self._end(session, "the session was idle")
            for slot in self.pool:
                if slot.alive and not slot.waiting and slot.last_used < limit:
                    assert slot.child is not None
                    await slot.child.stop()
