"""A Redis failover is not a credential outage (issue 23): a primary, a replica and a Sentinel (Debian's
redis-server, started here on loopback ports and stopped by PID). A revocation made before the primary dies still
holds after the Sentinel promotes the replica, and credentials that were good stay good."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.demo.run import free_port
from tests.conftest import TOKENS


def ask(port: int, *command: str) -> bytes:
    """One command in RESP, one read: enough for the few answers these tests look at."""
    payload = f"*{len(command)}\r\n".encode() + b"".join(
        f"${len(part.encode())}\r\n{part}\r\n".encode() for part in command)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(payload)
        return connection.recv(65536)


def wait_for(check: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Any:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed: apt-get install redis-server (see README)"
    primary, replica, sentinel = free_port(), free_port(), free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def run(name: str, *args: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        processes[name] = subprocess.Popen([binary, *args, "--dir", str(folder)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)

    common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
    run("primary", "--port", str(primary), *common)
    run("replica", "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(primary))
    wait_for(lambda: b"master_link_status:up" in ask(replica, "INFO", "replication"))
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {sentinel}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {primary} 1\n"
                      "sentinel down-after-milliseconds main 500\nsentinel failover-timeout main 5000\n")
    processes["sentinel"] = subprocess.Popen([binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, cwd=tmp_path)
    wait_for(lambda: b"num-slaves" in ask(sentinel, "SENTINEL", "master", "main")
             and b"\r\n1\r\n" in ask(sentinel, "SENTINEL", "master", "main").split(b"num-slaves")[1][:12])
    set_ = {"url": f"redis+sentinel://127.0.0.1:{sentinel}/main", "primary": primary, "replica": replica,
            "sentinel": sentinel, "processes": processes}
    yield set_
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


async def status(url: str, token: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                 "io.modelcontextprotocol/clientCapabilities": {}}}}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Mcp-Method": "tools/list",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28"}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as answer:
        return answer.status


async def test_revocations_made_before_a_failover_hold_after_it(sentinel_set: Any, start_proxy: Any,
                                                                upstream: Any, pat_file: str) -> None:
    url = await start_proxy(upstream.url, redis_url=sentinel_set["url"])
    assert await status(url, TOKENS["other"]) == 200
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")},
           "SCOPEGATE_REDIS_URL": sentinel_set["url"], "USER": "ops"}
    copy = Path(pat_file).with_name("operators-copy.yaml")  # the proxy's own registry stays as mounted: the
    copy.write_bytes(Path(pat_file).read_bytes())  # revocation lives in Redis only
    done = subprocess.run([sys.executable, "-m", "proxy", "pat", "revoke", TOKENS["other"].split("_")[1],
                           "--file", str(copy)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert await status(url, TOKENS["other"]) == 401
    os.kill(sentinel_set["processes"]["primary"].pid, signal.SIGKILL)  # the primary is gone, with what it held
    sentinel_set["processes"]["primary"].wait(timeout=10)
    wait_for(lambda: str(sentinel_set["replica"]).encode() in ask(
        sentinel_set["sentinel"], "SENTINEL", "get-master-addr-by-name", "main"))
    deadline = time.monotonic() + 20
    while await status(url, TOKENS["writer"]) != 200:  # a pause of seconds while the pool finds the new primary
        assert time.monotonic() < deadline, "the proxy never reached the promoted replica"
        await asyncio.sleep(0.2)
    assert await status(url, TOKENS["other"]) == 401  # the revocation survived the primary
    assert await status(url, TOKENS["writer"]) == 200


async def test_a_redis_that_evicts_keys_is_named_at_start(redis_server: Any, start_proxy: Any, upstream: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """An evicting Redis may drop a revocation when full, and the credential would work again: said at start."""
    import redis

    client = redis.Redis(unix_socket_path=redis_server.socket)
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    await start_proxy(upstream.url, redis_url=redis_server.url)
    assert "maxmemory-policy allkeys-lru" in caplog.text


async def test_a_redis_that_keeps_keys_is_not_named(redis_server: Any, start_proxy: Any, upstream: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    await start_proxy(upstream.url, redis_url=redis_server.url)
    assert "maxmemory-policy" not in caplog.text
