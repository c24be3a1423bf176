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
from typing import Any, Protocol

from proxy.ratelimit import Check, gcra

BUDGET_SECONDS = 0.5


class StoreUnavailable(Exception):
    pass


class Store(Protocol):
    async def get(self, key: str, *, refresh_ttl: int | None = None) -> str | None: ...
    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None: ...
    async def exists(self, key: str) -> bool: ...
    async def delete(self, *keys: str) -> None: ...
    # Get and delete, atomically: a value is taken once only. With `mark`, taking it also sets `mark` (for
    # `mark_ttl` seconds) in the same step, so no one can look between the two (e.g. "this token is used"); the
    # mark holds "1", or with `mark_with_value` the value taken (a later presenter learns whose it was).
    async def take(self, key: str, *, mark: str | None = None, mark_ttl: int = 0,
                   mark_with_value: bool = False) -> str | None: ...
    # `key` set like `set`, as a member of `group`; when the group then has more than `limit` live members, the
    # least recently used ones (those a `get` with `refresh_ttl` touched longest ago: the soonest to expire) are
    # deleted, and their keys returned. Atomic. Each member of a group is given the same `ttl`.
    async def set_capped(self, key: str, value: str, *, ttl: int, group: str, limit: int) -> list[str]: ...
    # A hand-over between replicas: one pushes a value, whichever replica waits on the key gets it (once).
    async def push(self, key: str, value: str, *, ttl: int) -> None: ...
    async def pop_wait(self, key: str, seconds: float) -> str | None: ...  # None when nothing came in time
    async def get_or_set(self, key: str, value: str) -> str: ...  # the value already there, else `value`: atomic
    # A bounded set per key (e.g. one credential's pending previews): add `member` for `ttl` seconds unless `limit`
    # unexpired members are there already; False then. Atomic.
    async def reserve(self, key: str, member: str, limit: int, ttl: int) -> bool: ...
    async def release(self, key: str, member: str) -> None: ...
    # Rate limits (proxy/ratelimit.py): every check's GCRA judged together; all charged when all let the request
    # through, none otherwise. (index of the first that refused, or -1; seconds to wait). Atomic.
    async def rate(self, checks: tuple[Check, ...]) -> tuple[int, float]: ...
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
    (StoreUnavailable), which every caller already treats as "fail closed". The one exception is asked for by name:
    `set_capped` drops its own group's least recently used members (one credential's oldest sessions).
    """

    def __init__(self, limit: int = 100_000, on_full: Callable[[], None] | None = None) -> None:
        self._spaces: dict[str, OrderedDict[str, tuple[str, float | None]]] = {}
        # set_capped's groups: group -> its member keys, least recently used first (a refreshing `get` moves a key
        # to the end: one dict lookup), so giving up the least recently used costs O(1), not a walk of the group
        self._groups: dict[str, OrderedDict[str, None]] = {}
        self._group_of: dict[str, str] = {}  # member key -> its group, so a key leaving its space leaves its group
        self._quotas: dict[str, dict[str, float]] = {}
        self._rates: dict[str, float] = {}  # rate limit key -> its TAT (monotonic seconds)
        self._rates_swept = float("-inf")
        self._swept: dict[int, float] = {}
        self._limit = limit
        self._lists: dict[str, tuple[list[str], float]] = {}  # key -> (values, expiry), as RPUSH + EXPIRE keep them
        self._lists_swept = float("-inf")
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
            self._drop(space, key)
            return None
        return value

    def _drop(self, space: OrderedDict[str, tuple[str, float | None]], key: str) -> None:
        """Every way out of a space passes here: a member leaves its group with it (no group outlives its keys)."""
        space.pop(key, None)
        group = self._group_of.pop(key, None)
        if group is not None:
            members = self._groups[group]
            del members[key]
            if not members:
                del self._groups[group]

    def _make_room(self, space: OrderedDict[str, tuple[str, float | None]]) -> None:
        now = time.monotonic()
        # A sweep walks the whole kind: at most once a second, so a flood against a full kind costs little.
        if now - self._swept.get(id(space), float("-inf")) >= 1.0:
            self._swept[id(space)] = now
            for key in [k for k, (_, expires) in space.items() if expires is not None and expires <= now]:
                self._drop(space, key)
        if len(space) >= self._limit:
            if self.on_full is not None:
                self.on_full()
            raise StoreUnavailable("memory store full")

    async def get(self, key: str, *, refresh_ttl: int | None = None) -> str | None:
        value = self._live(key)
        if value is not None and refresh_ttl is not None:
            self._space(key)[key] = (value, time.monotonic() + refresh_ttl)
            if (group := self._group_of.get(key)) is not None:
                self._groups[group].move_to_end(key)
        return value

    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None:
        space = self._space(key)
        if key not in space and len(space) >= self._limit:
            self._make_room(space)
        space[key] = (value, time.monotonic() + ttl if ttl else None)

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._drop(self._space(key), key)

    async def take(self, key: str, *, mark: str | None = None, mark_ttl: int = 0,
                   mark_with_value: bool = False) -> str | None:
        # No await from here to the end: one event loop, so this is atomic.
        value = self._live(key)
        if value is None:
            return None
        if mark is not None:
            marks = self._space(mark)
            try:
                if mark not in marks and len(marks) >= self._limit:
                    self._make_room(marks)
                marks[mark] = (value if mark_with_value else "1", time.monotonic() + mark_ttl if mark_ttl else None)
            except StoreUnavailable:
                pass  # a full kind of marks (counted by on_full) must not stop the take: the take is the guarantee
        self._drop(self._space(key), key)
        return value

    async def set_capped(self, key: str, value: str, *, ttl: int, group: str, limit: int) -> list[str]:
        # No await: atomic. Members all get the same ttl, so the group's order (least recently used first) is also
        # the order they expire in: the expired are at its front, and go before any live member is given up.
        space, now = self._space(key), time.monotonic()
        if (old := self._group_of.get(key)) is not None and old != group:
            self._drop(space, key)
        members = self._groups.get(group, OrderedDict())
        evicted: list[str] = []
        while len(members) - (key in members) >= limit:
            oldest = next(m for m in members if m != key)
            expires = space[oldest][1]
            if expires is None or expires > now:
                evicted.append(oldest)
            self._drop(space, oldest)
        if key not in space and len(space) >= self._limit:
            self._make_room(space)  # nothing of its own to give up: the kind's bound decides (may refuse)
        space[key] = (value, now + ttl)
        members = self._groups.setdefault(group, OrderedDict())
        members[key] = None
        members.move_to_end(key)
        self._group_of[key] = group
        return evicted

    def _values(self, key: str) -> list[str]:
        entry = self._lists.get(key)
        if entry is None:
            return []
        if entry[1] <= time.monotonic():
            del self._lists[key]
            return []
        return entry[0]

    async def push(self, key: str, value: str, *, ttl: int) -> None:
        # Kept `ttl` seconds, as Redis keeps it: long enough for a waiter that has not started waiting yet, and no
        # longer, so an answer nobody waits for any more (its waiter gave up or went away) does not pile up.
        now = time.monotonic()
        if now - self._lists_swept >= 1.0:  # a walk over every list: at most once a second
            self._lists_swept = now
            for name in [k for k, (_, expires) in self._lists.items() if expires <= now]:
                del self._lists[name]
        values = self._values(key)
        if not values and len(self._lists) >= self._limit:
            if self.on_full is not None:
                self.on_full()
            raise StoreUnavailable("memory store full")
        values.append(value)
        self._lists[key] = (values, now + ttl)
        if key in self._arrived:
            self._arrived[key].set()

    async def pop_wait(self, key: str, seconds: float) -> str | None:
        arrived = self._arrived.setdefault(key, asyncio.Event())
        try:
            async with asyncio.timeout(seconds):
                while not self._values(key):
                    arrived.clear()
                    await arrived.wait()
        except TimeoutError:
            return None
        finally:
            self._arrived.pop(key, None)
        values, _ = self._lists.pop(key)
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

    async def rate(self, checks: tuple[Check, ...]) -> tuple[int, float]:
        now = time.monotonic()
        moved: list[tuple[str, float]] = []
        for index, (key, interval, burst) in enumerate(checks):
            new_tat, wait = gcra(self._rates.get(key), now, interval, burst)
            if new_tat is None:
                return index, wait
            moved.append((key, new_tat))
        for key, new_tat in moved:
            if key not in self._rates and len(self._rates) >= self._limit:
                self._sweep_rates(now)
            self._rates[key] = new_tat
        return -1, 0.0

    def _sweep_rates(self, now: float) -> None:
        """A TAT in the past counts as none: dropping it changes nothing. Past the bound with every TAT still
        ahead, refuse (fail closed) rather than forget someone's count."""
        if now - self._rates_swept >= 1.0:
            self._rates_swept = now
            for key in [k for k, tat in self._rates.items() if tat <= now]:
                del self._rates[key]
        if len(self._rates) >= self._limit:
            if self.on_full is not None:
                self.on_full()
            raise StoreUnavailable("memory store full")

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


