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
from proxy.identity.lifecycle import Tree
from proxy.store import RedisStore, StoreUnavailable


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


async def test_a_write_the_file_refused_is_not_kept_in_the_mirror(tmp_path: Path, caplog: Any) -> None:
    """The disk is full (SQLite's own limit on the file's pages, a real SQLITE_FULL). A revocation that did not reach
    the file is refused (503), and the mirror must not say otherwise: a retry on the page found its own unwritten
    record there, answered "Revoked." and wrote nothing, and after a restart the credential worked again."""
    path = tmp_path / "state.sqlite3"
    state = SqliteState(path)
    tree = Tree(state)
    (pages,) = state._writer.execute("PRAGMA page_count").fetchone()  # type: ignore[union-attr]
    state._writer.execute(f"PRAGMA max_page_count = {pages + 2}")  # type: ignore[union-attr]
    with pytest.raises(StoreUnavailable):
        for n in range(10_000):
            await state.set(f"filler{n}", "x")
    for _ in range(2):  # the person tries again after the 503
        with pytest.raises(StoreUnavailable):
            await tree.revoke("pat1", by="page", reason="leaked")
        assert not await tree.revoked_any(["pat1"])  # what the file (and so the next start) says
    assert "database or disk is full" in caplog.text  # the operator is told why
    await state.close()
    again = SqliteState(path)
    assert not await Tree(again).revoked_any(["pat1"]) and await again.get(f"filler{n}") is None
    await again.close()


async def test_a_rotation_the_file_refused_leaves_the_refresh_token_current(tmp_path: Path) -> None:
    """Nothing is consumed by a refresh that could not be written: the client's retry is no replay."""
    state = SqliteState(tmp_path / "state.sqlite3")
    cur, new = "a" * 64, "b" * 64  # digests, as refresh families hold
    await state.set("family", family(cur))
    await state.add("grants", "g1")
    (pages,) = state._writer.execute("PRAGMA page_count").fetchone()  # type: ignore[union-attr]
    state._writer.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
    with pytest.raises(StoreUnavailable):
        for n in range(10_000):
            await state.set(f"filler{n}", "x")
    with pytest.raises(StoreUnavailable):
        await state.rotate("family", cur, new, 4, 60)
    with pytest.raises(StoreUnavailable):
        await state.add_capped("grants", "g2", 5)
    assert orjson.loads(await state.get("family") or "")["cur"] == cur and await state.members("grants") == ["g1"]
    state._writer.execute(f"PRAGMA max_page_count = {pages + 100}")  # type: ignore[union-attr]  # room again
    assert await state.rotate("family", cur, new, 4, 60) == "ok"
    await state.close()


def _remove(path: Path) -> None:
    for part in path.parent.glob(path.name + "*"):  # the file, its -wal and -shm: a careless clean-up
        part.unlink()


async def test_a_file_deleted_under_the_running_proxy_is_written_again(tmp_path: Path, caplog: Any) -> None:
    """The state file is deleted while the proxy runs: its connections wrote on into a file nobody would read,
    every write was acknowledged, and the next start found every revocation gone. Now the next poll (or the
    shutdown, when no request came) writes the mirror into a new file, which the CLI and the next start read."""
    path = tmp_path / "state.sqlite3"
    state = SqliteState(path)
    tree = Tree(state)
    await tree.revoke("before", by="page", reason="leaked")
    await state.add("grants", "g1")
    _remove(path)
    await asyncio.sleep(durable.POLL_SECONDS * 2)
    await tree.revoke("after", by="page", reason="leaked")  # polls first: the file is there again
    assert "deleted or replaced while running" in caplog.text
    cli = SqliteState(path)  # another process reads the file at the path
    assert await Tree(cli).revoked_any(["before"]) and await Tree(cli).revoked_any(["after"])
    await cli.close()
    _remove(path)
    await tree.revoke("last", by="page", reason="leaked")  # within the poll interval: only the shutdown sees it
    await state.close()
    again = SqliteState(path)
    assert all([await Tree(again).revoked_any([c]) for c in ("before", "after", "last")])
    assert await again.members("grants") == ["g1"]
    await again.close()


async def test_a_state_file_that_cannot_be_written_again_fails_closed(tmp_path: Path, caplog: Any) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    state = SqliteState(folder / "state.sqlite3")
    await Tree(state).revoke("before", by="page", reason="leaked")
    _remove(folder / "state.sqlite3")
    folder.rmdir()  # the volume itself is gone
    await asyncio.sleep(durable.POLL_SECONDS * 2)
    with pytest.raises(StoreUnavailable):
        await Tree(state).revoked_any(["before"])  # refused (503), never "not revoked"
    assert caplog.text.count("cannot be written again") == 1
    folder.mkdir()
    await asyncio.sleep(durable.POLL_SECONDS * 2)
    assert await Tree(state).revoked_any(["before"])  # written again once it can be
    await state.close()


async def test_what_expired_leaves_the_mirror_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running proxy holds what is alive: revocations and grants past their lifetime are forgotten."""
    path = tmp_path / "state.sqlite3"
    state = SqliteState(path)
    await state.set("brief", "x", ttl=1)
    await state.set("kept", "y")
    await asyncio.sleep(1.1)
    monkeypatch.setattr(durable, "PURGE_SECONDS", 0.0)
    state._polled = 0.0
    await state.get("kept")  # a poll: the purge runs
    assert "brief" not in state._kv and "kept" in state._kv
    await state.close()
    import sqlite3

    with sqlite3.connect(path) as connection:
        assert [k for (k,) in connection.execute("SELECT key FROM kv")] == ["kept"]


async def test_memory_mode_forgets_what_expired_too(monkeypatch: pytest.MonkeyPatch) -> None:
    state = SqliteState(None)
    await state.set("brief", "x", ttl=1)
    await asyncio.sleep(1.1)
    monkeypatch.setattr(durable, "PURGE_SECONDS", 0.0)
    state._polled = 0.0
    await state.get("other")
    assert "brief" not in state._kv
