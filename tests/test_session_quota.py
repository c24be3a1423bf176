"""Session bindings are bounded and fair: one credential that opens session after session (and never ends them)
recycles its own least recently used bindings, so it never takes the room every other caller needs; per-session
state kept beside a binding ends with it; the in-memory store's overall cap still holds. Real proxy, the demo
ledger upstream, the SDK's client where a session must keep working, raw sessions for the flood."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.edge.app import FORWARDER, OPS_PORT
from proxy.guards.session_binding import SessionBinding
from proxy.store import MemoryStore, RedisStore
from tests.conftest import TOKENS, Recorder, RedisServer, sdk_client
from tests.rawmcp import LegacySession
from tests.test_bounded import counted, scrape

READ = {"workspaceId": "acme"}


@pytest.fixture(params=["memory", "redis"])
async def store_settings(request: Any, tmp_path_factory: Any) -> AsyncIterator[dict[str, Any]]:
    if request.param == "memory":
        yield {}
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield {"redis_url": server.url}
    finally:
        server.stop()


def binding_of(start_proxy: Any) -> SessionBinding:
    """The running proxy's session binding step (its store is the proxy's own)."""
    checks = start_proxy.runners[-1].app[FORWARDER].pipeline.admission
    (binding,) = [c.__self__ for c in checks if isinstance(getattr(c, "__self__", None), SessionBinding)]
    return binding


async def status_of(session: LegacySession, msg_id: int = 1) -> int:
    async with session.post({"jsonrpc": "2.0", "id": msg_id, "method": "ping"}) as resp:
        await resp.read()
        return resp.status


async def test_one_credentials_session_flood_leaves_every_other_caller_alone(
        store_settings: dict[str, Any], start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    """The flood would fill the whole in-memory binding space (8 keys) twice over; with a quota of 3 it recycles its
    own oldest sessions instead: each of its 20 sessions opens, its oldest then get 404 and its newest work, and the
    other credential's open session and its new ones work throughout."""
    quota, flood = 3, 20
    url = await start_proxy(upstream.url, memory_store_keys=8, max_sessions_per_credential=quota, **store_settings)
    async with sdk_client(url, "legacy", token=TOKENS["other"]) as theirs, aiohttp.ClientSession() as http:
        assert (await theirs.call_tool("list_accounts", READ)).is_error is False
        mine = [LegacySession(http, url) for _ in range(flood)]
        for session in mine:
            await session.open()  # every one opens: 200, never 503
        assert [await status_of(s) for s in mine[:flood - quota]] == [404] * (flood - quota)
        assert [await status_of(s) for s in mine[flood - quota:]] == [200] * quota
        assert (await theirs.call_tool("list_accounts", READ)).is_error is False  # theirs still works ...
        async with sdk_client(url, "legacy", token=TOKENS["other"]) as another:  # ... and they still open more
            assert (await another.call_tool("list_accounts", READ)).is_error is False
    metrics = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    assert counted(metrics, "scopegate_session_evictions_total") == flood - quota


async def test_the_least_recently_used_session_is_the_one_dropped(store_settings: dict[str, Any], start_proxy: Any,
                                                                 upstream: Any, recorder: Recorder) -> None:
    """A busy honest client's long-lived session survives its own churn of short ones: recency, not age, decides."""
    url = await start_proxy(upstream.url, max_sessions_per_credential=3, **store_settings)
    async with aiohttp.ClientSession() as http:
        first, second, third, fourth = (LegacySession(http, url) for _ in range(4))
        for session in (first, second, third):
            await session.open()
        assert await status_of(first) == 200  # the oldest, but just used
        await fourth.open()
        assert [await status_of(s) for s in (first, second, third, fourth)] == [200, 404, 200, 200]


async def test_a_deleted_or_dropped_session_leaves_nothing_behind(store_settings: dict[str, Any], start_proxy: Any,
                                                                 upstream: Any, recorder: Recorder) -> None:
    """What the proxy keeps per session (the binding, whether its client can show a form, the binding cache) ends
    with the session: a flood of sessions leaves at most the quota's worth, DELETE leaves nothing."""
    quota = 3
    url = await start_proxy(upstream.url, max_sessions_per_credential=quota, **store_settings)
    binding = binding_of(start_proxy)
    store = binding.store

    async def kept(prefix: str) -> int:
        if isinstance(store, MemoryStore):
            return len([key for key in list(store._spaces.get(prefix.rstrip(":"), {})) if await store.exists(key)])
        return len(await store._redis.keys(prefix + "*"))  # type: ignore[attr-defined]

    async with aiohttp.ClientSession() as http:
        sessions = [LegacySession(http, url) for _ in range(12)]
        for session in sessions:
            await session.open()
        assert await kept("scopegate:session:") == quota
        assert await kept("scopegate:session-elicit:") == quota
        assert len(binding._confirmed) == quota
        for session in sessions[-quota:]:
            async with http.delete(url, headers=session.headers()) as resp:
                assert resp.status == 200
        assert await kept("scopegate:session:") == 0
        assert await kept("scopegate:session-elicit:") == 0
        assert len(binding._confirmed) == 0
        if not isinstance(store, MemoryStore):  # the credential's own index of its sessions is bounded too
            (index,) = await store._redis.keys("scopegate:sessions-of:*")  # type: ignore[attr-defined]
            assert await store._redis.zcard(index) <= quota  # type: ignore[attr-defined]
        else:
            assert sum(len(members) for members in store._groups.values()) == 0