# KEYS[1] the value's key, KEYS[2] the key it is marked with; ARGV the mark's ttl (0: none), whether the mark holds
# the value (1) or "1" (0). GETDEL, SET: one step.
_TAKE_MARKING = """
local value = redis.call('GETDEL', KEYS[1])
if not value then return value end
local mark = '1'
if ARGV[2] == '1' then mark = value end
if tonumber(ARGV[1]) > 0 then redis.call('SET', KEYS[2], mark, 'EX', ARGV[1])
else redis.call('SET', KEYS[2], mark) end
return value
"""

# KEYS[1] the key, KEYS[2] its group: a sorted set of member keys; ARGV value, ttl, limit. A member's score is a
# lower bound of its last use (ms, Redis' clock): its birth, or a use seen since. Reads write nothing to the group:
# every member has the same ttl and reads refresh it (GETEX), so a member's remaining ttl tells its last use. Past
# the limit, the lowest score is looked at: used since, it is scored again (its last use) and the next lowest looked
# at; else it is the least recently used, and dropped. Each member is looked at once at most between
# its uses: a flood costs O(log n) a session, not a walk of the group. Member keys are named by the group, not
# declared: this needs one Redis (or a primary with replicas), not a Cluster. The group outlives its newest member's
# birth by twice the ttl.
_SET_CAPPED = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl_ms = tonumber(ARGV[2]) * 1000
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('EXPIRE', KEYS[2], 2 * tonumber(ARGV[2]))
local limit = tonumber(ARGV[3])
local evicted = {}
while redis.call('ZCARD', KEYS[2]) > limit do
  local lowest = redis.call('ZRANGE', KEYS[2], 0, 1, 'WITHSCORES')
  local member, score = lowest[1], tonumber(lowest[2])
  if member == KEYS[1] then member, score = lowest[3], tonumber(lowest[4]) end
  local left = redis.call('PTTL', member)
  local used = now + left - ttl_ms
  if left >= 0 and used > score then
    redis.call('ZADD', KEYS[2], used, member)
  else
    if left ~= -2 then
      redis.call('DEL', member)
      table.insert(evicted, member)
    end
    redis.call('ZREM', KEYS[2], member)
  end
