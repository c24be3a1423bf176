"""Operations: the counters a Prometheus scrape sees after a scripted session, /healthz, and /readyz following the
upstream and Redis away and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from proxy.demo.event_store import resumable_app
from proxy.demo.ledger import build_server
from proxy.edge.app import OPS_PORT, RELOADER
from tests.conftest import MODERN_META, TOKENS, Recorder, ThreadedServer, free_port, wait_until

VENDOR = {"workspaceId": "acme", "name": "Paper Co"}


async def call(url: str, tool: str, arguments: dict, token: str | None = TOKENS["writer"]) -> Any:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": tool, "arguments": arguments, "_meta": MODERN_META}})
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_scripted_session_moves_the_counters(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                     tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(Path(__file__).resolve().parent.parent.joinpath("policies/pat-workspaces.yaml").read_text())
    url = await start_proxy(upstream.url, policy=str(policy))
    port = start_proxy.runners[-1].app[OPS_PORT]
    before = await scrape(port)
    assert value(before, "scopegate_build_info", version="0.1.0") == 1.0

    assert (await call(url, "list_accounts", {"workspaceId": "acme"}, token=None))[0] == 401
    assert (await call(url, "list_accounts", {"workspaceId": "acme"}, token="sgp_short"))[0] == 401
    assert (await call(url, "list_accounts", {"workspaceId": "acme"}))[0] == 200
    assert (await call(url, "lock_period", {"workspaceId": "acme", "period": "x"}, TOKENS["reader"]))[0] == 403
    _, preview = await call(url, "create_vendor", VENDOR)
    token = preview["result"]["structuredContent"]["confirmationToken"]
    await call(url, "create_vendor", {**VENDOR, "confirmationToken": token})
    await call(url, "create_vendor", {**VENDOR, "confirmationToken": token})  # already used
    async with aiohttp.ClientSession() as http:  # refused before any message is read: counted all the same
        async with http.post(url, data=b"{not json", headers={"Authorization": f"Bearer {TOKENS['writer']}",
                                                               "Content-Type": "application/json"}) as resp:
            assert resp.status == 400
        async with http.post(url, data=b"{}", headers={"Host": "evil.example"}) as resp:
            assert resp.status == 403
    policy.write_text("version: 1\ntools: nonsense\n")  # a reload that must fail
    reloader = start_proxy.runners[-1].app[RELOADER]
    assert await wait_until(lambda: reloader.results["failure"] >= 1)

    after = await scrape(port)
    expected = {
        ("scopegate_auth_failures_total", (("reason", "no_bearer"),)): 1,
        ("scopegate_auth_failures_total", (("reason", "malformed"),)): 1,
        ("scopegate_requests_total", (("decision", "unauthenticated"), ("method", "POST"))): 2,
        ("scopegate_requests_total", (("decision", "invalid"), ("method", "POST"))): 1,
        ("scopegate_requests_total", (("decision", "deny"), ("method", "POST"))): 1,
        ("scopegate_requests_total", (("decision", "allow"), ("method", "tools/call"))): 1,
        ("scopegate_requests_total", (("decision", "deny"), ("method", "tools/call"))): 1,
        ("scopegate_requests_total", (("decision", "preview"), ("method", "tools/call"))): 1,
        ("scopegate_requests_total", (("decision", "confirm"), ("method", "tools/call"))): 1,
        ("scopegate_requests_total", (("decision", "refuse"), ("method", "tools/call"))): 1,
        ("scopegate_confirmations_total", (("outcome", "issued"), ("reason", ""))): 1,
        ("scopegate_confirmations_total", (("outcome", "confirmed"), ("reason", ""))): 1,
        ("scopegate_confirmations_total", (("outcome", "refused"), ("reason", "already_used"))): 1,
        ("scopegate_policy_reloads_total", (("result", "failure"),)): 1,
    }
    for key, delta in expected.items():
        assert after.get(key, 0.0) - before.get(key, 0.0) == delta, key
    assert value(after, "scopegate_request_duration_seconds_count", http_method="POST") >= 7
    assert value(after, "scopegate_upstream_duration_seconds_count") >= 2
    assert value(after, "scopegate_open_streams") == 0
    assert value(after, "process_resident_memory_bytes") > 0  # process metrics are on, in the proxy's own registry
    for (name, labels), _ in after.items():  # bounded labels: no token, credential id or argument in any of them
        assert not any(TOKENS["writer"] in v or "Paper Co" in v or "sgp_" in v for _, v in labels), (name, labels)
        assert not any(" " in v for _, v in labels), (name, labels)  # label values are single words


async def test_healthz_and_readyz_follow_upstream_and_redis(start_proxy: Any, redis_server: Any) -> None:
    upstream_port = free_port()

    def serve() -> ThreadedServer:
        server = ThreadedServer(resumable_app(build_server()), upstream_port)
        server.start()
        return server

    own = serve()
    await start_proxy(f"http://127.0.0.1:{upstream_port}/mcp", redis_url=redis_server.url)
    ops = f"http://127.0.0.1:{start_proxy.runners[-1].app[OPS_PORT]}"

    async def ready() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http, http.get(f"{ops}/readyz") as resp:
            return resp.status, await resp.json()

    try:
        async with aiohttp.ClientSession() as http, http.get(f"{ops}/healthz") as resp:
            assert resp.status == 200
        status, body = await ready()
        assert status == 200 and body["checks"] == {"upstream": "ok", "redis": "ok"}
        assert body["policy"] == "pat-workspaces"
        redis_server.stop()
        status, body = await ready()
        assert status == 503 and body["checks"]["redis"].startswith("redis does not answer: PATs")
        redis_server.start()
        assert (await ready())[0] == 200
        own.stop()
        status, body = await ready()
        assert status == 503 and body["checks"]["upstream"] == "upstream does not accept connections"
        own = serve()
        assert (await ready())[0] == 200
    finally:
        own.stop()
