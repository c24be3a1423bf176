"""`approve: {via: page}`: a write waits for a named person who signs in on scopegate's approval page; the agent's
client only carries the link. The official Python SDK in both eras (2026-07-28 input_required with a URL-mode
elicitation and a requestState; 2025-11-25 a URL-mode elicitation/create on the call's stream), a client that
cannot open URLs (the link in words), and the attacks: the requester approving their own write, an outsider, changed
arguments, a policy reload, replays, concurrent retries, another credential, expiry, forged state, CSRF, framing.
Every assertion about an effect is made on what the upstream received."""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import mcp_types as types
import orjson
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import MODERN_META, MODES, Recorder, modern_headers
from tests.page_approval_kit import (
    APPROVER,
    ENTRY,
    OUTSIDER,
    REQUESTER,
    TOOL,
    Approver,
    PageProxy,
    approval_link,
    page_policy,
    posted,
    start_page_proxy,
)


@pytest.fixture
async def page_proxy(tmp_path: Path, upstream: Any, recorder: Recorder, issue: Any) -> Any:
    started = PageProxy(tokens={
        "alice": issue("alice", scopes=["mcp:read", "mcp:write"], subject=REQUESTER),
        "alice_other": issue("alice-second", scopes=["mcp:read", "mcp:write"], subject=REQUESTER),
        "bob": issue("bob", scopes=["mcp:read", "mcp:write"], subject=APPROVER),
        "carol": issue("carol", scopes=["mcp:read", "mcp:write"], subject=OUTSIDER),
    })

    async def _start(**settings: Any) -> PageProxy:
        return await start_page_proxy(started, upstream.url, tmp_path, issue.path, **settings)

    started.start = _start  # type: ignore[attr-defined]
    yield started
    for runner in started.runners:
        await runner.cleanup()


class Opener:
    """A URL-mode elicitation handler standing in for the client's 'open this link' button: it keeps what it was
    shown, and (as the person it sends would) has the approver decide on the page."""

    def __init__(self, approver: Approver | None, decision: str = "approve", reason: str = "") -> None:
        self.approver, self.decision, self.reason = approver, decision, reason
        self.shown: list[Any] = []
        self.decided: list[Any] = []
        self.tasks: list[asyncio.Task] = []

    async def __call__(self, context: Any, params: Any) -> types.ElicitResult:
        self.shown.append(params)
        if getattr(params, "mode", None) == "url" and self.approver is not None:
            async def later() -> None:
                await asyncio.sleep(0.3)  # after the client got its answer: the call is already waiting
                self.decided.append(await self.approver.decide(params.url, self.decision, self.reason))

            self.tasks.append(asyncio.create_task(later()))
        return types.ElicitResult(action="accept")


def client(url: str, mode: str, token: str, callback: Any = None) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return Client(streamable_http_client(url, http_client=http), mode=mode, elicitation_callback=callback)


@pytest.mark.parametrize("mode", MODES)
async def test_url_mode_client_waits_for_the_approver_then_the_write_goes_once(mode: str, page_proxy: Any,
                                                                               recorder: Recorder) -> None:
    proxy = await page_proxy.start()
    approver = Approver(page_proxy.tokens["bob"], proxy.origin)
    opener = Opener(approver, reason="checked against the invoice")
    async with client(proxy.url, mode, page_proxy.tokens["alice"], opener) as sdk:
        done = await sdk.call_tool(TOOL, ENTRY)
    await approver.close()
    assert not done.is_error, done.content
    assert done.structured_content["posted"]["memo"] == "supplies"
    (shown,) = opener.shown
    assert shown.mode == "url" and shown.url.startswith(f"{proxy.origin}/oauth/approvals/apv_")
    assert TOOL in shown.message and '"supplies"' in shown.message and "approval page" in shown.message
    assert opener.decided[0].status_code == 303
    assert posted(recorder) == [ENTRY]  # forwarded once, exactly as shown
    (applied,) = [c for c in recorder.calls("tools/call") if not c["params"]["arguments"].get("dry_run")]
    assert "requestState" not in applied["params"] and "inputResponses" not in applied["params"]
    assert not [c for c in recorder.posts() if b"scopegate-approval" in c.body or b"sgw_" in c.body]
    # The page now shows who decided, and why.
    page = await Approver(page_proxy.tokens["bob"], proxy.origin).open(shown.url)
    assert "approved" in page.text and APPROVER in page.text and "checked against the invoice" in page.text