async def test_the_memory_stores_overall_cap_still_holds(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    """Quotas share out the room, the overall cap bounds it: with two credentials at their quota of 3 in a space of
    6, a third credential's new session is refused (503, fail closed) and nobody's binding is evicted for it; a
    credential at its quota still opens new sessions in its own room."""
    url = await start_proxy(upstream.url, memory_store_keys=6, max_sessions_per_credential=3)
    async with aiohttp.ClientSession() as http:
        writers = [LegacySession(http, url) for _ in range(3)]
        others = [LegacySession(http, url, TOKENS["other"]) for _ in range(3)]
        for session in writers + others:
            await session.open()
        reader = LegacySession(http, url, TOKENS["reader"])
        with pytest.raises(AssertionError, match="session store unavailable"):
            await reader.open()
        assert [await status_of(s) for s in writers + others] == [200] * 6
        late = LegacySession(http, url)
        await late.open()  # at its quota: its own least recently used binding makes room
        assert [await status_of(s) for s in writers] == [404, 200, 200]
        assert await status_of(late) == 200 and [await status_of(s) for s in others] == [200] * 3
    assert len(binding_of(start_proxy).store._spaces["scopegate:session"]) == 6  # type: ignore[attr-defined]


async def test_a_session_in_use_by_the_sdk_client_keeps_working_beside_a_flood(start_proxy: Any, upstream: Any,
                                                                               recorder: Recorder) -> None:
    """The SDK client of the flooding credential itself keeps its session as long as it keeps using it."""
    url = await start_proxy(upstream.url, max_sessions_per_credential=3)
    async with sdk_client(url, "legacy") as client, aiohttp.ClientSession() as http:
        for _ in range(10):
            assert (await client.call_tool("list_accounts", READ)).is_error is False  # in use: most recent
            await LegacySession(http, url).open()
        assert (await client.call_tool("list_accounts", READ)).is_error is False
    metrics = await scrape(start_proxy.runners[-1].app[OPS_PORT])
    assert counted(metrics, "scopegate_session_evictions_total") == 10 + 1 - 3


# --- the store's part, without a proxy ------------------------------------------------------------------------------

async def test_a_capped_group_gives_up_its_own_least_recently_used_and_nothing_else() -> None:
    store = MemoryStore(limit=4)
    await store.set("scopegate:session:theirs", "pat:them", ttl=3600)
    for name in ("a", "b", "c"):
        assert await store.set_capped(f"scopegate:session:{name}", "pat:me", ttl=3600, group="me", limit=3) == []
    await store.get("scopegate:session:a", refresh_ttl=3600)  # used: b is now the least recently used
    assert await store.set_capped("scopegate:session:d", "pat:me", ttl=3600, group="me", limit=3) == [
        "scopegate:session:b"]
    assert await store.get("scopegate:session:theirs") == "pat:them"
    # An expired member goes first, and then nothing live is given up for it.
    store._spaces["scopegate:session"]["scopegate:session:c"] = ("pat:me", 0.0)
    assert await store.set_capped("scopegate:session:e", "pat:me", ttl=3600, group="me", limit=3) == []
    assert sorted(store._groups["me"]) == ["scopegate:session:a", "scopegate:session:d", "scopegate:session:e"]
    await store.delete("scopegate:session:a", "scopegate:session:d", "scopegate:session:e")
    assert store._groups == {} and store._group_of == {}  # a group ends with its keys


async def test_taking_with_a_mark_is_one_step_even_when_marks_are_full() -> None:
    full: list[int] = []
    store = MemoryStore(limit=2, on_full=lambda: full.append(1))
    await store.set("scopegate:preview:x", "held", ttl=60)
    await store.set("scopegate:preview:y", "held", ttl=60)
    assert await store.take("scopegate:preview:x", mark="scopegate:preview-used:x", mark_ttl=60) == "held"
    assert await store.exists("scopegate:preview-used:x")
    await store.set("scopegate:preview-used:other", "1", ttl=60)  # now the kind of marks is full
    # The take is the single-use guarantee: a full kind of marks (counted) costs the mark, never the take.
    assert await store.take("scopegate:preview:y", mark="scopegate:preview-used:y", mark_ttl=60) == "held"
    assert await store.take("scopegate:preview:y", mark="scopegate:preview-used:y", mark_ttl=60) is None
    assert not await store.exists("scopegate:preview-used:y") and full == [1]


async def test_the_redis_store_takes_and_marks_as_one_step(redis_server: Any) -> None:
    store = RedisStore(redis_server.url)
    try:
        await store.set("scopegate:preview:x", "held", ttl=60)
        assert await store.take("scopegate:preview:x", mark="scopegate:preview-used:x", mark_ttl=60) == "held"
        assert await store.exists("scopegate:preview-used:x")
        assert await store.take("scopegate:preview:x", mark="scopegate:preview-used:y", mark_ttl=60) is None
        assert not await store.exists("scopegate:preview-used:y")  # nothing taken, nothing marked
    finally:
        await store.close()


async def test_expired_members_make_room_without_evicting_a_live_one() -> None:
    store = MemoryStore()
    for name in "abcdef":
        await store.set_capped(f"scopegate:session:{name}", "pat:me", ttl=3600, group="me", limit=6)
    for name in "ab":  # two of six expired: one new member needs no live one's place
        store._spaces["scopegate:session"][f"scopegate:session:{name}"] = ("pat:me", 0.0)
    assert await store.set_capped("scopegate:session:g", "pat:me", ttl=3600, group="me", limit=6) == []
    assert [await store.get(f"scopegate:session:{name}") for name in "cdefg"] == ["pat:me"] * 5
