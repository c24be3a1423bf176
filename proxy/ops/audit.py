"""The audit trail: one JSON record per decision, each carrying the hash of the previous record of its chain.

A record says who (subject, credential id, label, kind), what (method, tool/prompt/resource, workspace, a digest
of the arguments: never the arguments or any token), the decision (allow, deny, preview, confirm, refuse, invalid,
unauthenticated, error) and why, the preview it applies, the upstream's status and the latency. Editing, deleting
or reordering any record breaks the chain at that point; `scopegate audit verify` names the first broken link.

Each proxy process keeps its own chain (`chain` = a random id per process), so replicas never need to coordinate;
verification follows every chain in a file or stream on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TextIO

import orjson

from proxy.canonical import digest
from proxy.exchange import Exchange

GENESIS = "0" * 64


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Chain:
    """Links records: each gets `chain`, `seq`, `prev` (the previous record's hash) and its own `hash`."""

    def __init__(self, chain_id: str | None = None) -> None:
        self.id = chain_id or secrets.token_hex(8)
        self.seq = 0
        self.prev = GENESIS

    def link(self, record: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        linked = {**record, "chain": self.id, "seq": self.seq, "prev": self.prev}
        linked["hash"] = record_hash(linked)
        self.prev = linked["hash"]
        return linked


def verify(records: Iterable[dict[str, Any]]) -> tuple[int, str | None]:
    """(records checked, None) when every chain is whole, else (position of the first broken one, why). Pure."""
    heads: dict[str, tuple[int, str]] = {}  # chain -> (last seq, last hash)
    count = 0
    for count, record in enumerate(records, start=1):
        chain = record.get("chain")
        if not isinstance(chain, str):
            return count, "record has no chain id"
        if record.get("hash") != record_hash(record):
            return count, "record was altered (its hash does not match its content)"
        seq, prev = heads.get(chain, (0, GENESIS))
        if record.get("seq") != seq + 1:
            return count, f"chain {chain}: expected record {seq + 1}, found {record.get('seq')} (deleted or reordered)"
        if record.get("prev") != prev:
            return count, f"chain {chain}: the link to the previous record is broken"
        heads[chain] = (record["seq"], record["hash"])
    return count, None


_second: tuple[int, str] = (0, "")


def timestamp(now: float) -> str:
    """ISO 8601 with milliseconds; the formatted second is reused (it is what costs)."""
    global _second
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(now * 1000) % 1000:03d}Z"


def decision_record(exchange: Exchange, outcome: dict[str, Any], latency: float,
                    now: float | None = None) -> dict[str, Any]:
    """One audit record from an exchange and one message's outcome (see Forwarder). Pure but for the clock."""
    principal = exchange.principal
    session = exchange.session_id
    return {
        "time": timestamp(time.time() if now is None else now),
        "request_id": exchange.request_id,
        "session": hashlib.sha256(session.encode()).hexdigest()[:16] if session else None,
        **(principal.audit_fields() if principal is not None else
           {"subject": None, "credential_id": None, "label": None, "kind": None}),
        **outcome,
        "upstream_status": exchange.upstream_status,
        "latency_ms": round(latency * 1000, 3),
    }


def outcome_of(message: dict[str, Any], decision: str, reason: str, exchange: Exchange,
               raw_arguments: bool = False) -> dict[str, Any]:
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    target = params.get("name") if isinstance(params.get("name"), str) else params.get("uri")
    arguments = params.get("arguments")
    workspace = None
    for fact in exchange.workspaces:
        if fact.tool == target:
            workspace = fact.workspace
    return {
        "method": message.get("method", "response"),
        "target": target if isinstance(target, str) else None,
        "workspace": workspace if workspace is not None else
        (arguments.get("workspaceId") if isinstance(arguments, dict) else None),
        "decision": decision,
        "reason": reason,
        "arguments_digest": digest(arguments) if isinstance(arguments, dict) else None,
        "preview_id": reason if decision == "preview" else
        exchange.confirmed.get(str(message.get("id"))),
        **({"arguments": arguments} if raw_arguments and isinstance(arguments, dict) else {}),
    }


class Sink(Protocol):
    async def write(self, records: list[dict[str, Any]]) -> None: ...


class AuditWriter:
    """Takes finished exchanges on the request path (an append), builds, chains and writes their records in the
    background every `interval` seconds, in one batch; `close` writes what is left, so nothing is lost on a
    clean shutdown."""

    def __init__(self, sink: Sink, interval: float = 0.05, raw_arguments: bool = False) -> None:
        self.sink = sink
        self.interval = interval
        self.raw_arguments = raw_arguments
        self._pending: list[tuple[Exchange, float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, exchange: Exchange, latency: float) -> None:
        """One record per outcome of the exchange; the records are made later, off the request path."""
        self._pending.append((exchange, latency, time.time()))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain_soon())

    async def _drain_soon(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        records = [decision_record(exchange, outcome_of(message, decision, reason, exchange, self.raw_arguments),
                                   latency, now)
                   for exchange, latency, now in pending for message, decision, reason in exchange.outcomes]
        if records:
            await self.sink.write(records)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()


class StreamSink:
    """JSON lines to stdout (the default: the platform's log pipeline keeps them) or to a file."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.chain = Chain()

    async def write(self, records: list[dict[str, Any]]) -> None:
        lines = [orjson.dumps(self.chain.link(r)).decode() + "\n" for r in records]
        self.out.write("".join(lines))
        self.out.flush()


class RedisStreamSink:
    """XADD to a Redis Stream (`MAXLEN ~`): the trail outlives the pod, and every replica writes its own chain."""

    KEY = "scopegate:audit"

    def __init__(self, url: str, maxlen: int = 1_000_000) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.maxlen = maxlen
        self.chain = Chain()

    async def write(self, records: list[dict[str, Any]]) -> None:
        from redis.exceptions import RedisError

        pipe = self.redis.pipeline(transaction=False)
        for record in records:
            pipe.xadd(self.KEY, {"record": orjson.dumps(self.chain.link(record))}, maxlen=self.maxlen,
                      approximate=True)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:  # the chain shows the gap: the verifier will name it
            import logging

            logging.getLogger("scopegate.audit").error("audit records not written to Redis: %s",
                                                       type(exc).__name__)


class TrailUnreadable(Exception):
    """The trail could not be read (as opposed to read and found broken)."""


def read_file(path: str) -> Iterator[dict[str, Any]]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 -- closed by the with below; open's own error is the one to report
    except OSError as exc:
        raise TrailUnreadable(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise TrailUnreadable(f"{path}:{number}: not a JSON record") from None
            if isinstance(record, dict) and "chain" in record:  # other log lines may share stdout
                yield record


async def read_stream(url: str) -> list[dict[str, Any]]:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    try:
        redis = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    except ValueError as exc:
        raise TrailUnreadable(f"--redis: {exc}") from None
    try:
        entries = await redis.xrange(RedisStreamSink.KEY)
    except (RedisError, OSError) as exc:
        raise TrailUnreadable(f"Redis did not answer ({type(exc).__name__})") from None
    finally:
        await redis.aclose()
    return [orjson.loads(fields[b"record"]) for _, fields in entries]
