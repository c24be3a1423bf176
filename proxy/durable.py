"""Durable state: what people do at run time that must outlive a restart.

Revocations (and who made them, when, what they ended), OAuth grants and their refresh families, consents, clients
that were used, last use: the credential tree's live half (`identity/lifecycle.py` gives it meaning). The policy
and the PAT registry are read-only files; this is what is layered over them. Two homes, one interface:

- `SqliteState`, one replica: a SQLite file in the state directory (`SCOPEGATE_STATE_DIR`), mirrored whole in
  memory, so the request path reads a dict and never the disk. A write changes the mirror at once and is in the
  file before it returns (committed on one writer thread: the event loop never waits on the disk). Another process
  writing the same file (`scopegate pat revoke`) is seen within POLL_SECONDS: rows carry a sequence number, and
  SQLite's `data_version` says when there are new ones to read. Without a state directory the mirror alone is
  kept: nothing survives a restart, and the proxy says so when it starts.
- `RedisState`, several replicas: the shared Redis (which must persist and never evict: README, "Redis").

Sets (an index: a person's grants, a credential's children) are members stored beside the values; `rotate` and
`add_capped` are atomic (a Lua script in Redis, no await between read and write in the mirror).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import orjson

from proxy.store import RedisStore, StoreUnavailable

POLL_SECONDS = 0.05  # how soon another process's write (the CLI's revoke) is seen by a running proxy
FILE_NAME = "credentials.sqlite3"
_MEMBER = "\x1f"  # set members are rows named <set><US><member>: no key or member contains it


class StateError(Exception):
    """The state directory or file cannot be used; one line for the operator."""


class Durable(Protocol):
    durable: bool  # False: memory only (no state directory and no Redis): lost on restart

    async def get(self, key: str) -> str | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[str | None]: ...
    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None: ...
    async def delete(self, *keys: str) -> None: ...
    async def any_exists(self, keys: Sequence[str]) -> bool: ...  # the request path's revocation check
    async def add(self, group: str, member: str) -> None: ...
    async def add_capped(self, group: str, member: str, limit: int) -> bool: ...  # False: `limit` members there
    async def remove(self, group: str, member: str) -> None: ...
    async def members(self, group: str) -> list[str]: ...
    # A rotating secret's family (`{"cur": digest, "prev": [...]}`): "ok" when `presented` is the current one (it
    # becomes the first of the `keep` previous ones, `new` the current one, and the family lives `ttl` seconds
    # more), "replayed" when it is a previous one, "unknown" otherwise (or no family). Atomic: of two presenters of
    # the same current value, one gets "ok".
    async def rotate(self, key: str, presented: str, new: str, keep: int, ttl: int) -> str: ...
    async def settle(self) -> bool: ...  # what was written survives losing this copy (a replica has it)
    async def close(self) -> None: ...


def rotation(raw: str | None, presented: str, new: str, keep: int) -> tuple[str, str | None]:
    """Pure: (outcome, the family's next value or None when unchanged)."""
    if raw is None:
        return "unknown", None
    family = orjson.loads(raw)
    if family.get("cur") == presented:
        family["prev"] = [presented, *family.get("prev", [])][:keep]
        family["cur"] = new
        return "ok", orjson.dumps(family).decode()
    if presented in family.get("prev", []):
        return "replayed", None
    return "unknown", None


class SqliteState:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.durable = self.path is not None
        self._kv: dict[str, tuple[str, float | None]] = {}
        self._sets: dict[str, set[str]] = {}
        self._writing: dict[str, int] = {}  # keys with a write on its way to the file: how many
        self._seq = 0
        self._version: int | None = None
        self._polled = 0.0
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        if self.path is not None:
            self._open()

    # --- the file ---------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        try:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            connection.execute("PRAGMA journal_mode=WAL")  # the proxy reads while the CLI writes
            connection.execute("PRAGMA synchronous=FULL")  # a revocation acknowledged is on the disk
            connection.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT, expires REAL, "
                               "seq INTEGER NOT NULL)")
            connection.execute("CREATE INDEX IF NOT EXISTS kv_seq ON kv (seq)")
        except sqlite3.Error as exc:
            raise StateError(f"cannot use {self.path} ({exc})") from None
        return connection

    def _open(self) -> None:
        assert self.path is not None
        folder = self.path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise StateError(f"no writable directory {str(folder)!r} for the credential state")
        self._writer = self._connect()
        self._reader = self._connect()
        now = time.time()
        with _transaction(self._writer):
            self._writer.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,))
            self._writer.execute("DELETE FROM kv WHERE value IS NULL AND expires IS NULL AND seq < "
                                 "(SELECT COALESCE(MAX(seq), 0) FROM kv) - 100000")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="scopegate-state")
        self._load_since(0)

    def _load_since(self, seq: int) -> None:
        assert self._reader is not None
        self._version = self._reader.execute("PRAGMA data_version").fetchone()[0]
        rows = self._reader.execute("SELECT key, value, expires, seq FROM kv WHERE seq > ? ORDER BY seq", (seq,))
        for key, value, expires, row_seq in rows:
            # A key this process is writing has a newer value in the mirror than in the file until that write
            # lands (and is read back then): the file's older one must not undo it (a rotated refresh family).
            if key not in self._writing:
                self._apply(key, value, expires)
            self._seq = max(self._seq, row_seq)

    def _poll(self) -> None:
        """Another process's commits, at most every POLL_SECONDS (a PRAGMA costs a few µs: not every request)."""
        if self._reader is None:
            return
        now = time.monotonic()
        if now - self._polled < POLL_SECONDS:
            return
        self._polled = now
        try:
            version = self._reader.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._load_since(self._seq)
        except sqlite3.Error:
            raise StoreUnavailable("credential state file unreadable") from None

    def _commit(self, rows: list[tuple[str, str | None, float | None]]) -> None:
        assert self._writer is not None
        with _transaction(self._writer):
            (top,) = self._writer.execute("SELECT COALESCE(MAX(seq), 0) FROM kv").fetchone()
            for n, (key, value, expires) in enumerate(rows, start=1):
                self._writer.execute("INSERT OR REPLACE INTO kv (key, value, expires, seq) VALUES (?, ?, ?, ?)",
                                     (key, value, expires, top + n))

    async def _write(self, rows: list[tuple[str, str | None, float | None]]) -> None:
        for key, value, expires in rows:
            self._apply(key, value, expires)
        if self._executor is None:
            return
        for key, _, _ in rows:
            self._writing[key] = self._writing.get(key, 0) + 1
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._commit, rows)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"credential state not written ({type(exc).__name__})") from None
        finally:
            for key, _, _ in rows:
                if (left := self._writing[key] - 1) == 0:
                    del self._writing[key]
                else:
                    self._writing[key] = left

    # --- the mirror -------------------------------------------------------------------------------------------
    def _apply(self, key: str, value: str | None, expires: float | None) -> None:
        group, sep, member = key.partition(_MEMBER)
        if sep:
            members = self._sets.setdefault(group, set())
            if value is None:
                members.discard(member)
                if not members:
                    del self._sets[group]
            else:
                members.add(member)
            return
        if value is None:
            self._kv.pop(key, None)
        else:
            self._kv[key] = (value, expires)

    def _live(self, key: str) -> str | None:
        item = self._kv.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.time():
            return None
        return value

    async def get(self, key: str) -> str | None:
        self._poll()
        return self._live(key)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        self._poll()
        return [self._live(key) for key in keys]

    async def any_exists(self, keys: Sequence[str]) -> bool:
        self._poll()
        return any(self._live(key) is not None for key in keys)

    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None:
        await self._write([(key, value, time.time() + ttl if ttl else None)])

    async def delete(self, *keys: str) -> None:
        await self._write([(key, None, None) for key in keys])

    async def add(self, group: str, member: str) -> None:
        await self._write([(group + _MEMBER + member, "", None)])

    async def add_capped(self, group: str, member: str, limit: int) -> bool:
        self._poll()
        members = self._sets.get(group, set())
        if member not in members and len(members) >= limit:
            return False
        await self.add(group, member)  # the mirror changes before the first await: atomic
        return True

    async def remove(self, group: str, member: str) -> None:
        await self._write([(group + _MEMBER + member, None, None)])

    async def members(self, group: str) -> list[str]:
        self._poll()
        return sorted(self._sets.get(group, ()))

    async def rotate(self, key: str, presented: str, new: str, keep: int, ttl: int) -> str:
        self._poll()
        outcome, value = rotation(self._live(key), presented, new, keep)
        if value is not None:  # the mirror changes before the first await: atomic
            await self._write([(key, value, time.time() + ttl)])
        return outcome

    async def settle(self) -> bool:
        return True  # every write is in the file before it returns (in memory: the start-up warning said so)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for connection in (self._reader, self._writer):
            if connection is not None:
                connection.close()


