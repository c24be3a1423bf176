"""Preview-first writes end to end: the preview, the confirmation, every refusal, concurrency, Redis failure and
recovery, two proxies sharing one Redis, and the upstream's own dry run. Every assertion about an effect is made on
what the upstream received."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.canonical import digest
from proxy.edge.app import FORWARDER
from proxy.guards.confirm import ConfirmGuard
from tests.conftest import MODERN_META, MODES, POLICIES, TOKENS, Recorder, sdk_client
from tests.rawmcp import LegacySession

VENDOR = {"workspaceId": "acme", "name": "Paper Co", "iban": "DE89370400440532013000"}


def test_digest_is_canonical() -> None:
    assert digest({"a": 1, "b": {"x": 2.0, "y": [1.0, "z"]}}) == digest({"b": {"y": [1, "z"], "x": 2}, "a": 1.0})
    assert digest({"a": 1}) == digest({"a": 1, "confirmationToken": "sgc_x"})
    assert digest({"a": 1}) != digest({"a": 2}) and digest({"a": "1"}) != digest({"a": 1})


async def call(url: str, arguments: dict, token: str = TOKENS["writer"], tool: str = "create_vendor",
               meta: dict | None = None, msg_id: int = 1, busy_retries: int = 0) -> dict:
    """`busy_retries`: how often a 503 "credential status unavailable" is asked again. Authentication refuses with
    it, before any guard ran, when the store does not answer in time (a burst of requests in the test's own event
    loop can hold a Redis reply past its 0.25 s budget): nothing was taken or forwarded, so a client's retry is the
    same request again."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments, "_meta": {**MODERN_META, **(meta or {})}}})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/call", "Mcp-Name": tool}
    for attempt in range(busy_retries + 1):
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
            raw = await resp.read()
            if resp.status == 503 and attempt < busy_retries and b"credential status unavailable" in raw:
                await asyncio.sleep(0.3)  # past the circuit breaker's pause, as Retry-After says
                continue
            assert resp.status == 200
            return orjson.loads(raw)["result"]
    raise AssertionError("unreachable")


def upstream_calls(recorder: Recorder, tool: str) -> list[dict]:
    return [c["params"] for c in recorder.calls("tools/call") if c["params"]["name"] == tool]


@pytest.mark.parametrize("mode", MODES)
async def test_round_trip_with_the_sdk(mode: str, proxy_url: str, recorder: Recorder) -> None:
    async with sdk_client(proxy_url, mode) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert "confirmationToken" in listed["create_vendor"].input_schema["properties"]
        assert "preview and a confirmationToken" in listed["create_vendor"].description
        assert "confirmationToken" not in listed["list_accounts"].input_schema["properties"]

        preview = await client.call_tool("create_vendor", VENDOR)
        content = preview.structured_content
        assert not preview.is_error and content["status"] == "confirmation_required"
        assert content["preview"]["tool"] == "create_vendor" and content["preview"]["workspace"] == "acme"
        assert content["preview"]["arguments"]["iban"] == "***"  # redacted by the policy
        assert content["confirmationToken"].startswith("sgc_") and content["expiresAt"].endswith("Z")
        text = preview.content[0].text
        assert text.startswith("Nothing has changed yet.") and "confirmationToken" in text and "DE89" not in text
        assert upstream_calls(recorder, "create_vendor") == []  # held: nothing reached the upstream

        token = content["confirmationToken"]
        done = await client.call_tool("create_vendor", {**VENDOR, "confirmationToken": token})
        assert not done.is_error and done.structured_content["vendor"]["name"] == "Paper Co"
        (applied,) = upstream_calls(recorder, "create_vendor")
        assert applied["arguments"] == VENDOR  # forwarded once, token stripped

        again = await client.call_tool("create_vendor", {**VENDOR, "confirmationToken": token})
        assert again.is_error and "already used" in again.content[0].text
    assert len(upstream_calls(recorder, "create_vendor")) == 1


