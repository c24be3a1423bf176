"""The audit trail: a record for each decision kind, chains that catch an edited, deleted or reordered record, the
Redis Stream sink, and no secret or token anywhere in what a run wrote (audit records and logs)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict

from proxy.ops.trail import write_key_pair
from tests.conftest import TOKENS, Recorder
from tests.test_operations import VENDOR, call

SECRET_APP_TOKEN = "app-token-never-printed-7f3a"


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[str, str]:
    write_key_pair(str(tmp_path / "audit.key"), str(tmp_path / "audit.pub"))
    return str(tmp_path / "audit.key"), str(tmp_path / "audit.pub")


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
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            signing_key: tuple[str, str]) -> None:
    caplog.set_level(logging.DEBUG)
    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, audit_sink=f"file:{trail}", audit_signing_key_file=signing_key[0],
                            env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": SECRET_APP_TOKEN})
    await scripted_session(url)
    await flush(start_proxy)
    live = cli("audit", "verify", str(trail), "--key", signing_key[1])  # a running chain: whole, its tail unsealed
    assert live.returncode == 0 and "unsealed" in live.stdout, live.stdout
    await start_proxy.runners.pop().cleanup()  # shutdown seals the chain
    everything = [orjson.loads(line) for line in trail.read_text().splitlines()]
    assert everything[0]["type"] == "genesis" and everything[-1]["type"] == "checkpoint"
    assert everything[-1]["final"] is True and everything[-1]["count"] == len(everything) - 1
    assert everything[0]["signature"] and everything[0]["process"]["pid"] == os.getpid()
    records = [r for r in everything if "decision" in r]
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

    done = cli("audit", "verify", str(trail), "--key", signing_key[1])
    assert done.returncode == 0 and f"ok: {len(everything)} records in 1 chain" in done.stdout, done.stdout
    assert "note" not in done.stdout  # closed: nothing unsealed

    # Nothing secret in the trail or the logs: no token, no server-side header, no raw argument value.
    written = trail.read_text() + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (*TOKENS.values(), SECRET_APP_TOKEN, "DE89370400440532013000", "Paper Co",
                   "sgc_"):  # every confirmation token starts so
        assert secret not in written

    lines = trail.read_text().splitlines()
    tampered = orjson.dumps({**orjson.loads(lines[3]), "decision": "allow"}).decode()  # a deny made to look fine
    trail.write_text("\n".join([*lines[:3], tampered, *lines[4:]]) + "\n")
    done = cli("audit", "verify", str(trail), "--key", signing_key[1])
    assert done.returncode == 1 and "BROKEN: record 4 " in done.stdout and "edited" in done.stdout
    trail.write_text("\n".join([*lines[:3], *lines[4:]]) + "\n")
    assert "(deleted)" in cli("audit", "verify", str(trail), "--key", signing_key[1]).stdout


async def test_redis_stream_sink(start_proxy: Any, upstream: Any, recorder: Recorder, redis_server: Any,
                                 signing_key: tuple[str, str]) -> None:
    settings = {"redis_url": redis_server.url, "audit_sink": "redis", "audit_signing_key_file": signing_key[0]}
    first = await start_proxy(upstream.url, **settings)
    second = await start_proxy(upstream.url, **settings)
    await scripted_session(first)
    await call(second, "list_accounts", {"workspaceId": "acme"})
    await flush(start_proxy)
    done = cli("audit", "verify", "--redis", redis_server.url, "--key", signing_key[1])
    assert done.returncode == 0 and "in 2 chains" in done.stdout, done.stdout + done.stderr
    for runner in start_proxy.runners:
        await runner.cleanup()
    start_proxy.runners.clear()
    await start_proxy(upstream.url, **settings)  # a restart on the same host: its genesis names its predecessor
    await flush(start_proxy)
    done = cli("audit", "verify", "--redis", redis_server.url, "--key", signing_key[1])
    assert done.returncode == 0 and "in 3 chains" in done.stdout, done.stdout + done.stderr
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_server.url)
    entries = [orjson.loads(fields[b"record"]) for _, fields in await redis.xrange("scopegate:audit")]
    await redis.aclose()
    newest = entries[-1]
    assert newest["type"] == "genesis" and newest["predecessor"]["chain"] in {e["chain"] for e in entries[:-1]}
    finals = [e for e in entries if e.get("final")]
    assert newest["predecessor"]["hash"] in {e["hash"] for e in finals}


async def test_raw_arguments_only_when_configured(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                  tmp_path: Path) -> None:
    plain, raw = tmp_path / "plain.jsonl", tmp_path / "raw.jsonl"
    stray = "cft_" + "s" * 40  # a confirmation token on a read call: never stripped by the confirm guard
    for path, setting in ((plain, False), (raw, True)):
        url = await start_proxy(upstream.url, audit_sink=f"file:{path}", audit_arguments=setting)
        await call(url, "list_accounts", {"workspaceId": "acme"})
        await call(url, "list_accounts", {"workspaceId": "acme", "confirmationToken": stray})
    await flush(start_proxy)
    assert "arguments\"" not in plain.read_text()
    records = [r for r in map(orjson.loads, raw.read_text().splitlines()) if "decision" in r]
    assert [r["arguments"] for r in records] == [{"workspaceId": "acme"}] * 2  # a token is a secret: never raw
    assert stray not in raw.read_text() and len({r["arguments_digest"] for r in records}) == 1


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
    records = [r for r in map(orjson.loads, trail.read_text().splitlines()) if "decision" in r]
    assert [(r["decision"], r["method"]) for r in records] == [
        ("deny", "POST"), ("deny", "POST"), ("unauthenticated", "POST"), ("invalid", "POST"), ("invalid", "POST"),
        ("invalid", "POST")]
    assert records[0]["reason"] == "Host not allowed" and "x-app-token" in records[1]["reason"]
    assert records[1]["credential_id"] is None  # refused before authentication: who it was is not known yet
    assert records[5]["reason"] == "body too large" and all(r["request_id"] for r in records)
    assert "guess" not in trail.read_text()


def test_a_record_that_cannot_be_fully_built_is_written_with_an_error() -> None:
    from proxy.exchange import Exchange, Outcome
    from proxy.ops.audit import build_record, serialisable

    exchange = Exchange(request_id="r1", session_id=None, protocol_version=None, upstream_headers=CIMultiDict())
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    for arguments, says in (({"amount": float("nan")}, "not finite"), ({"amount": 10**20 + 1}, "64 bits"),
                            ({"nested": deep}, "nested deeper")):
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pay", "arguments": arguments}}
        record = build_record(exchange, Outcome(message, "allow", ""), 0.001, 0.0, raw_arguments=True)
        assert record["decision"] == "allow" and record["target"] == "pay" and record["request_id"] == "r1"
        assert record["arguments_digest"] is None and says in record["error"], record["error"]
        orjson.dumps(record)  # what is written serialises: the raw arguments that could not were left out
        assert record["arguments"] is None
    odd = serialisable({"decision": "allow", "arguments": {"n": 10**30}, "error": "arguments digest: x"})
    assert odd["arguments"] is None and odd["decision"] == "allow" and "arguments: not serialisable" in odd["error"]
    fine = build_record(exchange, Outcome({"method": "tools/call", "params": {"name": "pay", "arguments": {
        "amount": 1e20}}}, "allow", ""), 0.001, 0.0)
    assert fine["arguments_digest"] and "error" not in fine


class FlakySink:
    """A sink that fails `failures` writes, then works: what the writer does when the disk or Redis has a bad
    moment."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.lines: list[bytes] = []

    async def write(self, lines: list[tuple[str, bytes]]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        self.lines.extend(line for _, line in lines)

    async def last_checkpoint(self, slot: int = 0) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_a_failing_sink_is_retried_counted_logged_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    from proxy.exchange import Exchange, Outcome
    from proxy.ops.audit import AuditWriter
    from proxy.ops.metrics import Metrics
    from proxy.ops.trail import Chain, verify

    key = Ed25519PrivateKey.generate()
    metrics, sink = Metrics(), FlakySink(failures=2)
    writer = AuditWriter(sink, Chain(key, every=5), metrics)  # type: ignore[arg-type]
    await writer.start()  # two failures, then the retry within the same write succeeds
    assert len(sink.lines) == 1 and metrics.audit_write_failures._value.get() == 0
    sink.failures = 5  # longer than one write's retries: counted, logged, kept
    for n in range(12):
        exchange = Exchange(request_id=f"r{n}", session_id=None, protocol_version=None,
                            upstream_headers=CIMultiDict())
        exchange.outcomes.append(Outcome({"method": "ping"}, "allow", ""))
        writer.add(exchange, 0.001)
    await writer.flush()
    assert len(sink.lines) == 1 and metrics.audit_write_failures._value.get() == 1
    assert metrics.audit_pending._value.get() == 12 + 2  # and two checkpoints (every 5)
    assert any("audit sink failed (OSError)" in r.getMessage() for r in caplog.records)
    await writer.close()  # the sink is back: everything is written, in order, and sealed
    records = [orjson.loads(line) for line in sink.lines]
    assert [r["request_id"] for r in records if "decision" in r] == [f"r{n}" for n in range(12)]
    report = verify(records, key.public_key())
    assert report.whole and report.records == 1 + 12 + 3 and records[-1]["final"] is True


async def test_records_written_equal_decisions_under_concurrent_load(start_proxy: Any, upstream: Any,
                                                                      recorder: Recorder, tmp_path: Path) -> None:
    from tests.test_operations import scrape

    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, audit_sink=f"file:{trail}")
    bodies = [{"workspaceId": "acme"}, {"workspaceId": "acme", "amount": 1e20}, {"workspaceId": "elsewhere"}]
    calls = [call(url, "list_accounts", bodies[n % 3], token=None if n % 7 == 0 else TOKENS["writer"])
             for n in range(150)]
    await asyncio.gather(*calls, *(call(url, "create_vendor", VENDOR) for _ in range(30)))
    from proxy.edge.app import OPS_PORT

    samples = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    decisions = sum(v for (name, _), v in samples.items() if name == "scopegate_requests_total")
    await start_proxy.runners.pop().cleanup()
    records = [r for r in map(orjson.loads, trail.read_text().splitlines()) if "decision" in r]
    assert decisions == len(records) == 180
    assert not [r for r in records if "error" in r]  # 1e20 included: every record whole