@pytest.mark.parametrize("mode", MODES)
async def test_declined_on_the_page_forwards_nothing_and_says_who_and_why(mode: str, page_proxy: Any,
                                                                          recorder: Recorder) -> None:
    proxy = await page_proxy.start()
    approver = Approver(page_proxy.tokens["bob"], proxy.origin)
    opener = Opener(approver, decision="decline", reason="wrong account")
    async with client(proxy.url, mode, page_proxy.tokens["alice"], opener) as sdk:
        result = await sdk.call_tool(TOOL, ENTRY)
    await approver.close()
    text = result.content[0].text
    assert result.is_error and APPROVER in text and "declined" in text and "wrong account" in text
    assert posted(recorder) == []


@pytest.mark.parametrize("mode", MODES)
async def test_client_without_url_mode_gets_the_link_in_words_and_completes_after_approval(
        mode: str, page_proxy: Any, recorder: Recorder) -> None:
    proxy = await page_proxy.start()
    approver = Approver(page_proxy.tokens["bob"], proxy.origin)
    async with client(proxy.url, mode, page_proxy.tokens["alice"]) as sdk:  # no elicitation at all
        listed = {t.name: t for t in (await sdk.list_tools()).tools}
        assert "approves it on scopegate's approval page" in listed[TOOL].description
        assert "confirmationToken" not in listed[TOOL].input_schema["properties"]  # no token to bring back
        first = await sdk.call_tool(TOOL, ENTRY)
        text = first.content[0].text
        assert not first.is_error and first.structured_content["status"] == "confirmation_required"
        link = approval_link(text)
        assert first.structured_content["preview"]["approvalUrl"] == link
        assert "call create_journal_entry again with exactly the same arguments" in text
        assert "confirmationToken" not in str(first.structured_content)
        waiting = await sdk.call_tool(TOOL, ENTRY)
        assert "Still waiting" in waiting.content[0].text and approval_link(waiting.content[0].text) == link
        assert posted(recorder) == []
        assert (await approver.decide(link)).status_code == 303
        done = await sdk.call_tool(TOOL, ENTRY)
        assert not done.is_error and done.structured_content["posted"]["memo"] == "supplies"
        again = await sdk.call_tool(TOOL, ENTRY)  # the approval was used: a new call asks anew
        assert approval_link(again.content[0].text) != link
    await approver.close()
    assert posted(recorder) == [ENTRY]


# --- attacks -----------------------------------------------------------------------------------------------------


async def first_round(sdk: Client) -> tuple[Any, str]:
    """2026-07-28 by hand: the input_required result and the link it carries."""
    first = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
    assert isinstance(first, types.InputRequiredResult) and first.request_state.startswith("sgw_")
    (asked,) = first.input_requests.values()
    assert asked.method == "elicitation/create" and asked.params.mode == "url"
    return first, asked.params.url


OPENED = {"scopegate_approval": types.ElicitResult(action="accept")}


