"""An in-memory SSE event store, one log per session, so the demo upstream supports resumption (`Last-Event-ID`)
without one session ever replaying another's events.

The SDK's `EventStore` API is not told which session an event belongs to, and its stream ids repeat across
sessions (every GET stream is `_GET_stream`, request streams are named by JSON-RPC ids). So `wrap` puts the store in
front of the app as ASGI middleware that names the session's log in a context variable for each request: the
session's server task is started inside the request that opens it, so its events inherit the name too. An event
stored or a replay asked for outside any session's log finds nothing: fail closed, never a global replay.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCMessage

_LOG: ContextVar[str | None] = ContextVar("scopegate_demo_event_log", default=None)


class MemoryEventStore(EventStore):
    """Keeps the last `limit` events of each of the last `sessions` sessions; enough for a demo and for tests."""

    def __init__(self, limit: int = 10_000, sessions: int = 1_000) -> None:
        self._logs: OrderedDict[str, OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]]] = OrderedDict()
        self._by_session: OrderedDict[str, str] = OrderedDict()  # Mcp-Session-Id -> log name
        self._ids = itertools.count(1)
        self._limit = limit
        self._sessions = sessions

    def _log(self, name: str) -> OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]]:
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = OrderedDict()
            while len(self._logs) > self._sessions:
                self._logs.popitem(last=False)
        return log

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._ids))
        name = _LOG.get()
        if name is not None:  # outside a session nothing is kept: nothing can be replayed to the wrong one
            log = self._log(name)
            log[event_id] = (stream_id, message)
            while len(log) > self._limit:
                log.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        name = _LOG.get()
        log = self._logs.get(name) if name is not None else None
        if log is None or last_event_id not in log:
            return None
        stream_id = log[last_event_id][0]
        after = False
        for event_id, (sid, message) in list(log.items()):
            if event_id == last_event_id:
                after = True
            elif after and sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id

    def wrap(self, app: Any) -> Any:
        """The ASGI app with each request's session named for this store (see the module's docstring)."""

        async def scoped(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            session = dict(scope["headers"]).get(b"mcp-session-id", b"").decode("latin-1")
            name = self._by_session.get(session) if session else None
            fresh = name is None
            if fresh:
                name = os.urandom(16).hex()  # a session being opened (or an unknown one): a log of its own
            token = _LOG.set(name)

            async def learning_send(message: dict) -> None:
                if fresh and message["type"] == "http.response.start":
                    given = dict(message.get("headers", [])).get(b"mcp-session-id")
                    if given:
                        self._by_session[given.decode("latin-1")] = name
                        while len(self._by_session) > self._sessions:
                            self._by_session.popitem(last=False)
                await send(message)

            try:
                await app(scope, receive, learning_send)
            finally:
                _LOG.reset(token)

        return scoped


def resumable_app(server: Any, **options: Any) -> Any:
    """The server's Streamable HTTP app with resumption, each session's events kept apart."""
    store = MemoryEventStore()
    return store.wrap(server.streamable_http_app(event_store=store, **options))
