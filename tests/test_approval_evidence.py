"""Evidence of approvals on the page: one approval id links the held call, the approver's decision (who, which
credential, approved or declined, why) and the forwarded call in the audit trail; a refused approver is recorded
too; metrics count approvals by outcome; the optional webhook gets Slack-compatible JSON with the link (a small
aiohttp receiver on loopback); the page warns when the dry run is older than the rule's freshness window."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from proxy.demo.run import free_port
from proxy.edge.app import FORWARDER, OPS_PORT
from proxy.identity.oauth.approval_page import view
from tests.conftest import Recorder
from tests.page_approval_kit import (
    APPROVER,
    ENTRY,
    OUTSIDER,
    REQUESTER,
    TOOL,
    Approver,
    PageProxy,
    approval_link,
    posted,
    start_page_proxy,
)
from tests.test_page_approval import client


class Receiver:
    """A chat tool's incoming webhook, on loopback: keeps every JSON body it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.got: asyncio.Queue[Any] = asyncio.Queue()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            assert request.content_type == "application/json"
            await self.got.put(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


async def test_trail_metrics_and_webhook_link_one_approval(upstream: Any, recorder: Recorder, issue: Any,
                                                           tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    trail = tmp_path / "audit.jsonl"
    proxy = PageProxy(tokens={"alice": issue("alice", scopes=["mcp:read", "mcp:write"], subject=REQUESTER),
                              "bob": issue("bob", scopes=["mcp:read", "mcp:write"], subject=APPROVER),
                              "carol": issue("carol", scopes=["mcp:read", "mcp:write"], subject=OUTSIDER)})
    await start_page_proxy(proxy, upstream.url, tmp_path, issue.path, audit_sink=f"file:{trail}",
                           approval_webhook=URL(receiver.url))
    bob = Approver(proxy.tokens["bob"], proxy.origin)
    carol = Approver(proxy.tokens["carol"], proxy.origin)
    try:
        async with client(proxy.url, "auto", proxy.tokens["alice"]) as sdk:
            link = approval_link((await sdk.call_tool(TOOL, ENTRY)).content[0].text)
            hooked = await asyncio.wait_for(receiver.got.get(), 10)
            assert link in hooked["text"] and TOOL in hooked["text"] and REQUESTER in hooked["text"]
            assert hooked["approval"]["url"] == link and "supplies" not in orjson.dumps(hooked).decode()
            assert (await carol.force(link)).status_code == 403  # refused: recorded, counted
            assert (await bob.decide(link, "approve", "matches invoice 42")).status_code == 303
            assert not (await sdk.call_tool(TOOL, ENTRY)).is_error
            declined = approval_link((await sdk.call_tool(TOOL, {**ENTRY, "memo": "twice"})).content[0].text)
            await asyncio.wait_for(receiver.got.get(), 10)
            assert (await bob.decide(declined, "decline", "duplicate")).status_code == 303
            assert (await sdk.call_tool(TOOL, {**ENTRY, "memo": "twice"})).is_error
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{proxy.app[OPS_PORT]}/metrics") as scraped:
            metrics = await scraped.text()
        await proxy.app[FORWARDER].audit.flush()
    finally:
        await bob.close()
        await carol.close()
        for runner in proxy.runners:
            await runner.cleanup()
        await receiver.runner.cleanup()  # type: ignore[union-attr]
    assert posted(recorder) == [ENTRY]
    approval_id = link.rsplit("/", 1)[1]
    records = [r for r in map(orjson.loads, trail.read_text().splitlines()) if r.get("preview_id") == approval_id]
    steps = [(r["method"], r["decision"], r["subject"]) for r in records]
    assert steps == [("tools/call", "preview", REQUESTER), ("approval/refused", "deny", OUTSIDER),
                     ("approval/decide", "allow", APPROVER), ("tools/call", "confirm", REQUESTER)]
    decided = records[2]
    assert "matches invoice 42" in decided["reason"] and decided["credential_id"] and decided["target"] == TOOL
    assert records[3]["upstream_status"] == 200 and records[3]["target"] == TOOL
    no = [r for r in map(orjson.loads, trail.read_text().splitlines())
          if r.get("preview_id") == declined.rsplit("/", 1)[1]]
    assert [(r["method"], r["decision"]) for r in no] == [("tools/call", "preview"), ("approval/decide", "deny")]
    assert "duplicate" in no[1]["reason"]
    for outcome, count in (("requested", 2), ("approved", 1), ("declined", 1), ("refused_approver", 1)):
        assert f'scopegate_approvals_total{{outcome="{outcome}"}} {count}.0' in metrics


def test_the_page_warns_when_the_dry_run_is_stale() -> None:
    now = time.time()
    held = {"id": "apv_x", "tool": "post", "workspace": "acme", "shown": {"memo": "x\u202e"}, "dry_run": True,
            "upstream_preview": {"would_post": 1}, "requester": {"subject": "a"}, "created": now - 120,
            "expires": now + 180, "fresh_seconds": 60, "four_eyes": True}
    shown = view(held, now)
    assert shown["stale"] and shown["age"] == 120 and shown["valid_for"] == 180
    assert shown["arguments"] == [("memo", '"x\\u202e"')]  # a caller's bidi override is shown, never obeyed
    assert not view({**held, "fresh_seconds": 300}, now)["stale"]
    assert not view({**held, "fresh_seconds": None}, now)["stale"]
    assert not view({**held, "dry_run": False}, now)["stale"]