async def test_the_requester_and_outsiders_cannot_approve(page_proxy: Any, recorder: Recorder) -> None:
    """Four eyes: alice asked, so neither of her credentials may approve; carol is not an approver. Each is refused
    on the server, even with a valid session and CSRF token; bob then can."""
    proxy = await page_proxy.start()
    async with client(proxy.url, "auto", page_proxy.tokens["alice"]) as sdk:
        link = approval_link((await sdk.call_tool(TOOL, ENTRY)).content[0].text)
        for name, said in (("alice", "four eyes"), ("alice_other", "four eyes"), ("carol", "not one of")):
            person = Approver(page_proxy.tokens[name], proxy.origin)
            page = await person.open(link)
            assert page.status_code == 403 and said in page.text and 'name="decision"' not in page.text
            # the requester sees their own request; an outsider sees nothing of it
            assert ("supplies" in page.text) is (name != "carol")
            apps = await person.http.get(f"{proxy.origin}/oauth/apps")  # a CSRF token of their own session
            forged = await person.http.post(link, headers={"Origin": proxy.origin}, data={
                "csrf": hidden_csrf(apps.text), "decision": "approve"})
            assert forged.status_code == 403 and said in forged.text
            queue = await person.http.get(f"{proxy.origin}/oauth/approvals")
            assert link.rsplit("/", 1)[1] not in queue.text  # not in their queue either
            await person.close()
        assert "Still waiting" in (await sdk.call_tool(TOOL, ENTRY)).content[0].text
        assert posted(recorder) == []
        bob = Approver(page_proxy.tokens["bob"], proxy.origin)
        await bob.open(link)
        queue = await bob.http.get(f"{proxy.origin}/oauth/approvals")
        assert link.rsplit("/", 1)[1] in queue.text  # in the approver's queue
        assert (await bob.decide(link)).status_code == 303
        await bob.close()
        assert not (await sdk.call_tool(TOOL, ENTRY)).is_error
    assert posted(recorder) == [ENTRY]


def hidden_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found
    return found.group(1)


async def test_changed_arguments_another_credential_replay_and_forged_state_forward_nothing(
        page_proxy: Any, recorder: Recorder) -> None:
    proxy = await page_proxy.start()
    bob = Approver(page_proxy.tokens["bob"], proxy.origin)
    async with client(proxy.url, "auto", page_proxy.tokens["alice"], Opener(None)) as sdk, \
            client(proxy.url, "auto", page_proxy.tokens["carol"], Opener(None)) as carol:
        first, link = await first_round(sdk)
        assert (await bob.decide(link)).status_code == 303
        changed = await sdk.session.call_tool(TOOL, {**ENTRY, "memo": "something else"}, input_responses=OPENED,
                                              request_state=first.request_state, allow_input_required=True)
        assert changed.is_error and "arguments differ" in changed.content[0].text
        replayed = await sdk.session.call_tool(TOOL, ENTRY, input_responses=OPENED,
                                               request_state=first.request_state, allow_input_required=True)
        assert replayed.is_error and "unknown, already used" in replayed.content[0].text  # the state is single use

        second, link = await first_round(sdk)
        assert (await bob.decide(link)).status_code == 303
        stolen = await carol.session.call_tool(TOOL, ENTRY, input_responses=OPENED,
                                               request_state=second.request_state, allow_input_required=True)
        assert stolen.is_error and "another credential" in stolen.content[0].text

        forged = await sdk.session.call_tool(TOOL, ENTRY, input_responses=OPENED, request_state="sgw_" + "A" * 43,
                                             allow_input_required=True)
        assert forged.is_error and "unknown" in forged.content[0].text

        third, link = await first_round(sdk)
        assert (await bob.decide(link)).status_code == 303
        done = await sdk.session.call_tool(TOOL, ENTRY, input_responses=OPENED, request_state=third.request_state,
                                           allow_input_required=True)
        assert not done.is_error
        replay = await sdk.session.call_tool(TOOL, ENTRY, input_responses=OPENED, request_state=third.request_state,
                                             allow_input_required=True)
        assert replay.is_error and "unknown, already used" in replay.content[0].text
    await bob.close()
    assert posted(recorder) == [ENTRY]