async def test_token_in_meta(proxy_url: str, recorder: Recorder) -> None:
    preview = await call(proxy_url, VENDOR)
    token = preview["structuredContent"]["confirmationToken"]
    done = await call(proxy_url, VENDOR, meta={"confirmationToken": token})
    assert done["isError"] is False
    (applied,) = upstream_calls(recorder, "create_vendor")
    assert "confirmationToken" not in applied["_meta"] and applied["arguments"] == VENDOR


async def test_every_refusal_forwards_nothing(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    from proxy.edge.app import FORWARDER
    from proxy.guards.confirm import ConfirmGuard

    proxy_url = await start_proxy(upstream.url)
    guard = next(g for g in start_proxy.runners[-1].app[FORWARDER].pipeline.guards if isinstance(g, ConfirmGuard))

    async def token_for(arguments: dict, tool: str = "create_vendor", who: str = "writer") -> str:
        return (await call(proxy_url, arguments, TOKENS[who], tool))["structuredContent"]["confirmationToken"]

    cases = [
        ("unknown", VENDOR, "create_vendor", "writer", "sgc_" + "x" * 43, "is unknown"),
        ("another credential", VENDOR, "create_vendor", "other", await token_for(VENDOR),
         "issued to another credential"),
        ("another tool", {"workspaceId": "acme", "period": "2026-09"}, "lock_period", "writer",
         await token_for(VENDOR), "issued for create_vendor, not lock_period"),
        ("other arguments", {**VENDOR, "name": "Ink Ltd"}, "create_vendor", "writer", await token_for(VENDOR),
         "arguments differ"),
        ("another workspace", {**VENDOR, "workspaceId": "globex"}, "create_vendor", "writer",
         await token_for(VENDOR), "issued for workspace 'acme', not 'globex'"),
        ("not a string", VENDOR, "create_vendor", "writer", 42, "must be a string"),
    ]
    for _, arguments, tool, who, token, words in cases:
        refused = await call(proxy_url, {**arguments, "confirmationToken": token}, TOKENS[who], tool)
        assert refused["isError"] is True and words in refused["content"][0]["text"], (words, refused)

    expiring = await token_for(VENDOR)
    later = guard.clock() + 3600
    guard.clock = lambda: later  # an hour passes, for this guard only
    refused = await call(proxy_url, {**VENDOR, "confirmationToken": expiring})
    assert refused["isError"] is True and "has expired" in refused["content"][0]["text"]
    assert upstream_calls(recorder, "create_vendor") == [] and upstream_calls(recorder, "lock_period") == []


async def test_another_session(proxy_url: str, recorder: Recorder) -> None:
    async with aiohttp.ClientSession() as http:
        first, second = LegacySession(http, proxy_url), LegacySession(http, proxy_url)
        await first.open()
        await second.open()

        async def result_of(session: LegacySession, arguments: dict) -> dict:
            message = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": {"name": "create_vendor", "arguments": arguments}}
            async with session.post(message) as resp:
                body = await resp.read()  # the proxy's own answers are JSON, even in a session
                assert resp.headers["Content-Type"].startswith("application/json")
                return orjson.loads(body)["result"]

        token = (await result_of(first, VENDOR))["structuredContent"]["confirmationToken"]
        refused = await result_of(second, {**VENDOR, "confirmationToken": token})
        assert refused["isError"] is True and "another session" in refused["content"][0]["text"]
    assert upstream_calls(recorder, "create_vendor") == []


class SlowAfterTake:
    """The proxy's own store, with 200 ms more before the winning take's caller goes on (as a loaded Redis adds)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def take(self, *args: Any, **kwargs: Any) -> Any:
        value = await self._store.take(*args, **kwargs)
        if value is not None:  # the winner's next round trip is the slow one
            await asyncio.sleep(0.2)
        return value


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_fifty_concurrent_confirmations_forward_once(store: str, start_proxy: Any, upstream: Any,
                                                           recorder: Recorder, tmp_path_factory: Any) -> None:
    """The attacker's replay: one token, fifty confirmations at once (through two replicas sharing Redis). Exactly
    one is forwarded, and every other is told the token is already used: taking the preview and marking the token
    used are one step, so no confirmation falls in between and sees neither."""
    server = None
    if store == "redis":
        from tests.conftest import RedisServer

        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
    try:
        settings: dict[str, Any] = {"max_calls_per_credential": 1000}  # all at once: no 429 for any
        if server is not None:
            settings["redis_url"] = server.url
        urls = [await start_proxy(upstream.url, **settings)]
        if server is not None:
            urls.append(await start_proxy(upstream.url, **settings))
        for runner in start_proxy.runners:  # a slow store round trip after the take: the window, held open
            (guard,) = [g for g in runner.app[FORWARDER].pipeline.guards if isinstance(g, ConfirmGuard)]
            guard.store = SlowAfterTake(guard.store)
        token = (await call(urls[0], VENDOR))["structuredContent"]["confirmationToken"]
        results = await asyncio.gather(*(call(urls[i % len(urls)], {**VENDOR, "confirmationToken": token}, msg_id=i,
                                              busy_retries=20) for i in range(50)))
        assert sum(1 for r in results if r["isError"] is False) == 1
        assert [r["content"][0]["text"] for r in results if r["isError"]] == [
            "the confirmation token is already used: call create_vendor without it for a new preview"] * 49
        assert len(upstream_calls(recorder, "create_vendor")) == 1
    finally:
        if server is not None:
            server.stop()


async def test_redis_down_writes_refused_reads_flow_then_recovery(start_proxy: Any, upstream: Any,
                                                                  recorder: Recorder, redis_server: Any) -> None:
    url = await start_proxy(upstream.url, redis_url=redis_server.url)
    read = {"workspaceId": "acme"}
    assert (await call(url, read, tool="list_accounts"))["isError"] is False
    token = (await call(url, VENDOR))["structuredContent"]["confirmationToken"]
    redis_server.stop()
    assert (await call(url, read, tool="list_accounts"))["isError"] is False  # reads keep flowing
    refused = await call(url, VENDOR)
    assert refused["isError"] is True and "confirmation store unavailable" in refused["content"][0]["text"]
    refused = await call(url, {**VENDOR, "confirmationToken": token})
    assert "confirmation store unavailable" in refused["content"][0]["text"]
    assert upstream_calls(recorder, "create_vendor") == []
    redis_server.start()  # an empty Redis: the old preview is gone, and a new one works
    deadline = time.monotonic() + 10  # once the circuit breaker's window has passed
    while "store unavailable" in (refused := await call(url, {**VENDOR, "confirmationToken": token}))[
            "content"][0]["text"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert refused["isError"] is True and "is unknown" in refused["content"][0]["text"]
    token = (await call(url, VENDOR))["structuredContent"]["confirmationToken"]
    assert (await call(url, {**VENDOR, "confirmationToken": token}))["isError"] is False
    assert len(upstream_calls(recorder, "create_vendor")) == 1


async def test_preview_on_one_proxy_confirm_on_another(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                       redis_server: Any) -> None:
    first = await start_proxy(upstream.url, redis_url=redis_server.url)
    second = await start_proxy(upstream.url, redis_url=redis_server.url)
    token = (await call(first, VENDOR))["structuredContent"]["confirmationToken"]
    assert (await call(second, {**VENDOR, "confirmationToken": token}))["isError"] is False
    assert (await call(first, {**VENDOR, "confirmationToken": token}))["isError"] is True  # single use, shared
    assert len(upstream_calls(recorder, "create_vendor")) == 1


async def test_dry_run_preview_carries_the_upstreams_own_answer(start_proxy: Any, upstream: Any,
                                                                recorder: Recorder) -> None:
    url = await start_proxy(upstream.url, policy=str(POLICIES / "pat-workspaces.yaml"))
    entry = {"workspaceId": "acme", "date": "2026-10-31", "memo": "supplies",
             "lines": [{"account": "6000", "debit": 120}, {"account": "1000", "credit": 120}]}
    preview = await call(url, entry, tool="create_journal_entry")
    upstream_preview = preview["structuredContent"]["preview"]["upstream_preview"]
    assert upstream_preview["dry_run"] is True and upstream_preview["would_post"]["memo"] == "supplies"
    assert "The service's own dry run says:" in preview["content"][0]["text"]
    (probe,) = upstream_calls(recorder, "create_journal_entry")
    assert probe["arguments"]["dry_run"] is True  # only the dry run reached the upstream so far
    token = preview["structuredContent"]["confirmationToken"]
    done = await call(url, {**entry, "confirmationToken": token}, tool="create_journal_entry")
    assert done["structuredContent"]["posted"]["memo"] == "supplies"
    applied = upstream_calls(recorder, "create_journal_entry")[-1]
    assert applied["arguments"] == entry  # the apply is exactly what was previewed, without dry_run


@pytest.mark.parametrize("policy_name", ["pat-workspaces", "ledger-scopes", "org-ceiling", "app-token"])
async def test_every_write_of_every_example_policy_is_held(policy_name: str, start_proxy: Any, upstream: Any,
                                                           recorder: Recorder, issue: Any,
                                                           app_token_upstream: str) -> None:
    from proxy.policy.model import load_policy

    path = POLICIES / f"{policy_name}.yaml"
    policy = load_policy(path)
    everything = list(policy.scopes)
    token = issue("operator", everything, kind="admin_key", role="owner" if policy.roles else None,
                  permissions={"acme": "admin"} if policy.roles else {},
                  org_capabilities={flag: True for flag in everything if flag.startswith("can_")})
    settings: dict[str, Any] = {"policy": str(path), "pat_file": issue.path}
    target = upstream.url
    if policy.upstream_headers:
        target = app_token_upstream
        settings["env"] = {"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": "commerce-app-token-42"}
    url = await start_proxy(target, **settings)
    writes = [r for r in policy.tools if r.effect == "write"]
    assert writes
    for rule in writes:
        names = [rule.match] if "*" not in rule.match else ["create_vendor", "create_journal_entry"]
        for name in names:
            arguments: dict[str, Any] = {"workspaceId": "acme"}
            if rule.conditions:  # what its conditions read (without it they refuse the call: fail closed)
                arguments["lines"] = [{"account": "6000", "debit": 10}, {"account": "1000", "credit": 10}]
            preview = await call(url, arguments, token, tool=name)
            if rule.confirm == "human" and rule.fallback == "refuse":
                # Held for a person, whom this client cannot ask: refused, and nothing at all reaches the upstream.
                assert preview["isError"] is True and "needs a person's approval" in preview["content"][0]["text"]
                assert upstream_calls(recorder, name) == []
                continue
            assert preview["isError"] is False, (name, preview)
            assert preview["structuredContent"]["status"] == "confirmation_required"
            for sent in upstream_calls(recorder, name):  # only ever a dry run, never the write itself
                assert rule.dry_run is not None and sent["arguments"][rule.dry_run.argument] == rule.dry_run.value


async def test_two_processes_share_one_redis(start_proxy: Any, upstream: Any, recorder: Recorder,
                                             redis_server: Any, pat_file: str) -> None:
    """A preview issued by one proxy process is confirmed through another: nothing but Redis is shared."""
    import os
    import subprocess
    import sys

    from proxy.demo.run import free_port, wait_for_port

    here = await start_proxy(upstream.url, redis_url=redis_server.url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    other = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--upstream", upstream.url, "--listen", f"127.0.0.1:{port}",
         "--redis-url", redis_server.url, "--pat-file", pat_file, "--policy", str(POLICIES / "pat-workspaces.yaml"),
         "--metrics-listen", "127.0.0.1:0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.get_running_loop().run_in_executor(None, wait_for_port, port, other, "second proxy")
        there = f"http://127.0.0.1:{port}/mcp"
        token = (await call(there, VENDOR))["structuredContent"]["confirmationToken"]
        assert (await call(here, {**VENDOR, "confirmationToken": token}))["isError"] is False
        refused = await call(there, {**VENDOR, "confirmationToken": token})
        assert refused["isError"] is True and "already used" in refused["content"][0]["text"]
    finally:
        other.terminate()
        other.wait(timeout=10)
    assert len(upstream_calls(recorder, "create_vendor")) == 1
