"""The audit trail: one JSON record per decision, written in the background, chained and sealed (proxy/ops/trail.py).

A record says who (subject, credential id, label, kind), what (method, tool/prompt/resource, workspace, a digest
of the arguments: never the arguments or any token), the decision (allow, deny, preview, confirm, refuse, invalid,
unauthenticated, error) and why, the preview it applies, the upstream's status and the latency. A refusal before
authentication says what was known then (no caller).

Nothing is dropped: a record that cannot be fully built (a digest with no canonical form, a value that does not
serialise) is written with what is known and an `error` field; a sink that fails is retried, then the records wait
in a bounded buffer for the next write (counted and logged), so the trail has them in order once the sink is back.

Except what anyone could write without limit: refusals of requests that came without a credential (no principal)
past FOLD_RATE a second (bursts of FOLD_BURST) are counted, not recorded one by one, and a `folded` record says how
many, of which kinds, between when, before the next seal. Otherwise a flood of unauthenticated requests would push
the proof of everyone's calls out of a sink that trims (the Redis stream keeps ~1,000,000 entries).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from typing import Any

import orjson

from proxy import __version__
from proxy.canonical import TOKEN_ARGUMENT, NotCanonical, digest
from proxy.exchange import Exchange, Outcome
from proxy.memo import remember
from proxy.ops.metrics import Metrics
from proxy.ops.sinks import Line, Sink
from proxy.ops.trail import SEALS, Chain

log = logging.getLogger("scopegate.audit")

_second: tuple[int, str] = (0, "")


def timestamp(now: float) -> str:
    """ISO 8601 with milliseconds; the formatted second is reused (it is what costs)."""
    global _second
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(now * 1000) % 1000:03d}Z"


_session_hashes: dict[str, str] = {}  # a session's many records hash its id once (bounded: cleared when full)


def session_hash(session: str) -> str:
    hashed = _session_hashes.get(session)
    if hashed is None:
        hashed = remember(_session_hashes, session, hashlib.sha256(session.encode()).hexdigest()[:16], 10_000)
    return hashed


def decision_record(exchange: Exchange, message: dict[str, Any], decision: str, reason: str, latency: float,
                    now: float, raw_arguments: bool = False) -> dict[str, Any]:
    """One audit record from an exchange and one message's outcome (see Forwarder), in one dict (one per call:
    it is made for every message). Pure."""
    params = message.get("params")
    if type(params) is not dict:
        params = {}
    target = params.get("name")
    if not isinstance(target, str):
        target = params.get("uri")
        if not isinstance(target, str):
            target = None
    arguments = params.get("arguments")
    if type(arguments) is not dict:
        arguments = None
    workspace = None
    for fact in exchange.workspaces:
        if fact.tool == target:
            workspace = fact.workspace
    if workspace is None and arguments is not None:
        workspace = arguments.get("workspaceId")
    session = exchange.session_id
    # who the caller is, never with what: no token or secret is ever a field of a record
    principal = exchange.principal
    if principal is not None:
        subject, credential_id = principal.subject, principal.credential_id
        label, kind = principal.label, principal.kind
    else:
        subject = credential_id = label = kind = None
    record = {
        "time": timestamp(now),
        "request_id": exchange.request_id,
        "session": session_hash(session) if session else None,
        "subject": subject,
        "credential_id": credential_id,
        "label": label,
        "kind": kind,
        "method": message.get("method", "response"),
        "target": target,
        "workspace": workspace,
        "decision": decision,
        "reason": reason,
        "arguments_digest": None,
        "preview_id": reason if decision == "preview" else (exchange.confirmed.get(str(message.get("id")))
                                                            if exchange.confirmed else None),
        "upstream_status": exchange.upstream_status,
        "latency_ms": int(latency * 1_000_000 + 0.5) / 1000,  # round(x, 3) without its cost (a decimal format)
    }
    if exchange.untrusted is not None and (found := exchange.untrusted.get(repr(message.get("id")))) is not None:
        record["provenance"] = {"untrusted": True, "tool": found[0], "source": found[1]}  # its output came from outside
    if exchange.held is not None and message.get("method") == "tools/call":
        record["held"] = exchange.held  # why confirmation was asked though no rule asks it (drift, untrusted output)
    if raw_arguments and arguments is not None:
        # A confirmation token is a secret, wherever a client put it (a read call's stray one is never stripped
        # by the confirm guard): never written, like the digest leaves it out.
        record["arguments"] = arguments if TOKEN_ARGUMENT not in arguments else \
            {k: v for k, v in arguments.items() if k != TOKEN_ARGUMENT}
    return record


def build_record(exchange: Exchange, outcome: Outcome, latency: float, now: float,
                 raw_arguments: bool = False) -> dict[str, Any]:
    """The whole record, or as much of it as can be made with an `error` field saying what is missing. Never raises:
    a decision that happened is written, whatever its arguments hold."""
    message, decision, reason = outcome
    try:
        record = decision_record(exchange, message, decision, reason, latency, now, raw_arguments)
    except Exception as exc:  # a bug must not cost the record: keep what the outcome itself says
        return {"time": timestamp(now), "request_id": exchange.request_id, "decision": decision,
                "reason": reason if isinstance(reason, str) else None, "error": f"record: {type(exc).__name__}"}
    params = message.get("params")
    arguments = params.get("arguments") if isinstance(params, dict) else None
    if isinstance(arguments, dict):
        try:
            record["arguments_digest"] = digest(arguments)
        except (NotCanonical, TypeError, orjson.JSONEncodeError) as exc:
            record["error"] = f"arguments digest: {exc}"
            if "arguments" in record:  # what has no canonical form is not written raw either (NaN would be null)
                record["arguments"] = None
    return record


def serialisable(record: dict[str, Any]) -> dict[str, Any]:
    """The record less the fields that do not serialise, named in its `error` (only when linking it failed: the
    common case pays for no extra serialisation)."""
    errors = [record["error"]] if isinstance(record.get("error"), str) else []
    clean = {}
    for name, value in record.items():
        try:
            orjson.dumps(value)
            clean[name] = value
        except (TypeError, orjson.JSONEncodeError) as exc:
            clean[name] = None
            errors.append(f"{name}: not serialisable ({exc})")
    clean["error"] = "; ".join(errors) or "not serialisable"
    return clean


FOLDABLE = frozenset({"unauthenticated", "deny", "invalid", "refuse", "error"})  # refusals, never an allow
FOLD_RATE, FOLD_BURST = 10.0, 100.0  # per process: unauthenticated refusals recorded one by one
FOLD_KINDS = 32  # distinct "decision: reason" counted by name in a folded record; the rest as "other"


class Fold:
    """Unauthenticated refusals past the rate since the last folded record. Pure: the writer feeds it."""

    def __init__(self, rate: float = FOLD_RATE, burst: float = FOLD_BURST) -> None:
        self.rate, self.burst = rate, burst
        self.allowance, self.at = burst, 0.0
        self.count = 0
        self.first = self.last = 0.0
        self.kinds: dict[str, int] = {}

    def takes(self, exchange: Exchange, now: float) -> bool:
        """Whether this exchange's records are folded (counted) rather than written; only when it has no principal
        and every outcome is a refusal."""
        if exchange.principal is not None or any(o.decision not in FOLDABLE for o in exchange.outcomes):
            return False
        self.allowance = min(self.burst, self.allowance + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.allowance >= 1:
            self.allowance -= 1
            return False
        if not self.count:
            self.first = now
        self.last = now
        for outcome in exchange.outcomes:
            self.count += 1
            kind = f"{outcome.decision}: {outcome.reason}" if isinstance(outcome.reason, str) else outcome.decision
            if kind not in self.kinds and len(self.kinds) >= FOLD_KINDS:
                kind = "other"
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return True

    def record(self) -> dict[str, Any] | None:
        """The folded record of what was counted since the last one (and start over), or None."""
        if not self.count:
            return None
        record = {"time": timestamp(self.last), "decision": "folded",
                  "reason": f"refusals without a credential past {self.rate:g}/s (bursts of {self.burst:g})",
                  "count": self.count, "first": timestamp(self.first), "last": timestamp(self.last),
                  "refusals": self.kinds}
        self.count, self.kinds = 0, {}
        return record


class AuditWriter:
    """Takes finished exchanges on the request path (an append) and, in the background every `interval` seconds,
    builds their records, links them into this process's chain, seals it when a checkpoint is due and writes the
    lines. `start` writes the genesis and starts the heartbeat (a checkpoint every `chain.seconds` even when idle:
    a chain that stops sealing was cut or its process died); `close` writes what is left and the final checkpoint.
    `anchor`, when set, is a second sink that gets every seal once the trail has it: a head kept outside the trail's
    reach (`scopegate audit verify --anchor`), against which a rolled-back trail or a cut newest chain shows."""

    RETRIES = (0.05, 0.25)  # seconds before each retry of a failed write, within one flush
    BUFFER = 100_000  # lines kept for a sink that is down; beyond that the oldest are given up (and counted)

    ANCHOR_BUFFER = 1_000  # seals kept for an anchor that is down (only the newest of each chain matters)

    def __init__(self, sink: Sink, chain: Chain | None = None, metrics: Metrics | None = None,
                 interval: float = 0.05, raw_arguments: bool = False, anchor: Sink | None = None,
                 fold: Fold | None = None) -> None:
        self.sink = sink
        self.anchor = anchor
        self.fold = fold or Fold()
        self._unanchored: list[Line] = []
        self.chain = chain or Chain(None)
        self.metrics = metrics or Metrics()
        self.interval = interval
        self.raw_arguments = raw_arguments
        self._pending: list[tuple[Exchange, float, float]] = []
        self._unwritten: list[Line] = []
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        process = {"host": socket.gethostname(), "pid": os.getpid(), "version": __version__}
        genesis = self.chain.genesis(process, await self.sink.last_checkpoint(self.chain.slot), timestamp(time.time()))
        async with self._lock:
            self._unwritten.append(("genesis", orjson.dumps(genesis)))
            await self._write()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def add(self, exchange: Exchange, latency: float) -> None:
        """One record per outcome of the exchange; the records are made later, off the request path."""
        self._pending.append((exchange, latency, time.time()))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain_soon())

    async def _drain_soon(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.chain.seconds / 2)
            if self.chain.due() or self._unwritten:
                await self.flush()

    def _line(self, record: dict[str, Any]) -> Line:
        try:
            line = self.chain.link_line(record)
        except (TypeError, orjson.JSONEncodeError):  # a raw value orjson cannot write (the chain is unchanged)
            record = serialisable(record)
            line = self.chain.link_line(record)
        if "error" in record:
            self.metrics.audit_incomplete.inc()
            log.warning("audit record written incomplete: %s", record["error"],
                        extra={"request_id": record.get("request_id")})
        return "decision", line

    async def flush(self, final: bool = False) -> None:
        async with self._lock:
            pending, self._pending = self._pending, []
            for exchange, latency, now in pending:
                if exchange.principal is None and self.fold.takes(exchange, now):
                    continue
                for outcome in exchange.outcomes:
                    self._unwritten.append(self._line(build_record(exchange, outcome, latency, now,
                                                                   self.raw_arguments)))
                    if self.chain.unsealed >= self.chain.every:
                        self._seal(final=False)
            if final or self.chain.due():
                self._seal(final)
            if self._unwritten:
                await self._write()

    def _seal(self, final: bool) -> None:
        folded = self.fold.record()
        if folded is not None:  # sealed with the records it stands for
            self.metrics.audit_folded.inc(folded["count"])
            self._unwritten.append(("folded", self.chain.link_line(folded)))
        self._unwritten.append(("checkpoint", orjson.dumps(self.chain.checkpoint(timestamp(time.time()), final))))

    async def _write(self) -> None:
        lines = self._unwritten
        for delay in (*self.RETRIES, None):
            try:
                await self.sink.write(lines)
            except Exception as exc:  # any sink failure: retry, then keep the lines for the next write
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
                self.metrics.audit_write_failures.inc()
                log.error("audit sink failed (%s): %d records kept for the next write", type(exc).__name__,
                          len(lines), extra={"reason": str(exc)[:200]})
                if len(lines) > self.BUFFER:
                    dropped = len(lines) - self.BUFFER
                    del lines[:dropped]
                    self.metrics.audit_dropped.inc(dropped)
                    log.error("audit sink down too long: %d oldest records given up", dropped)
                self.metrics.audit_pending.set(len(lines))
                return
            for kind in ("decision", "folded", "checkpoint", "genesis"):
                count = sum(1 for k, _ in lines if k == kind)
                if count:
                    self.metrics.audit_records.labels(kind).inc(count)
            self._unwritten = []
            self.metrics.audit_pending.set(0)
            fill = getattr(self.sink, "fill", None)
            if fill is not None:
                self.metrics.audit_stream_fill.set(fill)
            if self.anchor is not None:
                await self._anchor([line for line in lines if line[0] in SEALS])
            return

    async def _anchor(self, seals: list[Line]) -> None:
        """The seals the trail now holds, to the anchor too; kept for the next time when the anchor fails."""
        self._unanchored.extend(seals)
        if not self._unanchored or self.anchor is None:
            return
        try:
            await self.anchor.write(self._unanchored)
        except Exception as exc:  # the anchor's failure never holds up the trail
            self.metrics.audit_anchor_failures.inc()
            log.error("audit anchor failed (%s): %d seals kept for the next write", type(exc).__name__,
                      len(self._unanchored), extra={"reason": str(exc)[:200]})
            del self._unanchored[:-self.ANCHOR_BUFFER]
            return
        self._unanchored = []

    async def close(self) -> None:
        for task in (self._task, self._heartbeat):
            if task is not None:
                task.cancel()
        await self.flush(final=True)
        await self.sink.close()
        if self.anchor is not None:
            await self.anchor.close()