async def test_a_policy_reload_voids_the_approval(page_proxy: Any, recorder: Recorder, tmp_path: Path) -> None:
    from proxy.edge.app import RELOADER

    proxy = await page_proxy.start()
    bob = Approver(page_proxy.tokens["bob"], proxy.origin)
    async with client(proxy.url, "auto", page_proxy.tokens["alice"], Opener(None)) as sdk:
        first, link = await first_round(sdk)
        assert (await bob.decide(link)).status_code == 303
        policy = yaml.safe_load(Path(proxy.policy).read_text())
        policy["description"] = "reloaded: anything changed makes a new version"
        Path(proxy.policy).write_text(yaml.safe_dump(policy))
        assert proxy.app[RELOADER].reload()
        after = await sdk.session.call_tool(TOOL, ENTRY, input_responses=OPENED, request_state=first.request_state,
                                            allow_input_required=True)
        assert after.is_error and "policy changed" in after.content[0].text
    await bob.close()
    assert posted(recorder) == []


@pytest.mark.parametrize("replicas", ["one, embedded store", "two, sharing Redis"])
async def test_twenty_concurrent_retries_forward_one_write(replicas: str, page_proxy: Any, recorder: Recorder,
                                                           request: Any) -> None:
    if replicas.startswith("one"):
        proxy = await page_proxy.start()
        urls = [proxy.url]
    else:
        redis = request.getfixturevalue("redis_server")
        proxy = await page_proxy.start(redis_url=redis.url)
        public = proxy.url
        second = await page_proxy.start(redis_url=redis.url, public=public)
        urls = [public, second.url]
    bob = Approver(page_proxy.tokens["bob"], proxy.origin)
    headers = {**modern_headers("tools/call", TOOL), "Authorization": f"Bearer {page_proxy.tokens['alice']}"}

    async def call(http: aiohttp.ClientSession, url: str, n: int) -> dict:
        body = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": {"name": TOOL, "arguments": ENTRY, "_meta": MODERN_META}}
        async with http.post(url, data=orjson.dumps(body), headers=headers) as answer:
            return (await answer.json())["result"]

    async with aiohttp.ClientSession() as http:  # a client without URL mode, its retries all at once
        link = approval_link((await call(http, urls[0], 0))["content"][0]["text"])
        assert (await bob.decide(link.replace(proxy.origin, urls[-1].removesuffix("/mcp")))).status_code == 303
        # Twenty connections open first (a read each), so that the twenty retries race rather than queue.
        listing = {**headers, "Mcp-Method": "tools/list"}
        listing.pop("Mcp-Name")

        async def warm(url: str, n: int) -> None:
            body = {"jsonrpc": "2.0", "id": n, "method": "tools/list", "params": {"_meta": MODERN_META}}
            async with http.post(url, data=orjson.dumps(body), headers=listing) as answer:
                assert answer.status == 200
                await answer.read()

        await asyncio.gather(*(warm(urls[n % len(urls)], n) for n in range(20)))
        results = await asyncio.gather(*(call(http, urls[n % len(urls)], n) for n in range(1, 21)))
    await bob.close()
    applied = [r for r in results if not r["isError"] and "posted" in (r.get("structuredContent") or {})]
    assert len(applied) == 1 and posted(recorder) == [ENTRY]


async def test_an_expired_approval_forwards_nothing(page_proxy: Any, recorder: Recorder, tmp_path: Path) -> None:
    policy = yaml.safe_load(Path(page_policy(tmp_path, "short.yaml")).read_text())
    next(t for t in policy["tools"] if t["match"] == TOOL)["confirm_ttl_seconds"] = 5
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(policy))
    proxy = await page_proxy.start(policy=str(tmp_path / "short.yaml"))
    bob = Approver(page_proxy.tokens["bob"], proxy.origin)
    async with client(proxy.url, "auto", page_proxy.tokens["alice"]) as sdk:
        link = approval_link((await sdk.call_tool(TOOL, ENTRY)).content[0].text)
        assert (await bob.decide(link)).status_code == 303
        await asyncio.sleep(5.5)
        late = await sdk.call_tool(TOOL, ENTRY)
        assert late.is_error and "expired" in late.content[0].text
        # and a request that expired before anyone decided cannot be approved any more
        link = approval_link((await sdk.call_tool(TOOL, ENTRY)).content[0].text)
        page = await bob.open(link)
        await asyncio.sleep(5.5)
        too_late = await bob.http.post(link, headers={"Origin": proxy.origin}, data={
            "csrf": hidden_csrf(page.text), "decision": "approve"})
        assert too_late.status_code in (404, 409, 410) and "expired" in too_late.text
    await bob.close()
    assert posted(recorder) == []