class _transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")  # the write lock first: seq numbers never collide

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")


# KEYS[1] the set; ARGV member, limit.
_ADD_CAPPED = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] the family; ARGV presented, new, keep, ttl. The same rule as `rotation`, on the server.
_ROTATE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'unknown' end
local family = cjson.decode(raw)
local prev = family['prev'] or {}
if family['cur'] == ARGV[1] then
  local kept = {ARGV[1]}
  for i = 1, math.min(#prev, tonumber(ARGV[3]) - 1) do kept[#kept + 1] = prev[i] end
  family['prev'] = kept
  family['cur'] = ARGV[2]
  redis.call('SET', KEYS[1], cjson.encode(family), 'EX', ARGV[4])
  return 'ok'
end
for _, old in ipairs(prev) do if old == ARGV[1] then return 'replayed' end end
return 'unknown'
"""


class RedisState:
    """The durable half in the shared Redis, through the store's connection pool, budget and circuit breaker."""

    durable = True

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._redis = store._redis
        self._add_capped = self._redis.register_script(_ADD_CAPPED)
        self._rotate = self._redis.register_script(_ROTATE)

    async def get(self, key: str) -> str | None:
        return await self.store._run(self._redis.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return list(await self.store._run(self._redis.mget(list(keys)))) if keys else []

    async def any_exists(self, keys: Sequence[str]) -> bool:
        return bool(await self.store._run(self._redis.exists(*keys)))

    async def set(self, key: str, value: str, *, ttl: int | None = None) -> None:
        await self.store._run(self._redis.set(key, value, ex=ttl))

    async def delete(self, *keys: str) -> None:
        if keys:
            await self.store._run(self._redis.delete(*keys))

    async def add(self, group: str, member: str) -> None:
        await self.store._run(self._redis.sadd(group, member))

    async def add_capped(self, group: str, member: str, limit: int) -> bool:
        return bool(await self.store._run(self._add_capped(keys=[group], args=[member, limit])))

    async def remove(self, group: str, member: str) -> None:
        await self.store._run(self._redis.srem(group, member))

    async def members(self, group: str) -> list[str]:
        return sorted(await self.store._run(self._redis.smembers(group)))

    async def rotate(self, key: str, presented: str, new: str, keep: int, ttl: int) -> str:
        return str(await self.store._run(self._rotate(keys=[key], args=[presented, new, keep, ttl])))

    async def eviction(self) -> str | None:
        """Redis' maxmemory-policy, or None when it will not say (a managed Redis may refuse CONFIG)."""
        from redis.exceptions import RedisError

        try:
            answer = await self.store._run(self._redis.config_get("maxmemory-policy"))
        except (StoreUnavailable, RedisError):
            return None
        return answer.get("maxmemory-policy") if isinstance(answer, dict) else None

    async def settle(self) -> bool:
        """Behind Sentinels, wait (briefly) until a replica has every write so far: a revocation acknowledged
        survives the primary's loss. One instance: its persistence is all there is (README, "Redis")."""
        if self.store.sentinel is None:
            return True
        try:
            return bool(await self.store._run(self._redis.execute_command("WAIT", 1, 250)))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        return None  # the store's pool: closed with the store


def open_state(state_dir: str | None, store: Any) -> Durable:
    """Redis when the store is Redis (every replica sees the same), else SQLite in `state_dir` (None: memory)."""
    if isinstance(store, RedisStore):
        return RedisState(store)
    return SqliteState(Path(state_dir) / FILE_NAME if state_dir else None)