async def test_unauthenticated_refusals_past_the_rate_are_folded(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                                 redis_server: Any,
                                                                 signing_key: tuple[str, str]) -> None:
    """Anyone's requests without a credential cannot push the proof of others' calls out of the trimmed stream:
    past 10 a second (bursts of 100) they are counted in a `folded` record, and the trail still verifies."""
    from redis.asyncio import Redis

    url = await start_proxy(upstream.url, redis_url=redis_server.url, audit_sink="redis",
                            audit_signing_key_file=signing_key[0])
    started = time.monotonic()
    flood = [call(url, "list_accounts", {"workspaceId": "acme"}, token=None) for _ in range(400)]
    await asyncio.gather(*flood, *(call(url, "list_accounts", {"workspaceId": "acme"}) for _ in range(20)))
    elapsed = time.monotonic() - started
    await start_proxy.runners.pop().cleanup()  # the final seal writes the folded record
    redis = Redis.from_url(redis_server.url)
    records = [orjson.loads(fields[b"record"]) for _, fields in await redis.xrange("scopegate:audit")]
    await redis.aclose()
    decisions = [r for r in records if "decision" in r]
    alone = [r for r in decisions if r["decision"] == "unauthenticated"]
    (folded,) = [r for r in decisions if r["decision"] == "folded"]
    assert len(alone) <= 100 + 10 * elapsed + 1 and len(alone) + folded["count"] == 400, (len(alone), elapsed)
    assert folded["refusals"] == {"unauthenticated: no bearer": folded["count"]} and folded["first"] <= folded["last"]
    assert len([r for r in decisions if r["decision"] == "allow"]) == 20  # every authenticated call, one by one
    done = cli("audit", "verify", "--redis", redis_server.url, "--key", signing_key[1])
    assert done.returncode == 0 and f"ok: {len(records)} records in 1 chain" in done.stdout, done.stdout


