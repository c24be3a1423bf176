"""Worker mode (`SCOPEGATE_WORKERS=N`, N > 1): N serving processes on one port, one supervisor over them.

- Each worker is `python -m proxy serve` with the supervisor's own flags and environment, marked as a worker
  (`WORKER_MARK`): it loads settings, policy and credentials itself (a worker started again after a policy change
  starts with that change), binds the port with SO_REUSEPORT (the kernel spreads connections among workers) and
  serves no ops port of its own.
- A worker that exits is started again, after a pause that doubles from 0.5 s to 30 s while workers keep dying
  young (a worker that lived a minute resets it). SIGTERM or SIGINT: every worker gets SIGTERM, the supervisor
  waits for them (then SIGKILL) and exits 0. SIGHUP: passed to every worker (each reloads its policy).
- Metrics: prometheus_client's multiprocess mode. The supervisor makes a private PROMETHEUS_MULTIPROC_DIR before
  anything imports prometheus_client; workers write their values there, and the supervisor alone serves the ops
  port (/metrics: the sum over workers; /healthz; /readyz: the upstream and Redis checks plus "every worker up").
  One scrape target with totals, and probes that ask the one process that knows whether its workers are up.
- Audit: each worker keeps its own chain. On stdout the supervisor relays each worker's output a whole line at a
  time, so two workers' records never interleave inside a line; a file sink appends one write per batch. Each slot
  chains to its own predecessor: a worker started again names its slot's previous chain's last seal (the file and
  Redis sinks find it by slot; on stdout the supervisor keeps each slot's last seal line and hands it over).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

from aiohttp import web

from proxy.config import Config
from proxy.ops.sinks import PREDECESSOR_ENV, SEAL_PREFIXES
from proxy.store import Store

WORKER_MARK = "_SCOPEGATE_WORKER"  # not a SCOPEGATE_ setting: set by the supervisor on the workers it starts
READY = b"scopegate-worker-ready\n"  # a worker's line on stdout once it listens (never relayed)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FIRST_PAUSE, LONGEST_PAUSE, HEALTHY_AFTER = 0.5, 30.0, 60.0
STOP_WAIT = 10.0
LINE_LIMIT = 64 * 1024 * 1024  # an audit record with raw arguments can be long; a body is at most 4 MiB by default


def prepare_metrics() -> str:
    """A private multiprocess metrics folder, named in the environment the workers inherit. Call before anything
    imports prometheus_client."""
    folder = tempfile.mkdtemp(prefix="scopegate-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


class Supervisor:
    def __init__(self, count: int, argv: Sequence[str], metrics_dir: str, jwks: bytes | None = None) -> None:
        self.count = count
        self.jwks = jwks  # the identity assertions' keys, served on the one ops port (ops/health.py)
        self.argv = list(argv)
        self.metrics_dir = metrics_dir
        self.procs: dict[int, asyncio.subprocess.Process] = {}  # slot -> running worker
        self.ready: set[int] = set()  # slots whose worker listens
        self.seals: dict[int, bytes] = {}  # slot -> the last seal its worker wrote to stdout (for its successor)
        self.restarts = 0
        self.stopping = asyncio.Event()
        self._store: Store | None = None  # the ops listener's, for /readyz

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        env = {**os.environ, WORKER_MARK: str(slot)}
        if slot in self.seals:
            env[PREDECESSOR_ENV] = self.seals[slot].strip().decode()
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", *self.argv, env=env, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT)

    async def _relay(self, slot: int, proc: asyncio.subprocess.Process) -> None:
        """A worker's stdout (its audit records) to ours, whole lines only; the READY line says it listens. That
        line is not its first with the stdout audit sink: the genesis is written before the worker listens."""
        assert proc.stdout is not None
        out = sys.stdout.buffer
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line past LINE_LIMIT: pass what was read, never half a line of someone else's
                line = await proc.stdout.read(LINE_LIMIT)
            if not line:
                return
            if line == READY:
                self.ready.add(slot)
                continue
            if line.startswith(SEAL_PREFIXES):  # one prefix test per line: seals are written first-key-first
                self.seals[slot] = line
            out.write(line)
            out.flush()

    async def _keep(self, slot: int) -> None:
        """Keep one worker running until the supervisor stops."""
        from prometheus_client import multiprocess

        pause = FIRST_PAUSE
        while not self.stopping.is_set():
            started = time.monotonic()
            proc = await self._spawn(slot)
            self.procs[slot] = proc
            relay = asyncio.ensure_future(self._relay(slot, proc))
            code = await proc.wait()
            self.ready.discard(slot)
            await relay
            multiprocess.mark_process_dead(proc.pid, self.metrics_dir)  # its live gauges stop counting
            del self.procs[slot]
            if self.stopping.is_set():
                return
            self.restarts += 1
            pause = FIRST_PAUSE if time.monotonic() - started >= HEALTHY_AFTER else pause
            print(f"scopegate: worker {slot} (pid {proc.pid}) exited with {code}; starting it again in {pause:g} s",
                  file=sys.stderr, flush=True)
            try:
                await asyncio.wait_for(self.stopping.wait(), pause)
                return
            except TimeoutError:
                pause = min(pause * 2, LONGEST_PAUSE)

    def _signal_all(self, signum: int) -> None:
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    async def check(self) -> str | None:
        """For /readyz: every worker listens."""
        if len(self.ready) < self.count:
            return f"{len(self.ready)} of {self.count} workers listen"
        return None

    async def run(self, config: Config) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)
        ops = await self._serve_ops(config) if config.metrics_listen is not None else None
        keepers = [asyncio.ensure_future(self._keep(slot)) for slot in range(self.count)]
        try:
            await self.stopping.wait()
            self._signal_all(signal.SIGTERM)
            _, pending = await asyncio.wait(keepers, timeout=STOP_WAIT)
            if pending:
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=STOP_WAIT)
        finally:
            if ops is not None:
                await ops.cleanup()
            if self._store is not None:
                await self._store.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 0

    async def _serve_ops(self, config: Config) -> web.AppRunner:
        """The one ops listener: /metrics summed over workers, /healthz, /readyz (upstream, Redis, workers)."""
        from prometheus_client import CollectorRegistry, Info, PlatformCollector, ProcessCollector
        from prometheus_client.multiprocess import MultiProcessCollector

        from proxy import __version__
        from proxy.ops.health import ops_app, store_check, upstream_check
        from proxy.store import open_store

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.metrics_dir)
        Info("scopegate_build", "scopegate version", registry=registry).info({"version": __version__})
        ProcessCollector(registry=registry)  # the supervisor's own process_* (each worker's stay with it)
        PlatformCollector(registry=registry)
        self._store = open_store(config.redis_url, lambda: None)
        checks = {"upstream": upstream_check(config.upstream), "redis": store_check(self._store),
                  "workers": self.check}

        def details() -> dict[str, object]:
            return {"workers": self.count, "listening": len(self.ready), "restarts": self.restarts}

        runner = web.AppRunner(ops_app(registry, checks, details, self.jwks), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, *config.metrics_listen).start()
        return runner


def supervise(config: Config, argv: Sequence[str], metrics_dir: str, jwks: bytes | None = None) -> int:
    """Run `config.workers` workers until SIGTERM; the exit status. `jwks`: see Supervisor."""
    return asyncio.run(Supervisor(config.workers, argv, metrics_dir, jwks).run(config))