end
return evicted
"""


# KEYS the limits' keys; ARGV each one's interval (ms) and burst, in turn. Redis' own clock, so every replica counts
# on the same time. All let through: every TAT moves on (each key lives until its TAT); else nothing is written and
# the first refusing check's index (1-based) and the wait (ms, a string: Lua numbers become integers) come back.
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local moved = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if now < allow_at then return {i, tostring(allow_at - now)} end
  moved[i] = new_tat
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(moved[i]), 'PX', math.max(1, math.ceil(moved[i] - now)))
end
return {0, '0'}
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

        self.sentinel: Any = None
        timeouts: dict[str, Any] = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25,
                                    "retry": Retry(NoBackoff(), 1)}
        if url.startswith("redis+sentinel://"):
            # The Sentinels name the primary; after a failover the pool finds the new one (a read-only answer from
            # a demoted primary makes it ask again), so a failover is a pause of seconds, not an outage.
            from redis.asyncio.sentinel import Sentinel

            sentinels, service, password, db = sentinel_parts(url)
            self.sentinel = Sentinel(sentinels, sentinel_kwargs={"socket_timeout": 0.25,
                                                                 "socket_connect_timeout": 0.25},
                                     **timeouts)
            self._redis = self.sentinel.master_for(service, password=password, db=db, decode_responses=True,
                                                   max_connections=64, **timeouts)
        else:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=64,
                timeout=BUDGET_SECONDS,  # waiting for a free connection
                decode_responses=True,
                **timeouts,
            )
            self._redis = Redis.from_pool(pool)
        self._reserve = self._redis.register_script(_RESERVE)
        self._take_marking = self._redis.register_script(_TAKE_MARKING)
        self._set_capped = self._redis.register_script(_SET_CAPPED)
        self._rate = self._redis.register_script(_RATE)
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

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._run(self._redis.delete(*keys))

    async def take(self, key: str, *, mark: str | None = None, mark_ttl: int = 0,
                   mark_with_value: bool = False) -> str | None:
        if mark is None:
            return await self._run(self._redis.getdel(key))  # atomic on the server: one taker per value
        return await self._run(self._take_marking(keys=[key, mark], args=[mark_ttl, int(mark_with_value)]))

    async def set_capped(self, key: str, value: str, *, ttl: int, group: str, limit: int) -> list[str]:
        return list(await self._run(self._set_capped(keys=[key, group], args=[value, ttl, limit])))

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

    async def rate(self, checks: tuple[Check, ...]) -> tuple[int, float]:
        # Keys are named here, not declared per limit kind: like set_capped, one Redis (or a primary), no Cluster.
        argv = [value for check in checks for value in (check.interval * 1000, check.burst)]
        refused, wait = await self._run(self._rate(keys=[check.key for check in checks], args=argv))
        return int(refused) - 1, float(wait) / 1000

    async def ping(self) -> None:
        # /readyz asks for the truth, not the breaker's memory; an answer closes the circuit early.
        await self._run(self._redis.ping(), bypass=True)

    async def close(self) -> None:
        await self._redis.aclose()
        if self.sentinel is not None:
            for connection in self.sentinel.sentinels:
                await connection.aclose()


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, str | None, int]:
    """`redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]` -> (sentinels, service, password, db).
    Pure; ValueError says what is wrong. The password is the primary's (the Sentinels' own is not supported)."""
    from urllib.parse import unquote

    rest = url.removeprefix("redis+sentinel://")
    password = None
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        password = unquote(credentials.partition(":")[2]) or None
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    sentinels = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT for each Sentinel, got {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    if not service:
        raise ValueError("name the Sentinels' service after the hosts: redis+sentinel://HOST:PORT/SERVICE")
    if db and not db.isdigit():
        raise ValueError(f"the database after the service must be a number, got {db!r}")
    return sentinels, service, password, int(db or 0)


def open_store(url: str | None, on_error: Callable[[], None] | None = None, *, memory_keys: int = 100_000,
               breaker_seconds: float = 2.0, on_short_circuit: Callable[[], None] | None = None) -> Store:
    if url:
        return RedisStore(url, on_error, breaker_seconds=breaker_seconds, on_short_circuit=on_short_circuit)
    return MemoryStore(memory_keys, on_full=on_error)
