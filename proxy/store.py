"""Shared state: Redis when `SCOPEGATE_REDIS_URL` is set (several replicas), in-process memory otherwise (one replica).

The proxy keeps little here: session bindings, PAT revocations and last-used stamps (and later previews). Every
operation has a short overall budget; a Redis that does not answer in time raises StoreUnavailable, and the caller
decides whether to fail closed (it does, wherever a security decision depends on the answer).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

BUDGET_SECONDS = 0.5


class StoreUnavailable(Exception):
    pass


class Store(Protocol):
    async def get(self, key: str, *, refresh_ttl: int | None = None) -> str | None: ...
    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None: ...
    async def exists(self, key: str) -> bool: ...
    async def delete(self, key: str) -> None: ...
    async def take(self, key: str) -> str | None: ...  # get and delete, atomically: a value is taken once only
    # A hand-over between replicas: one pushes a value, whichever replica waits on the key gets it (once).
    async def push(self, key: str, value: str, *, ttl: int) -> None: ...
    async def pop_wait(self, key: str, seconds: float) -> str | None: ...  # None when nothing came in time
    async def get_or_set(self, key: str, value: str) -> str: ...  # the value already there, else `value`: atomic
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """One process's memory: for development and single-replica use. Bounded; expired keys vanish on read."""

    def __init__(self, limit: int = 100_000) -> None:
        self._data: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._limit = limit
        self._lists: dict[str, list[str]] = {}
        self._arrived: dict[str, asyncio.Event] = {}

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    async def get(self, key: str, *, refresh_ttl: int | None = None) -> str | None:
        value = self._live(key)
        if value is not None and refresh_ttl is not None:
            self._data[key] = (value, time.monotonic() + refresh_ttl)
        return value

    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None:
        self._data[key] = (value, time.monotonic() + ttl if ttl else None)
        self._data.move_to_end(key)
        while len(self._data) > self._limit:
            self._data.popitem(last=False)

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def take(self, key: str) -> str | None:
        value = self._live(key)  # no await in between: one event loop, so this is atomic
        self._data.pop(key, None)
        return value

    async def push(self, key: str, value: str, *, ttl: int) -> None:
        # Kept only while someone waits: pop_wait drops what arrives after it gave up, so nothing piles up.
        self._lists.setdefault(key, []).append(value)
        if key in self._arrived:
            self._arrived[key].set()

    async def pop_wait(self, key: str, seconds: float) -> str | None:
        arrived = self._arrived.setdefault(key, asyncio.Event())
        try:
            async with asyncio.timeout(seconds):
                while not self._lists.get(key):
                    arrived.clear()
                    await arrived.wait()
        except TimeoutError:
            return None
        finally:
            self._arrived.pop(key, None)
        values = self._lists.pop(key)
        return values[0]

    async def get_or_set(self, key: str, value: str) -> str:
        current = self._live(key)
        if current is None:
            await self.set(key, value)
            return value
        return current

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisStore:
    """redis.asyncio with sub-second timeouts, one retry, and an overall budget per operation (library-notes.md)."""

    def __init__(self, url: str, on_error: Callable[[], None] | None = None) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=BUDGET_SECONDS,  # waiting for a free connection
            socket_timeout=0.25,
            socket_connect_timeout=0.25,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self._redis = Redis.from_pool(pool)
        self.on_error = on_error

    async def _run(self, operation):  # type: ignore[no-untyped-def]
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(BUDGET_SECONDS):
                return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            if self.on_error is not None:
                self.on_error()
            raise StoreUnavailable(type(exc).__name__) from None

    async def get(self, key: str, *, refresh_ttl: int | None = None) -> str | None:
        if refresh_ttl is not None:
            return await self._run(self._redis.getex(key, ex=refresh_ttl))
        return await self._run(self._redis.get(key))

    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None:
        await self._run(self._redis.set(key, value, ex=ttl))

    async def exists(self, key: str) -> bool:
        return bool(await self._run(self._redis.exists(key)))

    async def delete(self, key: str) -> None:
        await self._run(self._redis.delete(key))

    async def take(self, key: str) -> str | None:
        return await self._run(self._redis.getdel(key))  # atomic on the server: one taker per value

    async def push(self, key: str, value: str, *, ttl: int) -> None:
        async def both() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.rpush(key, value).expire(key, ttl).execute()

        await self._run(both())

    async def pop_wait(self, key: str, seconds: float) -> str | None:
        """BLPOP in short slices (each well inside the socket timeout and the per-operation budget), until a value
        comes or `seconds` pass. A slice Redis fails to answer counts as an empty one: a waiting person is not
        refused for one slow round trip; if Redis stays away, the wait simply ends empty."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                found = await self._run(self._redis.blpop([key], timeout=min(0.1, max(left, 0.01))))
            except StoreUnavailable:
                await asyncio.sleep(min(0.1, max(left, 0)))
                continue
            if found:
                return found[1]
        return None

    async def get_or_set(self, key: str, value: str) -> str:
        current = await self._run(self._redis.set(key, value, nx=True, get=True))  # SET NX GET: one winner
        return value if current is None else current

    async def ping(self) -> None:
        await self._run(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str | None, on_error: Callable[[], None] | None = None) -> Store:
    return RedisStore(url, on_error) if url else MemoryStore()
