"""Worker mode: `scopegate serve` with SCOPEGATE_WORKERS=2 and a private redis-server, as in production.

The suite's multi-replica guarantees, run against two workers behind one port (each request on a connection of its
own, so the kernel spreads them): a preview made on one worker is confirmed once on whichever the confirmation
reaches; a session opened through one belongs to its credential on every one; a revocation in Redis reaches both.
Then what worker mode adds: metrics summed over workers on the supervisor's ops port, one audit chain per worker
that `audit verify` checks, a killed worker started again, SIGHUP and SIGTERM reaching every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import cgroup_cpus
from proxy.demo.run import free_port
from tests.conftest import POLICIES, TOKENS, Recorder, RedisServer, modern_headers, wait_until


def test_auto_is_the_cgroup_quota() -> None:
    assert cgroup_cpus("max 100000\n", 8) == 8
    assert cgroup_cpus("200000 100000\n", 8) == 2
    assert cgroup_cpus("150000 100000", 8) == 2  # a part of a CPU is worth a worker
    assert cgroup_cpus("400000 100000", 2) == 2  # never more than the CPUs it may run on
    assert cgroup_cpus("50000 100000", 4) == 1
    assert cgroup_cpus(None, 3) == 3
    assert cgroup_cpus("garbage", 0) == 1


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}


def test_several_workers_need_redis(pat_file: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--upstream", "http://127.0.0.1:9/mcp", "--pat-file", pat_file,
         "--policy", str(POLICIES / "pat-workspaces.yaml")],
        env={**_env(), "SCOPEGATE_WORKERS": "2"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "SCOPEGATE_REDIS_URL" in done.stderr, done.stderr
    assert "sessions" in done.stderr and "Traceback" not in done.stderr


@dataclass
class Workers:
    process: subprocess.Popen[bytes]
    url: str
    ops: str
    audit: Path

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []


@contextlib.asynccontextmanager
async def serving(upstream: Any, pat_file: str, tmp_path: Path, sink: str = "file",
                  extra: tuple[str, ...] = ()) -> AsyncIterator[Workers]:
    """`scopegate serve` with two workers and a private redis-server; the audit trail in a file (`sink` file) or
    what the supervisor writes to stdout (`sink` stdout)."""
    redis = RedisServer(tmp_path / "redis-dir")
    redis.folder.mkdir()
    redis.start()
    port, ops_port = free_port(), free_port()
    audit = tmp_path / "audit.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_bytes((POLICIES / "pat-workspaces.yaml").read_bytes())
    key = tmp_path / "audit.key"
    subprocess.run([sys.executable, "-m", "proxy", "audit", "keygen", str(key)], env=_env(), check=True,
                   capture_output=True, timeout=30)
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--upstream", upstream.url, "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", f"127.0.0.1:{ops_port}", "--pat-file", pat_file, "--policy", str(policy),
         "--redis-url", redis.url, "--audit-sink", f"file:{audit}" if sink == "file" else "stdout",
         "--audit-signing-key-file", str(key), "--log-level", "warning", *extra],
        env={**_env(), "SCOPEGATE_WORKERS": "2"}, stderr=(tmp_path / "stderr.log").open("wb"),
        stdout=audit.open("wb") if sink == "stdout" else None)
    found = Workers(process, f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{ops_port}", audit)
    try:
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                try:
                    async with http.get(found.ops + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = time.monotonic() + 60
            while not await ready():
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()
                await asyncio.sleep(0.2)
        yield found
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        redis.stop()


@pytest.fixture
async def workers(upstream: Any, recorder: Recorder, pat_file: str, tmp_path: Path) -> AsyncIterator[Workers]:
    async with serving(upstream, pat_file, tmp_path) as found:
        yield found


async def post(url: str, body: dict[str, Any], token: str = TOKENS["writer"], session: str | None = None,
               version: str = "2026-07-28") -> tuple[int, dict[str, str], Any]:
    """One request on a connection of its own: the kernel picks the worker."""
    name = body.get("params", {}).get("name")
    headers = {**modern_headers(body.get("method", ""), name), "Authorization": f"Bearer {token}",
               "MCP-Protocol-Version": version}
    if session:
        headers["Mcp-Session-Id"] = session
    async with (aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                http.post(url, data=orjson.dumps(body), headers=headers) as resp):
        raw = await resp.read()
        payload: Any = None
        if raw.startswith(b"{") or raw.startswith(b"["):
            payload = orjson.loads(raw)
        else:  # an SSE stream: the event carrying the response
            for line in raw.splitlines():
                if line.startswith(b"data:") and line[5:].strip().startswith(b"{"):
                    message = orjson.loads(line[5:])
                    payload = message if "id" in message else payload
        return resp.status, dict(resp.headers), payload


META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
LISTING = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": META}}  # 2026-07-28: no session


def _call(msg_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": META}}


async def test_two_workers_keep_every_multi_replica_guarantee(workers: Workers, recorder: Recorder,
                                                              pat_file: str) -> None:
    assert len(workers.children()) == 2
    # Confirmation: previews made on one worker, confirmed on whichever the next connection reaches, once.
    for n in range(6):
        args = {"workspaceId": "acme", "name": f"Vendor {n}", "iban": "DE00123"}
        status, _, answer = await post(workers.url, _call(1, "create_vendor", args))
        assert status == 200, answer
        token = answer["result"]["structuredContent"]["confirmationToken"]
        before = len(recorder.calls("tools/call"))
        status, _, applied = await post(workers.url, _call(2, "create_vendor", {**args, "confirmationToken": token}))
        assert status == 200 and "error" not in applied and not applied["result"].get("isError"), applied
        assert len(recorder.calls("tools/call")) == before + 1
        status, _, again = await post(workers.url, _call(3, "create_vendor", {**args, "confirmationToken": token}))
        assert "error" in again or again["result"].get("isError"), again  # the token was used: refused
        assert len(recorder.calls("tools/call")) == before + 1  # and never applied twice
    # Sessions: opened by the writer, refused to another credential on every worker, the owner's everywhere.
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    status, headers, _ = await post(workers.url, init, version="2025-11-25")
    session = headers["mcp-session-id"] if "mcp-session-id" in headers else headers["Mcp-Session-Id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    for _ in range(6):
        status, _, _ = await post(workers.url, listing, token=TOKENS["other"], session=session, version="2025-11-25")
        assert status == 404
        status, _, answer = await post(workers.url, listing, session=session, version="2025-11-25")
        assert status == 200 and answer["result"]["tools"], answer
    # Revocation in Redis reaches both workers.
    assert (await post(workers.url, LISTING, token=TOKENS["other"]))[0] == 200
    other_id = TOKENS["other"].split("_")[1]
    copy = Path(pat_file).with_name("operators.yaml")
    copy.write_bytes(Path(pat_file).read_bytes())
    redis_url = next(a for a in workers.process.args if str(a).startswith("unix://"))  # type: ignore[union-attr]
    done = subprocess.run([sys.executable, "-m", "proxy", "pat", "revoke", other_id, "--file", str(copy)],
                          env={**_env(), "SCOPEGATE_REDIS_URL": str(redis_url)}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    for _ in range(6):
        assert (await post(workers.url, LISTING, token=TOKENS["other"]))[0] == 401


async def _metric(ops: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(ops + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_metrics_are_summed_and_every_worker_audits_its_own_chain(workers: Workers) -> None:
    listing = LISTING
    before = await _metric(workers.ops, "scopegate_requests_total", method="tools/list")
    for _ in range(30):
        assert (await post(workers.url, listing))[0] == 200
    assert await _metric(workers.ops, "scopegate_requests_total", method="tools/list") == before + 30
    assert await wait_until(lambda: workers.audit.exists() and workers.audit.read_bytes().count(b"\n") >= 30, 10)
    lines = workers.audit.read_bytes().splitlines()
    assert all(line.startswith(b"{") and line.endswith(b"}") for line in lines)  # no line cut into by another
    chains = {orjson.loads(line)["chain"] for line in lines}
    assert len(chains) == 2  # 30 connections: both workers served some, each its own chain
    pub = str(workers.audit.with_name("audit.key.pub"))
    done = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", "--key", pub, str(workers.audit)],
                          env=_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "2 chains" in done.stdout, done.stdout + done.stderr


async def test_a_dead_worker_is_replaced_and_signals_reach_all(workers: Workers) -> None:
    listing = LISTING
    first = workers.children()
    os.kill(first[0], signal.SIGKILL)
    assert await wait_until(lambda: len(workers.children()) == 2 and first[0] not in workers.children(), 20)
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:  # ready again once the new worker listens
            async with http.get(workers.ops + "/readyz") as resp:
                if resp.status == 200:
                    break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    for _ in range(10):
        assert (await post(workers.url, listing))[0] == 200
    # SIGHUP: every worker reloads its policy (each counts one success).
    before = await _metric(workers.ops, "scopegate_policy_reloads_total", result="success")
    workers.process.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return await _metric(workers.ops, "scopegate_policy_reloads_total", result="success") == before + 2

    deadline = time.monotonic() + 15
    while not await reloaded():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    # SIGTERM: everyone leaves, cleanly.
    children = workers.children()
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(timeout=20) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


@pytest.mark.parametrize("sink", ["file", "stdout"])
async def test_a_restarted_worker_chains_to_its_own_slot(upstream: Any, recorder: Recorder, pat_file: str,
                                                         tmp_path: Path, sink: str) -> None:
    """A worker killed and started again: its new chain's genesis names the last seal of the killed worker's chain
    (not the other worker's, still running), so the trail verifies once the dead chain's last seal is long past."""
    async with serving(upstream, pat_file, tmp_path, sink, ("--audit-checkpoint-seconds", "1")) as found:
        def seals() -> list[dict[str, Any]]:
            lines = found.audit.read_bytes().splitlines() if found.audit.exists() else []
            return [r for r in map(orjson.loads, lines) if r.get("type") in ("genesis", "checkpoint")]

        assert await wait_until(lambda: len({r["chain"] for r in seals()}) == 2, 10)
        first = {r["chain"] for r in seals()}
        victim = found.children()[0]
        (dead,) = [r["chain"] for r in seals() if r["type"] == "genesis" and r["process"]["pid"] == victim]
        for _ in range(6):
            assert (await post(found.url, LISTING))[0] == 200
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        assert await wait_until(lambda: len({r["chain"] for r in seals()}) == 3, 30)
        (successor,) = [r for r in seals() if r["type"] == "genesis" and r["chain"] not in first]
        assert successor["predecessor"] is not None, "the restarted worker names no predecessor"
        last_seal = [r for r in seals() if r["chain"] == dead][-1]
        assert successor["predecessor"]["chain"] == dead and successor["predecessor"]["hash"] == last_seal["hash"]
        assert successor["slot"] == last_seal["slot"]
        await asyncio.sleep(max(0.0, 8 - (time.monotonic() - killed)))  # the dead chain's seal is now > 2T + 5 s old
        pub = str(tmp_path / "audit.key.pub")
        done = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", "--key", pub, str(found.audit)],
                              env=_env(), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "3 chains" in done.stdout, done.stdout + done.stderr
        assert f"chain {dead}: ended without a final checkpoint" in done.stdout
