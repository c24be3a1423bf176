"""Where the audit trail goes, and how `scopegate audit verify` reads it back: JSON lines on stdout or in a file, or
a Redis Stream. A sink writes lines or raises; retrying and counting are the writer's (proxy/ops/audit.py).

Each sink finds, where it can, the last seal (checkpoint, or a genesis nothing followed) of the previous chain of this
process's slot (proxy/ops/trail.py): the file's own lines, a key in Redis, or, on stdout, what the worker supervisor
saw its previous worker write (PREDECESSOR_ENV)."""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Protocol

import orjson

from proxy.ops.trail import SEALS

Line = tuple[str, bytes]  # (record type, the record as one JSON line without its newline)
# Set by the worker supervisor (proxy/edge/workers.py) on a worker it starts again: the last seal line the slot's
# previous worker wrote to stdout. Not a SCOPEGATE_ setting.
PREDECESSOR_ENV = "_SCOPEGATE_AUDIT_PREDECESSOR"
SEAL_PREFIXES = tuple(b'{"type":"%s"' % kind.encode() for kind in SEALS)  # how a seal's line begins


def _seal(data: bytes | str | None, slot: int | None = None) -> dict[str, Any] | None:
    """A seal record from a line (of `slot`, when given: a seal written before slots were is anyone's), else None."""
    try:
        record = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(record, dict) and record.get("type") in SEALS):
        return None
    return record if slot is None or record.get("slot", slot) == slot else None


class Sink(Protocol):
    async def write(self, lines: list[Line]) -> None: ...

    async def last_checkpoint(self, slot: int = 0) -> dict[str, Any] | None:
        """The last seal this sink holds from the previous chain of `slot`, where it can know it."""
        ...

    async def close(self) -> None: ...


class StreamSink:
    """JSON lines to stdout (the default: the platform's log pipeline keeps them)."""

    async def write(self, lines: list[Line]) -> None:
        out = sys.stdout  # as it is now (tests swap it, for one without a byte buffer)
        data = b"".join(line + b"\n" for _, line in lines)
        if (raw := getattr(out, "buffer", None)) is not None:
            out.flush()  # what was written as text before goes first
            raw.write(data)
            raw.flush()
        else:
            out.write(data.decode())
            out.flush()

    async def last_checkpoint(self, slot: int = 0) -> dict[str, Any] | None:
        # What went to stdout before this process is out of its reach, but a worker supervisor saw it.
        return _seal(os.environ.get(PREDECESSOR_ENV), slot)

    async def close(self) -> None:
        return None


class FileSink:
    """JSON lines appended to a file; its predecessor is the file's last chain of its slot. Each batch is one write
    on an O_APPEND descriptor, so the workers of one scopegate (SCOPEGATE_WORKERS) appending to one file never cut
    into each other's lines."""

    TAIL = 1 << 20  # the predecessor's last checkpoint is looked for in the file's last MiB

    def __init__(self, path: str) -> None:
        self.path = path
        self.out = open(path, "ab", buffering=0)  # noqa: SIM115 (open for the process's life; closed in close())

    async def write(self, lines: list[Line]) -> None:
        data = memoryview(b"".join(line + b"\n" for _, line in lines))
        while data:  # a regular file takes it whole; a short write (a full disk) continues where it stopped
            data = data[self.out.write(data) or 0 :]

    async def last_checkpoint(self, slot: int = 0) -> dict[str, Any] | None:
        with open(self.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - self.TAIL))
            tail = handle.read().splitlines()
        for line in reversed(tail):
            if line.startswith(SEAL_PREFIXES) and (record := _seal(line, slot)) is not None:
                return record
        return None

    async def close(self) -> None:
        self.out.close()


class RedisStreamSink:
    """XADD to a Redis Stream (`MAXLEN ~`): the trail outlives the pod, and every replica writes its own chain.
    A batch is one MULTI/EXEC, so a retried batch is never half written twice. The last checkpoint of each process
    name (the pod's hostname, and the worker's slot) is kept beside the stream: a restarted container's genesis
    names it. The stream is trimmed past `maxlen` entries (the oldest go, and with them the proof of what followed):
    `fill`, read with each seal written, says how near that is (scopegate_audit_stream_fill_ratio)."""

    KEY = "scopegate:audit"
    LAST = "scopegate:audit:last-checkpoint:"

    def __init__(self, url: str, process: str, maxlen: int = 1_000_000) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.process = process
        self.maxlen = maxlen
        self.fill: float | None = None  # the stream's length over maxlen, as of the last seal written

    async def write(self, lines: list[Line]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for _, line in lines:
            pipe.xadd(self.KEY, {"record": line}, maxlen=self.maxlen, approximate=True)
        seals = [line for kind, line in lines if kind in SEALS]
        if seals:
            pipe.set(self.LAST + self.process, seals[-1])
            pipe.xlen(self.KEY)
        done = await pipe.execute()
        if seals:
            self.fill = done[-1] / self.maxlen

    async def last_checkpoint(self, slot: int = 0) -> dict[str, Any] | None:
        from redis.exceptions import RedisError

        try:
            found = await self.redis.get(self.LAST + self.process)
        except (RedisError, OSError):
            return None  # "where known": an unknown predecessor is said as such (null)
        return _seal(found)  # the key is the slot's own already

    async def close(self) -> None:
        await self.redis.aclose()


# ---- reading a trail back (for `scopegate audit verify`) ----

class TrailUnreadable(Exception):
    """The trail could not be read at all (as opposed to read and found broken): one line."""


def _record(line: bytes) -> Any:
    """A record, or None for a line that is not one (a position the verifier reports)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def read_lines(handle: IO[bytes]) -> list[Any]:
    """Every non-empty line; JSON objects without a chain (other output sharing stdout) are skipped."""
    records = []
    for line in handle:
        if line.strip():
            record = _record(line)
            if not (isinstance(record, dict) and "chain" not in record):
                records.append(record)
    return records


def read_file(path: str) -> list[Any]:
    if path == "-":
        return read_lines(sys.stdin.buffer)
    try:
        with open(path, "rb") as handle:
            return read_lines(handle)
    except OSError as exc:
        raise TrailUnreadable(f"{path}: cannot read ({exc.strerror})") from None


async def read_stream(url: str, key: str = RedisStreamSink.KEY, page: int = 10_000) -> list[Any]:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    try:
        redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    except ValueError as exc:
        raise TrailUnreadable(f"--redis: {exc}") from None
    records: list[Any] = []
    try:
        if not await redis.exists(key):
            raise TrailUnreadable(f"{url.split('@')[-1]}: no stream {key}")
        start = "-"
        while entries := await redis.xrange(key, min=start, count=page):
            records.extend(_record(fields.get(b"record", b"")) for _, fields in entries)
            last = entries[-1][0].decode()
            millis, _, seq = last.partition("-")
            start = f"{millis}-{int(seq) + 1}"
            if len(entries) < page:
                break
    except (RedisError, OSError) as exc:
        raise TrailUnreadable(f"Redis did not answer ({type(exc).__name__})") from None
    finally:
        await redis.aclose()
    return records