async def test_the_fold_bounds_what_a_flood_writes() -> None:
    from proxy.exchange import Exchange, Outcome
    from proxy.identity.principal import Principal
    from proxy.ops.audit import AuditWriter
    from proxy.ops.metrics import Metrics
    from proxy.ops.trail import Chain, verify

    key = Ed25519PrivateKey.generate()
    metrics, sink = Metrics(), FlakySink(failures=0)
    writer = AuditWriter(sink, Chain(key, every=1000), metrics)  # type: ignore[arg-type]
    await writer.start()
    for n in range(1000):
        exchange = Exchange(request_id=f"r{n}", session_id=None, protocol_version=None,
                            upstream_headers=CIMultiDict())
        if n % 100 == 0:  # an authenticated refusal is never folded, nor is an allow without a credential
            exchange.principal = Principal(subject="s", credential_id="c", label="l", kind="pat", scopes=frozenset())
        exchange.outcomes.append(Outcome({"method": "POST"}, "unauthenticated" if n % 100 != 50 else "allow",
                                         "no bearer" if n % 3 else "unknown"))
        writer.add(exchange, 0.001)
    await writer.close()
    records = [orjson.loads(line) for line in sink.lines]
    assert verify(records, key.public_key()).whole
    (folded,) = [r for r in records if r.get("decision") == "folded"]
    written = [r for r in records if r.get("decision") in ("unauthenticated", "allow")]
    assert 120 <= len(written) <= 125 and len(written) + folded["count"] == 1000  # 100 burst, 10+10 never folded
    assert sum(folded["refusals"].values()) == folded["count"] == metrics.audit_folded._value.get()
    assert set(folded["refusals"]) == {"unauthenticated: no bearer", "unauthenticated: unknown"}


