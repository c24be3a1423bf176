"""Where the audit trail goes, and how `scopegate audit verify` reads it back: JSON lines on stdout or in a file, or
a Redis Stream. A sink writes lines or raises; retrying and counting are the writer's (proxy/ops/audit.py)."""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Protocol

import orjson

Line = tuple[str, bytes]  # (record type, the record as one JSON line without its newline)


class Sink(Protocol):
    async def write(self, lines: list[Line]) -> None: ...

    async def last_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint this sink holds from this process's predecessor, where it can know it."""
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

    async def last_checkpoint(self) -> dict[str, Any] | None:
        return None  # what went to stdout before this process is out of its reach

    async def close(self) -> None:
        return None


class FileSink:
    """JSON lines appended to a file; its predecessor is the file's last chain. Each batch is one write on an
    O_APPEND descriptor, so the workers of one scopegate (SCOPEGATE_WORKERS) appending to one file never cut
    into each other's lines."""

    TAIL = 1 << 20  # the predecessor's last checkpoint is looked for in the file's last MiB

    def __init__(self, path: str) -> None:
        self.path = path
        self.out = open(path, "ab", buffering=0)  # noqa: SIM115 (open for the process's life; closed in close())

    async def write(self, lines: list[Line]) -> None:
        data = memoryview(b"".join(line + b"\n" for _, line in lines))
        while data:  # a regular file takes it whole; a short write (a full disk) continues where it stopped
            data = data[self.out.write(data) or 0 :]

    async def last_checkpoint(self) -> dict[str, Any] | None:
        with open(self.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - self.TAIL))
            tail = handle.read().splitlines()
        for line in reversed(tail):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("type") == "checkpoint":
                return record
        return None

    async def close(self) -> None:
        self.out.close()


class RedisStreamSink:
    """XADD to a Redis Stream (`MAXLEN ~`): the trail outlives the pod, and every replica writes its own chain.
    A batch is one MULTI/EXEC, so a retried batch is never half written twice. The last checkpoint of each process
    name (the pod's hostname) is kept beside the stream: a restarted container's genesis names it."""

    KEY = "scopegate:audit"
    LAST = "scopegate:audit:last-checkpoint:"

    def __init__(self, url: str, process: str, maxlen: int = 1_000_000) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.process = process
        self.maxlen = maxlen

    async def write(self, lines: list[Line]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for _, line in lines:
            pipe.xadd(self.KEY, {"record": line}, maxlen=self.maxlen, approximate=True)
        checkpoints = [line for kind, line in lines if kind == "checkpoint"]
        if checkpoints:
            pipe.set(self.LAST + self.process, checkpoints[-1])
        await pipe.execute()

    async def last_checkpoint(self) -> dict[str, Any] | None:
        from redis.exceptions import RedisError

        try:
            found = await self.redis.get(self.LAST + self.process)
            record = orjson.loads(found) if found else None
        except (RedisError, OSError, orjson.JSONDecodeError):
            return None  # "where known": an unknown predecessor is said as such (null)
        return record if isinstance(record, dict) else None

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

