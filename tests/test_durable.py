"""The durable state's two homes (proxy/durable.py): the SQLite file of one replica (shared with the CLI) and Redis.
Each promise a caller leans on: what was written survives a reopen, another process's write is seen, the two
atomic steps are atomic, expiry holds, and the file never undoes a write still on its way to it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import durable
from proxy.durable import RedisState, SqliteState, StateError, rotation
from proxy.store import RedisStore


def family(cur: str, *prev: str) -> str:
    return orjson.dumps({"cur": cur, "prev": list(prev)}).decode()


def test_rotation_is_one_rule() -> None:
    assert rotation(None, "a", "b", 4) == ("unknown", None)
    outcome, value = rotation(family("a"), "a", "b", 2)
    assert outcome == "ok" and orjson.loads(value or "") == {"cur": "b", "prev": ["a"]}
    assert rotation(family("c", "b", "a"), "b", "d", 2) == ("replayed", None)
    assert rotation(family("c", "b"), "z", "d", 2) == ("unknown", None)
    _, kept = rotation(family("c", "b", "a"), "c", "d", 2)
    assert orjson.loads(kept or "")["prev"] == ["c", "b"]  # bounded: the oldest goes


async def test_what_was_written_survives_a_reopen_and_expiry_holds(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteState(path)
    await first.set("k", "v")
    await first.set("brief", "x", ttl=1)
    await first.add("group", "m1")
    await first.add("group", "m2")
    await first.remove("group", "m1")
    await first.delete("k")
    await first.set("k2", "kept")
    await first.close()
    again = SqliteState(path)
    assert await again.get("k") is None and await again.get("k2") == "kept"
    assert await again.members("group") == ["m2"]
    assert await again.get("brief") == "x"
    await asyncio.sleep(1.1)
    assert await again.get("brief") is None and not await again.any_exists(["brief"])
    await again.close()


async def test_another_process_s_write_is_seen_within_the_poll(tmp_path: Path) -> None:
    """The CLI revokes in the same file while the proxy runs."""
    path = tmp_path / "state.sqlite3"
    proxy, cli = SqliteState(path), SqliteState(path)
    assert not await proxy.any_exists(["scopegate:pat:revoked:abc"])
    await cli.set("scopegate:pat:revoked:abc", "{}")
    await asyncio.sleep(durable.POLL_SECONDS * 2)
    assert await proxy.any_exists(["scopegate:pat:revoked:abc"])
    await cli.close()
    await proxy.close()


async def test_the_file_never_undoes_a_write_on_its_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotated refresh family is in the mirror before it is in the file; another process's commit in between
    makes the proxy read the file again, and the family's older row there must not come back."""
    path = tmp_path / "state.sqlite3"
    proxy, cli = SqliteState(path), SqliteState(path)
    await proxy.get("anything")  # polled now: its own commit below is read back only at the next poll
    await proxy.set("family", family("a"))
    release = threading.Event()
    commit = proxy._commit

    def slow(rows: list[Any]) -> None:
        release.wait(5)
        commit(rows)

    monkeypatch.setattr(proxy, "_commit", slow)
    rotating = asyncio.create_task(proxy.rotate("family", "a", "b", 4, 60))
    await asyncio.sleep(0.05)
    await cli.set("other", "1")  # another process commits: the proxy will read the file again
    await asyncio.sleep(durable.POLL_SECONDS * 2)
    assert orjson.loads(await proxy.get("family") or "")["cur"] == "b"
    assert await proxy.rotate("family", "a", "c", 4, 60) == "replayed"  # the old token is a replay, not "ok"
    release.set()
    assert await rotating == "ok"
    await cli.close()
    await proxy.close()


async def test_rotate_and_add_capped_are_atomic_in_memory() -> None:
    state = SqliteState(None)
    await state.set("family", family("a"))
    outcomes = await asyncio.gather(*(state.rotate("family", "a", f"n{i}", 4, 60) for i in range(20)))
    assert outcomes.count("ok") == 1 and outcomes.count("replayed") == 19
    added = await asyncio.gather(*(state.add_capped("g", f"m{i}", 5) for i in range(20)))
    assert added.count(True) == 5 and len(await state.members("g")) == 5
    assert await state.add_capped("g", "m0", 5)  # a member already there is no new one


async def test_a_state_dir_that_is_no_directory_is_said(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no writable directory"):
        SqliteState(tmp_path / "missing" / "state.sqlite3")


async def test_redis_keeps_the_same_promises(redis_server: Any) -> None:
    store = RedisStore(redis_server.url)
    state = RedisState(store)
    try:
        await state.set("family", family("a"))
        outcomes = await asyncio.gather(*(state.rotate("family", "a", f"n{i}", 4, 60) for i in range(20)))
        assert outcomes.count("ok") == 1 and outcomes.count("replayed") == 19
        assert await state.rotate("missing", "a", "b", 4, 60) == "unknown"
        added = await asyncio.gather(*(state.add_capped("g", f"m{i}", 5) for i in range(20)))
        assert added.count(True) == 5 and len(await state.members("g")) == 5
        await state.set("brief", "x", ttl=1)
        assert await state.get_many(["brief", "none"]) == ["x", None]
        time.sleep(1.1)
        assert not await state.any_exists(["brief"]) and await state.settle()  # one instance: nothing to wait on
    finally:
        await store.close()