async def test_an_anchor_outside_the_trail_finds_a_rollback(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                            tmp_path: Path, redis_server: Any,
                                                            signing_key: tuple[str, str]) -> None:
    """SCOPEGATE_AUDIT_ANCHOR gets every seal once the trail holds it; the Redis sink says how full its stream is."""
    from proxy.edge.app import OPS_PORT
    from tests.test_operations import scrape, value

    trail, anchor = tmp_path / "audit.jsonl", tmp_path / "anchor.jsonl"
    url = await start_proxy(upstream.url, audit_sink=f"file:{trail}", audit_anchor=f"file:{anchor}",
                            audit_signing_key_file=signing_key[0], audit_checkpoint_records=3)
    for _ in range(4):
        await call(url, "list_accounts", {"workspaceId": "acme"})
    await flush(start_proxy)
    older = trail.read_bytes()  # a copy taken now: whole by itself
    for _ in range(4):
        await call(url, "list_accounts", {"workspaceId": "acme"})
    await start_proxy.runners.pop().cleanup()
    seals = [orjson.loads(line) for line in anchor.read_bytes().splitlines()]
    trail_seals = [r for r in map(orjson.loads, trail.read_bytes().splitlines()) if r.get("type")]
    assert seals == trail_seals and seals[-1]["final"] is True and len(seals) >= 4
    ok = cli("audit", "verify", str(trail), "--key", signing_key[1], "--anchor", str(anchor))
    assert ok.returncode == 0 and "and what was kept outside it" in ok.stdout, ok.stdout
    trail.write_bytes(older)  # rolled back
    assert cli("audit", "verify", str(trail), "--key", signing_key[1]).returncode == 0  # alone, it cannot tell
    done = cli("audit", "verify", str(trail), "--key", signing_key[1], "--anchor", str(anchor))
    assert done.returncode == 1 and "but the anchor names its seq" in done.stdout, done.stdout

    url = await start_proxy(upstream.url, redis_url=redis_server.url, audit_sink="redis")
    samples = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    assert value(samples, "scopegate_audit_stream_fill_ratio") == 1 / 1_000_000  # its genesis, the only entry


def test_the_anchor_is_not_the_sink(tmp_path: Path) -> None:
    from proxy.config import ConfigError, load

    base = {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:9/mcp"}
    for sink, anchor, says in (("stdout", "stdout", "the audit sink itself"),
                               (f"file:{tmp_path}/a", f"file:{tmp_path}/a", "the audit sink itself"),
                               ("stdout", "redis", "expected stdout or file:PATH"),
                               ("stdout", f"file:{tmp_path}/missing/a", "no writable directory")):
        with pytest.raises(ConfigError, match=says):
            load({**base, "SCOPEGATE_AUDIT_SINK": sink, "SCOPEGATE_AUDIT_ANCHOR": anchor}, {})
    assert load({**base, "SCOPEGATE_AUDIT_ANCHOR": f"file:{tmp_path}/a"}, {}).audit_anchor == f"file:{tmp_path}/a"
