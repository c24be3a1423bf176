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
    # A bounded set per key (e.g. one credential's pending previews): add `member` for `ttl` seconds unless `limit`
    # unexpired members are there already; False then. Atomic.
    async def reserve(self, key: str, member: str, limit: int, ttl: int) -> bool: ...
    async def release(self, key: str, member: str) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def namespace(key: str) -> str:
    """`scopegate:session:…` -> `scopegate:session`: each kind of key is bounded on its own."""
    return ":".join(key.split(":", 2)[:2])


class MemoryStore:
    """One process's memory: for development and single-replica use. Expired keys vanish on read.

    Each kind of key (sessions, previews, used-token markers, quotas, ...) has its own bound, and a full kind makes
    room only by dropping expired keys: a flood of one kind never evicts another, and never evicts a live key (a
    session binding, someone's pending confirmation). When a kind is full of live keys the write is refused
    (StoreUnavailable), which every caller already treats as "fail closed".
    """

    def __init__(self, limit: int = 100_000, on_full: Callable[[], None] | None = None) -> None:
        self._spaces: dict[str, OrderedDict[str, tuple[str, float | None]]] = {}
        self._quotas: dict[str, dict[str, float]] = {}
        self._swept: dict[int, float] = {}
        self._limit = limit
        self._lists: dict[str, list[str]] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self.on_full = on_full

    def _space(self, key: str) -> OrderedDict[str, tuple[str, float | None]]:
        space = self._spaces.get(namespace(key))
        if space is None:
            space = self._spaces[namespace(key)] = OrderedDict()
        return space

    def _live(self, key: str) -> str | None:
        space = self._space(key)
        item = space.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del space[key]
            return None
        return value

    def _make_room(self, space: OrderedDict[str, tuple[str, float | None]]) -> None:
        now = time.monotonic()
        # A sweep walks the whole kind: at most once a second, so a flood against a full kind costs little.
        if now - self._swept.get(id(space), float("-inf")) >= 1.0:
            self._swept[id(space)] = now
            for key in [k for k, (_, expires) in space.items() if expires is not None and expires <= now]:
                del space[key]
        if len(space) >= self._limit:
            if self.on_full is not None:
                self.on_full()
            raise StoreUnavailable("memory store full")

    async def get(self, key: str, *, refresh_ttl: int | None = None) -> str | None:
        value = self._live(key)
        if value is not None and refresh_ttl is not None:
            self._space(key)[key] = (value, time.monotonic() + refresh_ttl)
        return value

    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None:
        space = self._space(key)
        if key not in space and len(space) >= self._limit:
            self._make_room(space)
        space[key] = (value, time.monotonic() + ttl if ttl else None)

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    async def delete(self, key: str) -> None:
        self._space(key).pop(key, None)

    async def take(self, key: str) -> str | None:
        value = self._live(key)  # no await in between: one event loop, so this is atomic
        self._space(key).pop(key, None)
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

    async def reserve(self, key: str, member: str, limit: int, ttl: int) -> bool:
        now = time.time()
        quota = self._quotas.get(key)
        if quota is None:
            if len(self._quotas) >= self._limit:
                for name in [k for k, q in self._quotas.items() if all(e <= now for e in q.values())]:
                    del self._quotas[name]
                if len(self._quotas) >= self._limit:
                    if self.on_full is not None:
                        self.on_full()
                    raise StoreUnavailable("memory store full")
            quota = self._quotas[key] = {}
        for name in [m for m, expires in quota.items() if expires <= now]:
            del quota[name]
        if len(quota) >= limit:
            return False
        quota[member] = now + ttl
        return True

    async def release(self, key: str, member: str) -> None:
        quota = self._quotas.get(key)
        if quota is not None:
            quota.pop(member, None)
            if not quota:
                del self._quotas[key]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


# KEYS[1] a sorted set of member -> expiry; ARGV now, limit, member, expiry, key ttl.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisStore:
    """redis.asyncio with sub-second timeouts, one retry, and an overall budget per operation (library-notes.md).

    A circuit breaker keeps a hanging or dead Redis from costing every request the whole budget: after a failure,
    every operation answers StoreUnavailable at once for `breaker_seconds`; then one operation is let through as a
    probe, and its success closes the circuit (its failure opens it again).
    """

    def __init__(self, url: str, on_error: Callable[[], None] | None = None, *, breaker_seconds: float = 2.0,
                 on_short_circuit: Callable[[], None] | None = None) -> None:
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
        self._reserve = self._redis.register_script(_RESERVE)
        self.on_error = on_error
        self.on_short_circuit = on_short_circuit
        self.breaker_seconds = breaker_seconds
        self._open_until = 0.0  # 0: closed
        self._probing = False

    async def _run(self, operation, *, bypass: bool = False):  # type: ignore[no-untyped-def]
        from redis.exceptions import RedisError

        probe = False
        if self._open_until and not bypass:
            if self._probing or time.monotonic() < self._open_until:
                operation.close()  # never started: no "coroutine was never awaited"
                if self.on_short_circuit is not None:
                    self.on_short_circuit()
                raise StoreUnavailable("circuit open")
            probe = self._probing = True
        try:
            async with asyncio.timeout(BUDGET_SECONDS):
                result = await operation
        except (RedisError, OSError, TimeoutError) as exc:
            self._open_until = time.monotonic() + self.breaker_seconds
            if self.on_error is not None:
                self.on_error()
            raise StoreUnavailable(type(exc).__name__) from None
        finally:
            if probe:
                self._probing = False
        self._open_until = 0.0
        return result

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

    async def reserve(self, key: str, member: str, limit: int, ttl: int) -> bool:
        now = time.time()
        return bool(await self._run(self._reserve(keys=[key], args=[now, limit, member, now + ttl, ttl + 60])))

    async def release(self, key: str, member: str) -> None:
        await self._run(self._redis.zrem(key, member))

    async def ping(self) -> None:
        # /readyz asks for the truth, not the breaker's memory; an answer closes the circuit early.
        await self._run(self._redis.ping(), bypass=True)

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str | None, on_error: Callable[[], None] | None = None, *, memory_keys: int = 100_000,
               breaker_seconds: float = 2.0, on_short_circuit: Callable[[], None] | None = None) -> Store:
    if url:
        return RedisStore(url, on_error, breaker_seconds=breaker_seconds, on_short_circuit=on_short_circuit)
    return MemoryStore(memory_keys, on_full=on_error)