async def test_the_page_refuses_forgery_and_framing(page_proxy: Any, recorder: Recorder) -> None:
    proxy = await page_proxy.start()
    bob = Approver(page_proxy.tokens["bob"], proxy.origin)
    async with client(proxy.url, "auto", page_proxy.tokens["alice"]) as sdk:
        link = approval_link((await sdk.call_tool(TOOL, ENTRY)).content[0].text)
        page = await bob.open(link)
        assert page.status_code == 200 and "Approve" in page.text
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "form-action 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text.lower()
        shown = html.unescape(page.text)
        assert '"supplies"' in shown and '"acme"' in shown and REQUESTER in shown and '"6000"' in shown
        assert "dry run" in page.text  # the upstream's own preview is shown
        csrf = hidden_csrf(page.text)
        cross_site = await bob.http.post(link, headers={"Origin": "http://evil.example"},
                                         data={"csrf": csrf, "decision": "approve"})
        no_token = await bob.http.post(link, headers={"Origin": proxy.origin}, data={"decision": "approve"})
        wrong_token = await bob.http.post(link, headers={"Origin": proxy.origin},
                                          data={"csrf": csrf[:-2] + "xx", "decision": "approve"})
        stranger = httpx2.AsyncClient()  # no session at all, the right token copied
        anonymous = await stranger.post(link, headers={"Origin": proxy.origin},
                                        data={"csrf": csrf, "decision": "approve"})
        await stranger.aclose()
        for refused in (cross_site, no_token, wrong_token, anonymous):
            assert refused.status_code == 403, refused.text
        assert "Still waiting" in (await sdk.call_tool(TOOL, ENTRY)).content[0].text
    await bob.close()
    assert posted(recorder) == []


async def test_legacy_call_held_on_one_replica_is_released_by_the_page_on_another(
        page_proxy: Any, recorder: Recorder, redis_server: Any) -> None:
    """2025-11-25: the call waits on its stream at replica one; the approver, sent by a load balancer to replica two,
    approves there; the decision reaches the waiting call through Redis and the write goes once."""
    first = await page_proxy.start(redis_url=redis_server.url)
    public, origin = first.url, first.origin
    second = await page_proxy.start(redis_url=redis_server.url, public=public)
    elsewhere = second.url.removesuffix("/mcp")
    approver = Approver(page_proxy.tokens["bob"], origin)
    opener = Opener(None)

    async def approve_elsewhere() -> None:
        while not opener.shown:
            await asyncio.sleep(0.05)
        link = opener.shown[0].url
        assert link.startswith(origin)
        assert (await approver.decide(link.replace(origin, elsewhere))).status_code == 303

    async with client(public, "legacy", page_proxy.tokens["alice"], opener) as sdk:
        deciding = asyncio.create_task(approve_elsewhere())
        done = await sdk.call_tool(TOOL, ENTRY)
        await deciding
    await approver.close()
    assert not done.is_error and posted(recorder) == [ENTRY]


def test_the_upstream_is_told_who_approved_on_the_page() -> None:
    """The identity assertion's `approval` claim names the approver and `via: page` (pure)."""
    from multidict import CIMultiDict

    from proxy.exchange import Exchange
    from proxy.identity.assertion import approvals
    from proxy.identity.principal import Principal

    exchange = Exchange(request_id="r", session_id=None, protocol_version=None, upstream_headers=CIMultiDict())
    exchange.principal = Principal(subject=REQUESTER, credential_id="c", label="l", kind="pat", scopes=frozenset())
    exchange.confirmed["7"] = "apv_1"
    exchange.approvers = {"7": APPROVER}
    assert approvals(exchange) == {"id": "apv_1", "by": APPROVER, "via": "page"}
    exchange.approvers = None
    assert approvals(exchange) == {"id": "apv_1", "by": REQUESTER, "via": "token"}
