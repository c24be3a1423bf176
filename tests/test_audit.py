"""The audit trail: a record for each decision kind, chains that catch an edited, deleted or reordered record, the
Redis Stream sink, and no secret or token anywhere in what a run wrote (audit records and logs)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.ops.audit import Chain, verify
from tests.conftest import TOKENS, Recorder
from tests.test_operations import VENDOR, call

SECRET_APP_TOKEN = "app-token-never-printed-7f3a"


def test_chain_catches_edits_deletions_and_reordering() -> None:
    chain, other = Chain("a"), Chain("b")
    records = [chain.link({"n": 1}), other.link({"n": 1}), chain.link({"n": 2}), chain.link({"n": 3})]
    assert verify(records) == (4, None)  # two interleaved chains, each whole
    edited = [*records[:2], {**records[2], "n": 99}, records[3]]
    assert "altered" in verify(edited)[1] and verify(edited)[0] == 3
    assert "deleted or reordered" in verify([records[0], records[1], records[3]])[1]
    assert "deleted or reordered" in verify([records[0], records[1], records[3], records[2]])[1]
    forged = dict(records[3], prev="f" * 64)
    forged["hash"] = __import__("proxy.ops.audit", fromlist=["record_hash"]).record_hash(forged)
    assert "link to the previous record is broken" in verify([*records[:3], forged])[1]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    return subprocess.run([sys.executable, "-m", "proxy", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=30)


async def flush(start_proxy: Any) -> None:
    """Records are written in the background, in batches: write what is pending before reading the trail."""
    from proxy.edge.app import FORWARDER

    for runner in start_proxy.runners:
        await runner.app[FORWARDER].audit.flush()


async def scripted_session(url: str) -> None:
    await call(url, "list_accounts", {"workspaceId": "acme"}, token=None)  # unauthenticated
    await call(url, "list_accounts", {"workspaceId": "acme"})  # allow
    await call(url, "lock_period", {"workspaceId": "acme", "period": "2026-09"}, TOKENS["reader"])  # deny
    _, preview = await call(url, "create_vendor", {**VENDOR, "iban": "DE89370400440532013000"})  # preview
    token = preview["result"]["structuredContent"]["confirmationToken"]
    await call(url, "create_vendor", {**VENDOR, "iban": "DE89370400440532013000", "confirmationToken": token})
    await call(url, "create_vendor", {**VENDOR, "iban": "DE89370400440532013000", "confirmationToken": token})


async def test_a_record_for_each_decision_and_a_whole_chain(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, audit_sink=f"file:{trail}",
                            env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": SECRET_APP_TOKEN})
    await scripted_session(url)
    await flush(start_proxy)
    records = [orjson.loads(line) for line in trail.read_text().splitlines()]
    by_decision: dict[str, list[dict]] = {}
    for record in records:
        by_decision.setdefault(record["decision"], []).append(record)
    assert set(by_decision) >= {"unauthenticated", "allow", "deny", "preview", "confirm", "refuse"}
    denied = by_decision["deny"][0]
    assert denied["target"] == "lock_period" and denied["reason"] == "scope" and denied["kind"] == "pat"
    assert denied["label"] == "test reader" and denied["subject"] == "user-reader" and denied["request_id"]
    preview, confirmed = by_decision["preview"][0], by_decision["confirm"][0]
    assert confirmed["preview_id"] == preview["preview_id"]  # the apply points at its preview
    assert confirmed["upstream_status"] == 200 and confirmed["workspace"] == "acme"
    assert confirmed["arguments_digest"] == preview["arguments_digest"]
    assert by_decision["refuse"][0]["reason"] == "already used"
    assert by_decision["unauthenticated"][0]["reason"] == "no bearer"

    done = cli("audit", "verify", str(trail))
    assert done.returncode == 0 and f"ok: {len(records)} records in 1 chain" in done.stdout

    # Nothing secret in the trail or the logs: no token, no server-side header, no raw argument value.
    written = trail.read_text() + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (*TOKENS.values(), SECRET_APP_TOKEN, "DE89370400440532013000", "Paper Co",
                   "sgc_"):  # every confirmation token starts so
        assert secret not in written

    lines = trail.read_text().splitlines()
    tampered = orjson.dumps({**orjson.loads(lines[2]), "decision": "allow"}).decode()  # a deny made to look fine
    trail.write_text("\n".join([*lines[:2], tampered, *lines[3:]]) + "\n")
    done = cli("audit", "verify", str(trail))
    assert done.returncode == 1 and "BROKEN at record 3" in done.stdout and "altered" in done.stdout
    trail.write_text("\n".join([*lines[:2], *lines[3:]]) + "\n")
    assert "deleted or reordered" in cli("audit", "verify", str(trail)).stdout


async def test_redis_stream_sink(start_proxy: Any, upstream: Any, recorder: Recorder, redis_server: Any) -> None:
    first = await start_proxy(upstream.url, redis_url=redis_server.url, audit_sink="redis")
    second = await start_proxy(upstream.url, redis_url=redis_server.url, audit_sink="redis")
    await scripted_session(first)
    await call(second, "list_accounts", {"workspaceId": "acme"})
    await flush(start_proxy)
    done = cli("audit", "verify", "--redis", redis_server.url)
    assert done.returncode == 0 and "in 2 chains" in done.stdout, done.stdout + done.stderr


async def test_raw_arguments_only_when_configured(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                  tmp_path: Path) -> None:
    plain, raw = tmp_path / "plain.jsonl", tmp_path / "raw.jsonl"
    for path, setting in ((plain, False), (raw, True)):
        url = await start_proxy(upstream.url, audit_sink=f"file:{path}", audit_arguments=setting)
        await call(url, "list_accounts", {"workspaceId": "acme"})
    await flush(start_proxy)
    assert "arguments\"" not in plain.read_text()
    (record,) = [orjson.loads(line) for line in raw.read_text().splitlines()]
    assert record["arguments"] == {"workspaceId": "acme"}


async def test_every_refusal_is_a_record(start_proxy: Any, upstream: Any, recorder: Recorder, tmp_path: Path) -> None:
    """Refusals before any message is read (Host, a secret header, no credential, a malformed or oversized body)
    are decisions too: each leaves a record with what is known at that point."""
    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, audit_sink=f"file:{trail}", max_body_bytes=1000,
                            env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": SECRET_APP_TOKEN})
    writer = {"Authorization": f"Bearer {TOKENS['writer']}", "Content-Type": "application/json",
              "Accept": "application/json, text/event-stream"}
    attempts = [
        ({"Host": "evil.example"}, b"{}", 403),
        ({**writer, "x-app-token": "guess"}, b"{}", 400),
        ({"Content-Type": "application/json"}, b"{}", 401),
        (writer, b"{not json", 400),
        (writer, b"[" * 100 + b"]" * 100, 400),
        (writer, b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "' + b"x" * 2000 + b'"}}', 413),
    ]
    async with aiohttp.ClientSession() as http:
        for headers, body, status in attempts:
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == status
    await flush(start_proxy)
    records = [r for r in map(orjson.loads, trail.read_text().splitlines()) if r.get("decision")]
    assert [(r["decision"], r["method"]) for r in records] == [
        ("deny", "POST"), ("deny", "POST"), ("unauthenticated", "POST"), ("invalid", "POST"), ("invalid", "POST"),
        ("invalid", "POST")]
    assert records[0]["reason"] == "Host not allowed" and "x-app-token" in records[1]["reason"]
    assert records[1]["credential_id"] is None  # refused before authentication: who it was is not known yet
    assert records[5]["reason"] == "body too large" and all(r["request_id"] for r in records)
    assert "guess" not in trail.read_text()
