"""`scopegate demo` (what `make run` runs): the demo ledger upstream, scopegate in front of it, and what to try."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import orjson
from yarl import URL

from proxy.config import Config

_LIST_BODY = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
).decode()


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, seconds: float = 20.0) -> None:
    """Return once `process` listens on `port`; exit with a clear message if it dies or never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on port {port} within {seconds:.0f}s")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def main(port: int, upstream_port: int) -> None:
    for p in (port, upstream_port):
        if not _port_free(p):
            raise SystemExit(f"scopegate demo: port {p} is in use (choose others with --port / --upstream-port)")
    upstream = subprocess.Popen(
        [sys.executable, "-m", "proxy.demo.ledger", "--port", str(upstream_port)], stdin=subprocess.DEVNULL
    )
    try:
        wait_for_port(upstream_port, upstream, "scopegate demo: the demo upstream")
        url = f"http://127.0.0.1:{port}/mcp"
        print(
            f"""
scopegate demo
  proxy     {url}
  upstream  http://127.0.0.1:{upstream_port}/mcp   (the demo ledger, direct, for comparison)

No credentials yet: this build is the transparent foundation, so every call passes through unchanged.
Try, in another terminal (from this checkout):

  .venv/bin/python -m proxy.demo.try_it {url}

or with curl, one stateless (2026-07-28) request:

  curl -s {url} -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
    -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/list' \\
    -d '{_LIST_BODY}'

Ctrl-C stops both.
""",
            flush=True,
        )
        config = Config(upstream=URL(f"http://127.0.0.1:{upstream_port}/mcp"), listen=("127.0.0.1", port))
        from proxy.app import run
        from proxy.cli import _logging

        _logging("INFO")
        run(config)
    finally:
        upstream.terminate()
        try:
            upstream.wait(timeout=5)
        except subprocess.TimeoutExpired:
            upstream.kill()
