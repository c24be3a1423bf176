"""Logs carry their fields: `scopegate serve` is run as in production, a scripted session goes through it, and its
stderr is read back: every line is one JSON object, and the `extra` fields the code logs (reason, request_id) are
fields of those lines, not lost."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from proxy.ops.logs import JsonLogFormatter
from tests.conftest import POLICIES, TOKENS, free_port, wait_until


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def test_extra_fields_become_fields() -> None:
    record = logging.LogRecord("scopegate.test", logging.INFO, __file__, 1, "refused %s", ("x",), None)
    record.__dict__.update({"reason": "no bearer", "request_id": "r-1", "credential_id": "pat_1", "odd": object()})
    line = orjson.loads(JsonLogFormatter().format(record))
    assert line["message"] == "refused x" and line["level"] == "info" and line["logger"] == "scopegate.test"
    assert line["reason"] == "no bearer" and line["request_id"] == "r-1" and line["credential_id"] == "pat_1"
    assert "odd" in line and "args" not in line and "msg" not in line  # odd values as text; no LogRecord internals


async def test_a_scripted_session_logs_its_reasons_and_ids(pat_file: str, tmp_path: Path) -> None:
    port, dead = free_port(), free_port()  # the upstream is down: its failure must be logged with the request id
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    env.update({"SCOPEGATE_UPSTREAM": f"http://127.0.0.1:{dead}/mcp", "SCOPEGATE_LISTEN": f"127.0.0.1:{port}",
                "SCOPEGATE_PAT_FILE": pat_file, "SCOPEGATE_POLICY": str(POLICIES / "pat-workspaces.yaml"),
                "SCOPEGATE_METRICS_LISTEN": "127.0.0.1:0", "SCOPEGATE_AUDIT_SINK": f"file:{tmp_path / 'a.jsonl'}"})
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proxy = subprocess.Popen([sys.executable, "-m", "proxy", "serve"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=err)
    try:
        assert await wait_until(lambda: listening(port), 20), stderr.read_text()
        url = f"http://127.0.0.1:{port}/mcp"
        body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers={**headers, "X-Request-Id": "no-bearer-1"}) as resp:
                assert resp.status == 401
            async with http.post(url, data=body, headers={**headers, "X-Request-Id": "down-1",
                                                          "Authorization": f"Bearer {TOKENS['writer']}"}) as resp:
                assert resp.status == 502
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=20)
    time.sleep(0.1)
    lines = [orjson.loads(line) for line in stderr.read_bytes().splitlines() if line.strip()]  # all JSON
    by_request = {line.get("request_id"): line for line in lines}
    assert by_request["no-bearer-1"]["reason"] == "no bearer"
    assert by_request["down-1"]["message"].startswith("upstream unreachable") and by_request["down-1"]["level"] \
        == "warning"
    assert any("audit trail is NOT signed" in line["message"] for line in lines)
    assert TOKENS["writer"] not in stderr.read_text()
