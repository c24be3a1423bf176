"""A session's GET stream reaches the upstream before the session's later POSTs do.

A server may send a request or notification on a session's standalone GET stream while it handles a POST (the MCP
conformance suite's reference server asks for sampling and elicitation there), and a server drops what it sends
there before the stream exists. A client opens its GET stream right after `notifications/initialized` and calls a
tool at once: direct, the server sees the GET first. Through the proxy the two race again, and the GET loses more
often than not: it needs a fresh upstream connection (long-lived streams have a pool of their own, rarely warm)
while the POST takes a warm one. So a POST of a session whose GET the proxy is still opening waits until the GET's
answer head has arrived (the upstream then holds the stream), at most WAIT seconds, and at most once per GET: a
POST that gave up releases every other waiter, so an upstream that holds its GET head back costs one delay, not
one per call.

Per process: with several workers a GET and a POST may reach different ones (README, "Workers").
"""

from __future__ import annotations

import asyncio

WAIT = 1.0


class Openings:
    __slots__ = ("_pending", "wait")

    def __init__(self, wait: float | None = None) -> None:
        self.wait = WAIT if wait is None else wait  # (read when made, so a test may change WAIT)
        self._pending: dict[str, asyncio.Future[None]] = {}  # session id -> set once its GET has its answer head

    def opening(self, session_id: str | None) -> asyncio.Future[None] | None:
        """A GET of `session_id` is being opened (registered before its admission, so a POST received after it
        cannot overtake it there). None: nothing to register (no session, or another GET of it is opening)."""
        if session_id is None or session_id in self._pending:
            return None
        opened = self._pending[session_id] = asyncio.get_running_loop().create_future()
        return opened

    def opened(self, session_id: str | None, opened: asyncio.Future[None] | None) -> None:
        """The GET has its answer head, was refused, or failed: POSTs of the session need not wait (idempotent)."""
        if opened is None:
            return
        if not opened.done():
            opened.set_result(None)
        if self._pending.get(session_id or "") is opened:
            del self._pending[session_id or ""]

    def pending(self, session_id: str | None) -> asyncio.Future[None] | None:
        """What a POST of `session_id` must wait for, if anything (one dict lookup, and none when nothing opens)."""
        if not self._pending or session_id is None:
            return None
        return self._pending.get(session_id)

    async def after(self, session_id: str | None, opened: asyncio.Future[None]) -> None:
        """Wait for the GET's head, at most `wait` seconds; giving up releases every waiter of that GET."""
        try:
            await asyncio.wait_for(asyncio.shield(opened), self.wait)
        except TimeoutError:
            self.opened(session_id, opened)
