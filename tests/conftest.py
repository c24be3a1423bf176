"""Fixtures: the real demo MCP server (official SDK) behind a recorder, and scopegate started as in production.

The recorder sits at the upstream's HTTP edge and keeps exactly what the upstream received (method, headers, body
bytes), so tests assert on what reached the server, not on what the proxy meant to send.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from yarl import URL

from proxy.config import Config
from proxy.demo.event_store import resumable_app
from proxy.demo.ledger import build_server
from proxy.demo.run import free_port
from proxy.edge.app import start
from proxy.guards.pipeline import Pipeline
from proxy.identity.loader import Identity, load_identity
from proxy.identity.pats import Record, create_record, write_records


def _make_credentials() -> tuple[list[Record], dict[str, str]]:
    """Test credentials, made fresh for each run: name -> token. Records go into a registry file per test."""
    specs = {
        "writer": {"scopes": ["mcp:read", "mcp:write"]},
        "reader": {"scopes": ["mcp:read"], "workspace": "acme"},
        "other": {"scopes": ["mcp:read", "mcp:write"]},
        "expired": {"scopes": ["mcp:read"], "expires_in": 1},
        "revoked": {"scopes": ["mcp:read"]},
    }
    records, tokens = [], {}
    for name, spec in specs.items():
        record, token = create_record(kind="pat", label=f"test {name}", subject=f"user-{name}",
                                      scopes=spec["scopes"], workspace=spec.get("workspace"), workspaces=None,
                                      role=None, expires_in=spec.get("expires_in", 3600))
        if name == "revoked":
            record.revoked = True
        records.append(record)
        tokens[name] = token
    return records, tokens


RECORDS, TOKENS = _make_credentials()
POLICIES = Path(__file__).resolve().parent.parent / "policies"
AUTH = {"Authorization": f"Bearer {TOKENS['writer']}"}


@dataclass
class Received:
    method: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Recorder:
    """ASGI middleware around the upstream app: records every request and counts the ones still in flight."""

    app: Any
    received: list[Received] = field(default_factory=list)  # what clients' requests made the proxy send
    catalog: list[Received] = field(default_factory=list)  # the proxy's own tools/list fetches (guards/catalog.py)
    in_flight: int = 0
    extra_response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        record = Received(scope["method"], headers, b"")
        own = headers.get("x-request-id") == "scopegate-catalog"
        (self.catalog if own else self.received).append(record)
        chunks: list[bytes] = []

        async def recording_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                record.body = b"".join(chunks)
            return message

        async def decorating_send(message: dict) -> None:
            if message["type"] == "http.response.start" and self.extra_response_headers:
                message = {**message, "headers": [*message.get("headers", []), *self.extra_response_headers]}
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, recording_receive, decorating_send)
        finally:
            self.in_flight -= 1

    def posts(self) -> list[Received]:
        return [r for r in self.received if r.method == "POST"]

    def calls(self, method: str) -> list[Any]:
        """Bodies of the JSON-RPC messages with this method that reached the upstream (batch elements too)."""
        out = []
        for r in self.posts():
            payload = r.json()
            for msg in payload if isinstance(payload, list) else [payload]:
                if msg.get("method") == method:
                    out.append(msg)
        return out


@dataclass
class Upstream:
    url: str
    recorder: Recorder
    port: int


class ThreadedServer:
    """A uvicorn server on its own thread and event loop, so it never shares a loop with the code under test."""

    def __init__(self, app: Any, port: int) -> None:
        # A proxy still alive keeps its own listen stream open: stopping waits a second for it, not forever.
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("upstream did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def upstream() -> Any:
    port = free_port()
    app = resumable_app(build_server(), retry_interval=100)
    recorder = Recorder(app)
    server = ThreadedServer(recorder, port)
    server.start()
    yield Upstream(f"http://127.0.0.1:{port}/mcp", recorder, port)
    server.stop()


@pytest.fixture
def recorder(upstream: Upstream) -> Recorder:
    upstream.recorder.received.clear()
    upstream.recorder.catalog.clear()
    upstream.recorder.extra_response_headers.clear()
    return upstream.recorder


@pytest.fixture
def pat_file(tmp_path: Any) -> str:
    path = tmp_path / "pats.yaml"
    write_records(path, RECORDS)
    return str(path)


@pytest.fixture
async def start_proxy(pat_file: str) -> AsyncIterator[Callable[..., Any]]:
    """Start scopegate through the production `start` path; returns its MCP URL. Stopped at the end of the test.
    By default it trusts the test PAT registry; `env` feeds SCOPEGATE_UPSTREAM_HEADER_* style variables."""
    runners = []

    async def _start(upstream_url: str, pipeline: Pipeline | None = None, env: dict[str, str] | None = None,
                     **settings: Any) -> str:
        settings.setdefault("pat_file", pat_file)
        settings.setdefault("policy", str(POLICIES / "pat-workspaces.yaml"))
        settings.setdefault("metrics_listen", ("127.0.0.1", 0))  # several proxies at once: each its own port
        config = Config(upstream=URL(upstream_url), listen=("127.0.0.1", 0), **settings)
        identity: Identity = load_identity(config, env or {})
        runner, port = await start(config, identity, pipeline)
        runners.append(runner)
        scheme = "https" if config.tls else "http"
        return f"{scheme}://127.0.0.1:{port}{URL(upstream_url).path}"

    _start.runners = runners  # type: ignore[attr-defined]  # tests that need the app itself look here
    yield _start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def proxy_url(start_proxy: Callable[..., Any], upstream: Upstream, recorder: Recorder) -> str:
    return await start_proxy(upstream.url)


def sdk_client(url: str, mode: str, headers: dict[str, str] | None = None, token: str | None = TOKENS["writer"],
               **kwargs: Any) -> Client:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers={**auth, **(headers or {})}, timeout=30, **kwargs)
    return Client(streamable_http_client(url, http_client=http), mode=mode)


MODES = ["legacy", "auto"]

MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {
        **AUTH,
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def kernel_buffers(send: int) -> int:
    """The most the kernel may hold on a path whose reader stopped: one receive buffer (autotuned up to tcp_rmem's
    largest) and `send` send buffers (up to tcp_wmem's largest). Machines differ (16 MB on one, 40 MB on another),
    so backpressure tests size their streams from this, not from a constant."""
    try:
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        rmem = wmem = 8 * 1024 * 1024
    return rmem + send * wmem


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


@dataclass
class RedisServer:
    """A private redis-server on a unix socket: started by the tests, stopped by PID, never anyone else's."""

    folder: Any
    process: Any = None

    @property
    def socket(self) -> str:
        return str(self.folder / "redis.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        import shutil
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (see README)")
        self.process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.socket)
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def issue(tmp_path: Path) -> Any:
    """issue(name, **record fields) -> token; the registry file is at issue.path."""
    records = []
    path = tmp_path / "policy-pats.yaml"

    def _issue(name: str, scopes: list[str] | None = None, kind: str = "pat", workspace: str | None = None,
               role: str | None = None, workspaces: list[str] | None = None, subject: str | None = None,
               expires_in: int = 3600, **extra: Any) -> str:
        record, token = create_record(kind=kind, label=name, subject=subject or f"user-{name}", scopes=scopes or [],
                                      workspace=workspace, workspaces=workspaces, role=role, expires_in=expires_in,
                                      extra=extra)
        records.append(record)
        write_records(path, records)
        return token

    def _rewrite(**changes: Any) -> None:
        """Change records in the file as an operator would (`revoked`, `expires`...): by credential id."""
        for record in records:
            for field_name, value in changes.get(record.id, {}).items():
                setattr(record, field_name, value)
        write_records(path, records)

    _issue.path = str(path)  # type: ignore[attr-defined]
    _issue.rewrite = _rewrite  # type: ignore[attr-defined]
    return _issue


@pytest.fixture
def app_token_upstream() -> Any:
    from proxy.demo.event_store import resumable_app
    from proxy.demo.ledger import build_server, require_app_token

    port = free_port()
    app = resumable_app(build_server())
    server = ThreadedServer(require_app_token(app, "commerce-app-token-42"), port)
    server.start()
    yield f"http://127.0.0.1:{port}/mcp"
    server.stop()


def npm_installed(package: str, folder: Path, also: tuple[str, ...] = ()) -> Path:
    """`package` (name@version) installed once into `folder`, a git-ignored place the tests own; re-used while the
    pinned version stays the same. `also`: dependencies pinned beside it (npm then uses those, not its ranges'
    newest). Needs node and npm (Node 20 or newer)."""
    import shutil
    import subprocess

    npm = shutil.which("npm")
    assert npm is not None and shutil.which("node") is not None, "node and npm are needed (Node 20 or newer)"
    marker = folder / f".installed-{'+'.join(p.replace('/', '_') for p in (package, *also))}"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"private": true, "type": "module"}\n')
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", package, *also],
                              cwd=folder, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        marker.touch()
    return folder
