"""Rate limits (`limits:`): the GCRA, pure; the store's check in memory and in a real Redis (all or nothing); end to
end with the SDK client through two replicas sharing Redis (a limit reached on one is reached on the other, and
recovers), one replica in memory, 429 with Retry-After and a JSON-RPC error naming the limit, counted per person
and per credential as the policy says, previews counted once with their confirmation; the OAuth endpoints anyone
can reach limited per client address."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from proxy.guards.limits import completes_a_held_call, counted_per
from proxy.ratelimit import Check, gcra, key, parse_rate
from proxy.store import MemoryStore, RedisStore
from tests.conftest import MODES, POLICIES, Recorder, sdk_client
from tests.test_human_approval import ENTRY
from tests.test_oauth import oauth_proxy as oauth_proxy  # a fixture

# --- pure --------------------------------------------------------------------------------------------------------


def test_gcra_lets_a_burst_through_then_one_per_interval() -> None:
    tat, now, let = None, 100.0, []
    for _ in range(5):
        new_tat, _ = gcra(tat, now, 1.0, 3)
        let.append(new_tat is not None)
        tat = new_tat if new_tat is not None else tat
    assert let == [True, True, True, False, False]
    assert gcra(tat, now, 1.0, 3)[1] == pytest.approx(1.0)  # the next slot opens one interval on
    assert gcra(tat, now + 1.0, 1.0, 3)[0] is not None  # and then it is let through
    assert gcra(tat, now + 1.0 + 1e-9, 1.0, 3)[0] is not None
    assert gcra(None, now, 10.0, 1) == (now + 10.0, 0.0)


def test_keys_hash_what_they_count_by() -> None:
    first = key("writes", counted_per(("person", "tool"), "pat:1", "alice", "post", "acme"))
    assert first.startswith("scopegate:rate:writes:") and "alice" not in first
    assert first != key("writes", counted_per(("person", "tool"), "pat:1", "bob", "post", "acme"))
    assert key("w", counted_per((), "pat:1", "alice", "t", "")) == key("w", counted_per((), "pat:2", "bob", "u", "x"))
    assert parse_rate("30/60") == (30, 60.0) and parse_rate("0") is None
    for bad in ("30", "0/60", "5/0", "x/y"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_a_confirmation_completes_a_counted_preview() -> None:
    assert completes_a_held_call({"arguments": {"confirmationToken": "x"}})
    assert completes_a_held_call({"arguments": {}, "_meta": {"confirmationToken": "x"}})
    assert completes_a_held_call({"requestState": "sga_abc"})
    assert not completes_a_held_call({"arguments": {"amount": 1}, "requestState": "upstream-state"})


async def _all_or_nothing(store: Any) -> None:
    tight, loose = Check("scopegate:rate:tight:1", 60.0, 1), Check("scopegate:rate:loose:1", 60.0, 5)
    assert await store.rate((loose, tight)) == (-1, 0.0)
    refused, wait = await store.rate((loose, tight))
    assert refused == 1 and 59 < wait <= 60
    # The refused call charged nothing: the loose limit still has its other four.
    for _ in range(4):
        assert (await store.rate((loose,)))[0] == -1
    assert (await store.rate((loose,)))[0] == 0


async def test_memory_store_rate_is_all_or_nothing() -> None:
    await _all_or_nothing(MemoryStore())


async def test_memory_store_forgets_only_past_counts_and_fails_closed_when_full() -> None:
    store = MemoryStore(limit=2)
    assert (await store.rate((Check("scopegate:rate:a:1", 0.01, 1),)))[0] == -1
    assert (await store.rate((Check("scopegate:rate:a:2", 60.0, 1),)))[0] == -1
    await asyncio.sleep(1.05)  # the first count is in the past (and the sweep may run again)
    assert (await store.rate((Check("scopegate:rate:a:3", 60.0, 1),)))[0] == -1
    from proxy.store import StoreUnavailable
    with pytest.raises(StoreUnavailable):  # two live counts: a third would have to forget one
        await store.rate((Check("scopegate:rate:a:4", 60.0, 1),))


async def test_redis_store_rate_is_all_or_nothing(redis_server: Any) -> None:
    store = RedisStore(redis_server.url)
    try:
        await _all_or_nothing(store)
        fast = Check("scopegate:rate:fast:1", 0.2, 1)
        assert (await store.rate((fast,)))[0] == -1
        assert (await store.rate((fast,)))[0] == 0
        await asyncio.sleep(0.25)
        assert (await store.rate((fast,)))[0] == -1  # recovered on Redis' clock
    finally:
        await store.close()


# --- end to end --------------------------------------------------------------------------------------------------

def limits_policy(tmp_path: Path, *limits: dict[str, Any], name: str = "limits.yaml") -> str:
    policy = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    policy["limits"] = list(limits)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(policy))
    return str(path)


PER_PERSON = {"name": "reads_per_person", "match": "list_*", "per": ["person"], "rate": 2, "period_seconds": 2}


async def raw_call(url: str, token: str, tool: str, arguments: dict[str, Any]) -> tuple[int, Any, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(body), headers=headers) as answer:
        return answer.status, answer.headers, orjson.loads(await answer.read())


@pytest.mark.parametrize("mode", MODES)
async def test_a_limit_reached_on_one_replica_is_reached_on_the_other_and_recovers(
        mode: str, start_proxy: Any, upstream: Any, recorder: Recorder, redis_server: Any, issue: Any,
        tmp_path: Path) -> None:
    alice = issue("alice", ["mcp:read"], workspace="acme")
    alice_again = issue("alice-laptop", ["mcp:read"], workspace="acme", subject="user-alice")
    bob = issue("bob", ["mcp:read"], workspace="acme")
    policy = limits_policy(tmp_path, PER_PERSON)
    first = await start_proxy(upstream.url, policy=policy, redis_url=redis_server.url, pat_file=issue.path)
    second = await start_proxy(upstream.url, policy=policy, redis_url=redis_server.url, pat_file=issue.path)
    async with sdk_client(first, mode, token=alice) as one, sdk_client(second, mode, token=alice_again) as two:
        assert not (await one.call_tool("list_accounts", {})).is_error
        assert not (await two.call_tool("list_journal_entries", {})).is_error  # the same person, the other replica
        with pytest.raises(MCPError) as refused:
            await one.call_tool("list_accounts", {})
        assert "reads_per_person" in str(refused.value)
        status, headers, answer = await raw_call(second, alice_again, "list_accounts", {})
        assert status == 429 and 1 <= int(headers["Retry-After"]) <= 2
        assert answer["error"]["code"] == -32029 and answer["error"]["data"]["limit"] == "reads_per_person"
        async with sdk_client(second, mode, token=bob) as other:  # another person has a count of their own
            assert not (await other.call_tool("list_accounts", {})).is_error
        await asyncio.sleep(1.1)  # one interval (2 s / 2 calls): one call's room again
        assert not (await two.call_tool("list_accounts", {})).is_error
        with pytest.raises(MCPError):
            await one.call_tool("list_accounts", {})
    forwarded = [c["params"]["name"] for c in recorder.calls("tools/call")]
    assert len(forwarded) == 4  # alice's two, bob's, alice's after recovering: the refused ones never arrived


async def test_one_replica_in_memory_per_credential_and_workspace(start_proxy: Any, upstream: Any,
                                                                  recorder: Recorder, issue: Any,
                                                                  tmp_path: Path) -> None:
    writer = issue("writer", ["mcp:read", "mcp:write"])
    limit = {"name": "per_workspace", "match": "list_accounts", "per": ["credential", "workspace"], "rate": 1,
             "period_seconds": 60}
    url = await start_proxy(upstream.url, policy=limits_policy(tmp_path, limit), pat_file=issue.path)
    async with sdk_client(url, "auto", token=writer) as client:
        assert not (await client.call_tool("list_accounts", {"workspaceId": "acme"})).is_error
        assert not (await client.call_tool("list_accounts", {"workspaceId": "globex"})).is_error  # its own count
        with pytest.raises(MCPError, match="per_workspace"):
            await client.call_tool("list_accounts", {"workspaceId": "acme"})
        assert not (await client.call_tool("list_journal_entries", {"workspaceId": "acme"})).is_error  # not matched
    status, headers, _ = await raw_call(url, writer, "list_accounts", {"workspaceId": "acme"})
    assert status == 429 and 58 <= int(headers["Retry-After"]) <= 60
    metrics = await _metrics(start_proxy)
    assert 'scopegate_rate_limited_total{limit="per_workspace"} 2.0' in metrics
    assert 'decision="limited"' in metrics


async def _metrics(start_proxy: Any) -> str:
    from proxy.edge.app import FORWARDER

    registry = start_proxy.runners[-1].app[FORWARDER].metrics.registry
    from prometheus_client import generate_latest
    return generate_latest(registry).decode()


async def test_a_preview_counts_once_with_its_confirmation(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                           tmp_path: Path) -> None:
    """The posting is token-confirmed: the preview takes the one call the limit allows, and bringing its token
    back applies it; a second preview is then refused."""
    policy = yaml.safe_load(Path(limits_policy(tmp_path, {"name": "postings", "match": "create_journal_entry",
                                                          "per": ["credential"], "rate": 1,
                                                          "period_seconds": 60})).read_text())
    for rule in policy["tools"]:
        if rule["match"] == "create_journal_entry":
            rule.update({"confirm": "token"})
            rule.pop("fallback", None)
    path = tmp_path / "token.yaml"
    path.write_text(yaml.safe_dump(policy))
    url = await start_proxy(upstream.url, policy=str(path))
    async with sdk_client(url, "auto") as client:
        preview = await client.call_tool("create_journal_entry", ENTRY)
        token = preview.structured_content["confirmationToken"]
        done = await client.call_tool("create_journal_entry", {**ENTRY, "confirmationToken": token})
        assert not done.is_error and done.structured_content["posted"]["memo"] == "supplies"
        with pytest.raises(MCPError, match="postings"):
            await client.call_tool("create_journal_entry", ENTRY)


async def test_oauth_endpoints_are_limited_per_client_address(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start(oauth_rate_limit=(3, 60.0))
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(4):
            async with http.post(proxy.endpoint("token"), data={"grant_type": "refresh_token",
                                                                "refresh_token": "nope", "client_id": "x"}) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
                body = await r.json()
        assert statuses[:3] != [429] * 3 and statuses[3] == 429
        assert retry is not None and 1 <= int(retry) <= 60 and "too many requests" in body["error_description"]
        async with http.get(proxy.endpoint("authorize")) as page:  # the same address, another open endpoint
            assert page.status == 429 and "Retry-After" in page.headers
        async with http.get(proxy.endpoint("jwks.json")) as keys:  # what anyone may read often is not limited
            assert keys.status == 200


def test_the_oauth_limit_is_on_by_default() -> None:
    from yarl import URL

    from proxy.config import Config

    assert Config(upstream=URL("http://127.0.0.1:1/mcp")).oauth_rate_limit == (60, 60.0)


async def test_a_store_that_cannot_answer_refuses_the_call(tmp_path: Path) -> None:
    """Redis gone: the limit is not waived; the call is refused (503), nothing forwarded."""
    from multidict import CIMultiDict

    from proxy.exchange import Answer, Exchange
    from proxy.guards.limits import RateLimits
    from proxy.identity.principal import Principal
    from proxy.policy.decide import Rules
    from proxy.policy.model import load_policy
    from proxy.policy.reload import LivePolicy

    policy = load_policy(limits_policy(tmp_path, PER_PERSON))
    store = RedisStore(f"unix://{tmp_path / 'no-redis.sock'}")
    try:
        guard = RateLimits(LivePolicy(policy, Rules(policy)), store)
        exchange = Exchange("r", None, "2025-11-25", CIMultiDict(),
                            principal=Principal("alice", "pat-1", "alice", "pat", frozenset({"mcp:read"})))
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "list_accounts", "arguments": {}}}
        answer = await guard(exchange, message)
        assert isinstance(answer, Answer) and answer.http_status == 503
        assert "rate limit store unavailable" in answer.response["error"]["message"]
        unlimited = {**message, "params": {"name": "get_period_status", "arguments": {}}}
        assert await guard(exchange, unlimited) is unlimited  # a tool no limit counts never asks the store
    finally:
        await store.close()
