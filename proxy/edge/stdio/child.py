"""One stdio MCP server process: started in a process group of its own, spoken to in newline-delimited JSON-RPC on
stdin and stdout (UTF-8, one message per line, as the SDKs' stdio transports frame it), its stderr logged a line at a
time with the process named, and stopped as the spec says (stdin closed, then SIGTERM, then SIGKILL), to the whole
group so that what `npx` or `uvx` started goes too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

log = logging.getLogger("scopegate.upstream")
STOP_WAIT = 2.0  # seconds after closing stdin, then after SIGTERM
STDERR_LINE = 8192  # longest stderr line logged (the rest is cut)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL if scopegate itself dies without stopping it (kill -9, OOM)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """`on_message(message)` gets each JSON message the server writes; `on_exit(status)` once when it is gone."""

    def __init__(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str], name: str,
                 on_message: Callable[[Any], None], on_exit: Callable[[int | None], None], max_line: int) -> None:
        self.argv = tuple(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.name = name  # in every log line about it (the session it serves)
        self.on_message = on_message
        self.on_exit = on_exit
        self.max_line = max_line
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.alive = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Raises OSError when the command cannot be started."""
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=self.max_line, start_new_session=True,
            preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        self.alive = True
        log.info("upstream process started", extra={"upstream_process": self.name, "pid": self.process.pid})
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._stderr())]

    def send(self, message: Any) -> bool:
        """Write one message (orjson never writes a raw newline, so one line is one message); False when the
        process can no longer take it."""
        process = self.process
        if not self.alive or process is None or process.stdin is None or process.stdin.is_closing():
            return False
        try:
            process.stdin.write(orjson.dumps(message) + b"\n")
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # a line beyond max_line: the framing cannot be trusted any more
                    log.warning("upstream process wrote a line longer than %d bytes; stopping it", self.max_line,
                                extra={"upstream_process": self.name})
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    # Something printed to stdout that is not MCP: the SDK clients skip such lines, so do we.
                    log.warning("upstream process wrote a line that is not JSON on stdout (skipped)",
                                extra={"upstream_process": self.name})
                    continue
                self.on_message(message)
        finally:
            await self._ended()

    async def _stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        stderr = self.process.stderr
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # longer than the limit: drop what is buffered, keep reading
                with contextlib.suppress(Exception):
                    await stderr.read(self.max_line)
                continue
            if not line:
                return
            text = line[:STDERR_LINE].decode("utf-8", "replace").rstrip()
            if text:
                log.info("%s", text, extra={"upstream_process": self.name, "stream": "stderr"})

    async def _ended(self) -> None:
        if not self.alive:
            return
        self.alive = False
        process = self.process
        assert process is not None
        # stdout closed: the server is finishing (or broke its framing). Give it the usual grace, then end it.
        status = await self._stop(process)
        log.info("upstream process exited", extra={"upstream_process": self.name, "pid": process.pid,
                                                   "status": status})
        self.on_exit(status)

    async def stop(self) -> None:
        """End it (idempotent): stdin closed, a grace period, SIGTERM to its group, SIGKILL to its group."""
        process = self.process
        if process is None:
            return
        self.alive = False
        await self._stop(process)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process) -> int | None:
        if process.stdin is not None and not process.stdin.is_closing():
            with contextlib.suppress(Exception):
                process.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if process.returncode is not None:
                break
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)  # its group: what it started goes with it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_WAIT):
                    await process.wait()
        # The leader is gone; whatever it started in its group goes too (a grandchild holding the pipes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.returncode
