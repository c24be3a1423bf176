"""`confirm: human`: a write reaches the upstream only after the person at the client approved it through the
client's elicitation UI, once. The official Python SDK client in both modes (2026-07-28 input_required with a
requestState; 2025-11-25 elicitation/create on the call's own stream), with callbacks that approve, reject, cancel
or never decide; raw HTTP where an attacker would go (replayed and altered retries, another credential's answer, the
answer sent to another replica). Every assertion about an effect is made on what the upstream received."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import httpx2
import mcp_types as types
import orjson
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import BaseModel

from tests.conftest import MODES, POLICIES, TOKENS, Recorder
from tests.rawmcp import ACCEPT, next_event

ENTRY = {"workspaceId": "acme", "date": "2026-10-31", "memo": "supplies",
         "lines": [{"account": "6000", "debit": 120}, {"account": "1000", "credit": 120}]}
TOOL = "create_journal_entry"


def human_policy(tmp_path: Path, **rule: Any) -> str:
    """pat-workspaces with the journal posting held for a person (and its dry run kept)."""
    policy = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    for entry in policy["tools"]:
        if entry["match"] == TOOL:
            entry.update({"confirm": "human", "fallback": "refuse", **rule})
    path = tmp_path / "human.yaml"
    path.write_text(yaml.safe_dump(policy))
    return str(path)


@pytest.fixture
async def human_url(start_proxy: Any, upstream: Any, recorder: Recorder, tmp_path: Path) -> str:
    return await start_proxy(upstream.url, policy=human_policy(tmp_path))


def posted(recorder: Recorder) -> list[dict]:
    """The journal postings that reached the upstream for real (the dry run is not one)."""
    return [c["params"]["arguments"] for c in recorder.calls("tools/call")
            if c["params"]["name"] == TOOL and not c["params"]["arguments"].get("dry_run")]


class Person:
    """An elicitation callback standing in for the person at the client: answers as told, keeps what it was shown."""

    def __init__(self, action: str, approve: bool | None = True, delay: float = 0.0) -> None:
        self.action, self.approve, self.delay = action, approve, delay
        self.shown: list[types.ElicitRequestParams] = []

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.shown.append(params)
        await asyncio.sleep(self.delay)
        content = {"approve": self.approve} if self.action == "accept" else None
        return types.ElicitResult(action=self.action, content=content)


def client(url: str, mode: str, person: Person | None, token: str = TOKENS["writer"]) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode=mode, elicitation_callback=person)


@pytest.mark.parametrize("mode", MODES)
async def test_approved_write_is_applied_once_after_the_person_saw_it(mode: str, human_url: str,
                                                                      recorder: Recorder) -> None:
    person = Person("accept", approve=True)
    async with client(human_url, mode, person) as sdk:
        listed = {t.name: t for t in (await sdk.list_tools()).tools}
        assert "person approves" in listed[TOOL].description
        assert "confirmationToken" not in listed[TOOL].input_schema["properties"]  # no token to bring back
        done = await sdk.call_tool(TOOL, ENTRY)
    assert not done.is_error and done.structured_content["posted"]["memo"] == "supplies"
    (shown,) = person.shown
    assert TOOL in shown.message and '"acme"' in shown.message and '"supplies"' in shown.message
    assert "The service's own dry run says:" in shown.message  # the upstream's own preview, in plain words
    assert shown.requested_schema["required"] == ["approve"]
    assert posted(recorder) == [ENTRY]  # forwarded once, exactly as shown
    (applied,) = [c for c in recorder.calls("tools/call") if not c["params"]["arguments"].get("dry_run")]
    assert "requestState" not in applied["params"] and "inputResponses" not in applied["params"]
    assert not [c for c in recorder.posts() if b"scopegate-approval-" in c.body]  # the answer stayed here


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("action", "approve", "said"), [("decline", None, "declined"),
                                                         ("accept", False, "declined"),
                                                         ("cancel", None, "dismissed")])
async def test_rejected_or_cancelled_write_forwards_nothing(mode: str, action: str, approve: bool | None, said: str,
                                                            human_url: str, recorder: Recorder) -> None:
    async with client(human_url, mode, Person(action, approve)) as sdk:
        result = await sdk.call_tool(TOOL, ENTRY)
    assert result.is_error and said in result.content[0].text and "Nothing changed" in result.content[0].text
    assert posted(recorder) == []


@pytest.mark.parametrize("mode", MODES)
async def test_client_that_cannot_ask_its_person_is_told_so(mode: str, human_url: str, recorder: Recorder,
                                                            start_proxy: Any, upstream: Any, tmp_path: Path) -> None:
    async with client(human_url, mode, None) as sdk:
        result = await sdk.call_tool(TOOL, ENTRY)
        assert result.is_error and "needs a person's approval" in result.content[0].text
        assert "elicitation" in result.content[0].text
        # A token cannot stand in for the person, whatever the client brings.
        tokened = await sdk.call_tool(TOOL, {**ENTRY, "confirmationToken": "sgc_anything"})
        assert tokened.is_error
    assert posted(recorder) == [] and [c for c in recorder.calls("tools/call")] == []

    fallback = await start_proxy(upstream.url, policy=human_policy(tmp_path, fallback="token"))
    async with client(fallback, mode, None) as sdk:
        preview = await sdk.call_tool(TOOL, ENTRY)
        token = preview.structured_content["confirmationToken"]
        done = await sdk.call_tool(TOOL, {**ENTRY, "confirmationToken": token})
    assert not done.is_error and posted(recorder) == [ENTRY]


async def test_modern_retry_is_bound_to_its_state_arguments_and_credential(human_url: str,
                                                                           recorder: Recorder) -> None:
    """2026-07-28, driven by hand: the requestState works once, for the same call, the same credential."""
    approve = {"scopegate_approval": types.ElicitResult(action="accept", content={"approve": True})}
    async with client(human_url, "auto", Person("accept")) as sdk, \
            client(human_url, "auto", Person("accept"), token=TOKENS["other"]) as other:
        first = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.request_state.startswith("sga_")
        (request,) = first.input_requests.values()
        assert request.method == "elicitation/create" and TOOL in request.params.message

        changed = await sdk.session.call_tool(TOOL, {**ENTRY, "memo": "something else"}, input_responses=approve,
                                              request_state=first.request_state, allow_input_required=True)
        assert changed.is_error and "arguments differ" in changed.content[0].text
        again = await sdk.session.call_tool(TOOL, ENTRY, input_responses=approve, request_state=first.request_state,
                                            allow_input_required=True)
        assert again.is_error and "unknown, already used" in again.content[0].text  # a refused retry used it up

        second = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        stolen = await other.session.call_tool(TOOL, ENTRY, input_responses=approve,
                                               request_state=second.request_state, allow_input_required=True)
        assert stolen.is_error and "another credential" in stolen.content[0].text

        third = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        no_answer = await sdk.session.call_tool(TOOL, ENTRY, request_state=third.request_state,
                                                allow_input_required=True)
        assert no_answer.is_error and "without a decision" in no_answer.content[0].text

        fourth = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        done = await sdk.session.call_tool(TOOL, ENTRY, input_responses=approve, request_state=fourth.request_state,
                                           allow_input_required=True)
        assert not done.is_error
        replay = await sdk.session.call_tool(TOOL, ENTRY, input_responses=approve,
                                             request_state=fourth.request_state, allow_input_required=True)
        assert replay.is_error
    assert posted(recorder) == [ENTRY]


async def open_session(http: aiohttp.ClientSession, url: str, token: str = TOKENS["writer"]) -> dict[str, str]:
    """A 2025-11-25 session whose client declares form elicitation; returns the headers to use in it."""
    base = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": ACCEPT}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"form": {}}},
        "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(url, data=orjson.dumps(init), headers=base) as resp:
        assert resp.status == 200
        headers = {**base, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
        await resp.read()
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, data=orjson.dumps(note), headers=headers) as resp:
        assert resp.status == 202
    return headers


async def answer_on(stream: aiohttp.ClientResponse, msg_id: int) -> dict:
    """The response to `msg_id` on an SSE stream (the upstream's own priming events may come first)."""
    while (event := await next_event(stream)) is not None:
        if isinstance(event.data, dict) and event.data.get("id") == msg_id:
            return event.data
    raise AssertionError("the stream ended without the response")


async def test_answer_reaches_the_replica_holding_the_stream(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                              redis_server: Any, tmp_path: Path) -> None:
    """Two replicas sharing Redis: the call waits on one, the person's answer is POSTed to the other. Before the
    right answer, answers from another credential or another session are dropped, not taken."""
    policy = human_policy(tmp_path)
    first = await start_proxy(upstream.url, policy=policy, redis_url=redis_server.url)
    second = await start_proxy(upstream.url, policy=policy, redis_url=redis_server.url)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": TOOL, "arguments": ENTRY}}
    async with aiohttp.ClientSession() as http:
        headers = await open_session(http, first)
        intruder = await open_session(http, second, TOKENS["other"])
        elsewhere = await open_session(http, second)
        async with http.post(first, data=orjson.dumps(call), headers=headers) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            asked = (await next_event(stream)).data
            assert asked["method"] == "elicitation/create" and asked["id"].startswith("scopegate-approval-")
            yes = {"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept", "content": {"approve": True}}}
            for wrong in (intruder, elsewhere):
                async with http.post(second, data=orjson.dumps(yes), headers=wrong) as resp:
                    assert resp.status == 202
            assert posted(recorder) == []
            async with http.post(second, data=orjson.dumps(yes), headers=headers) as resp:
                assert resp.status == 202
            answer = await answer_on(stream, 7)
        assert answer["id"] == 7 and answer["result"]["structuredContent"]["posted"]["memo"] == "supplies"
        # The same answer again completes nothing: the question was answered once.
        async with http.post(second, data=orjson.dumps(yes), headers=headers) as resp:
            assert resp.status == 202
    assert posted(recorder) == [ENTRY]
    assert not [c for c in recorder.posts() if b"scopegate-approval-" in c.body]


async def test_nobody_answering_times_out_and_forwards_nothing(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                               tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("proxy.edge.converse.KEEPALIVE_SECONDS", 1.0)
    from tests.test_audit import flush

    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, policy=human_policy(tmp_path, confirm_ttl_seconds=5),
                            audit_sink=f"file:{trail}")
    call = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": TOOL, "arguments": ENTRY}}
    async with aiohttp.ClientSession() as http:
        headers = await open_session(http, url)
        async with http.post(url, data=orjson.dumps(call), headers=headers) as stream:
            asked = (await next_event(stream)).data
            beat = await next_event(stream)  # while nobody answers, the stream is kept alive
            assert beat.lines == [": waiting for the client"]
            answer = await answer_on(stream, 8)
        assert answer["result"]["isError"] and "nobody approved it in time" in answer["result"]["content"][0]["text"]
        late = {"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept", "content": {"approve": True}}}
        async with http.post(url, data=orjson.dumps(late), headers=headers) as resp:
            assert resp.status == 202
        await asyncio.sleep(0.2)
    assert posted(recorder) == []
    await flush(start_proxy)
    records = [r for r in map(orjson.loads, trail.read_text().splitlines()) if "decision" in r]  # not seals
    assert [(r["decision"], r["reason"]) for r in records if r["target"] == TOOL][-1] == ("refuse", "timeout")


@pytest.mark.parametrize(("answer", "applied"), [("y\n", True), ("n\n", False)])
async def test_demo_try_it_asks_at_the_terminal(answer: str, applied: bool, start_proxy: Any, upstream: Any,
                                                recorder: Recorder) -> None:
    """`make run`'s second step: the demo policy holds the ledger posting for a person; try_it asks at its prompt."""
    import sys

    url = await start_proxy(upstream.url)  # policies/pat-workspaces.yaml, the demo's
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.demo.try_it", url, "--token", TOKENS["writer"],
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(answer.encode()), timeout=60)
    assert process.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "the server asks you" in text and "Approve this change? [y/N]" in text
    assert ("applied: you approved it" in text) is applied
    assert len(posted(recorder)) == (1 if applied else 0)


async def test_every_outcome_is_its_own_audit_record(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                     tmp_path: Path) -> None:
    """Approved (linked to its preview), rejected, cancelled, changed arguments, no way to ask: one reason each."""
    from tests.test_audit import flush

    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, policy=human_policy(tmp_path), audit_sink=f"file:{trail}")
    async with client(url, "legacy", Person("accept")) as sdk:
        assert not (await sdk.call_tool(TOOL, ENTRY)).is_error
    async with client(url, "legacy", Person("decline")) as sdk:
        assert (await sdk.call_tool(TOOL, ENTRY)).is_error
    async with client(url, "auto", Person("cancel")) as sdk:
        assert (await sdk.call_tool(TOOL, ENTRY)).is_error
    async with client(url, "auto", None) as sdk:
        assert (await sdk.call_tool(TOOL, ENTRY)).is_error
    async with client(url, "auto", Person("accept")) as sdk:
        asked = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        approve = {"scopegate_approval": types.ElicitResult(action="accept", content={"approve": True})}
        changed = await sdk.session.call_tool(TOOL, {**ENTRY, "memo": "other"}, input_responses=approve,
                                              request_state=asked.request_state, allow_input_required=True)
        assert changed.is_error
    await flush(start_proxy)
    records = [r for r in map(orjson.loads, trail.read_text().splitlines()) if "decision" in r]  # not seals
    calls = [r for r in records if r["target"] == TOOL]
    reasons = [r["reason"] for r in calls if r["decision"] == "refuse"]
    assert sorted(reasons) == ["arguments", "cancelled", "no elicitation", "rejected"]
    (confirmed,) = [r for r in calls if r["decision"] == "confirm"]
    previews = {r["preview_id"] for r in calls if r["decision"] == "preview"}
    assert confirmed["preview_id"] in previews and confirmed["upstream_status"] == 200
    assert "supplies" not in trail.read_text()  # arguments are audited as a digest only
    assert posted(recorder) == [ENTRY]


async def test_held_for_a_person_only_alone_never_in_a_batch(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                             tmp_path: Path) -> None:
    """A 2025-03-26 batch cannot carry the conversation a person's approval needs: that element is refused, the
    rest is handled as usual, and the write never reaches the upstream."""
    url = await start_proxy(upstream.url, policy=human_policy(tmp_path))
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": TOOL, "arguments": ENTRY}},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
    async with aiohttp.ClientSession() as http:
        headers = await open_session(http, url)
        headers.pop("MCP-Protocol-Version")  # no version header: 2025-03-26, where batches exist
        async with http.post(url, data=orjson.dumps(batch), headers=headers) as resp:
            body = await resp.read()
    text = body.decode()
    assert "send the call alone, not in a batch" in text
    assert posted(recorder) == [] and "elicitation/create" not in text


def test_policy_says_who_confirms(tmp_path: Path) -> None:
    from proxy.policy.explain import explain
    from proxy.policy.model import PolicyError, Rule, load_policy

    assert [Rule(match="x", effect="write", confirm=v).confirm for v in (True, False, "human", None)] == [
        "token", "none", "human", None]
    assert not Rule(match="x", effect="write", confirm=False).needs_confirmation
    policy = load_policy(POLICIES / "ledger-scopes.yaml")
    _, lines = explain(policy, frozenset({"journal:write", "payables:write"}), "tool", TOOL, "t")
    assert "confirmation required, by the person at the client (elicitation)" in lines[-1]
    _, lines = explain(policy, frozenset({"journal:write", "payables:write"}), "tool", "create_vendor", "t")
    assert "confirmation required, by token" in lines[-1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntools:\n  - {match: x, effect: write, confirm: token, fallback: token}\n")
    with pytest.raises(PolicyError, match=r"tools\.0\.fallback: only a rule with `confirm: human` has a fallback"):
        load_policy(bad)


async def test_no_store_no_approval(start_proxy: Any, upstream: Any, recorder: Recorder, redis_server: Any,
                                    tmp_path: Path) -> None:
    """Redis gone: a person cannot be asked in a way that could be checked later, so the write is refused, and the
    retry of an approval asked before the outage is refused too. Nothing reaches the upstream."""
    url = await start_proxy(upstream.url, policy=human_policy(tmp_path), redis_url=redis_server.url)
    approve = {"scopegate_approval": types.ElicitResult(action="accept", content={"approve": True})}
    async with client(url, "auto", Person("accept")) as sdk:
        asked = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        redis_server.stop()
        retried = await sdk.session.call_tool(TOOL, ENTRY, input_responses=approve, request_state=asked.request_state,
                                              allow_input_required=True)
        assert retried.is_error and "store unavailable" in retried.content[0].text
        fresh = await sdk.call_tool(TOOL, ENTRY)
        assert fresh.is_error and "store unavailable" in fresh.content[0].text
    assert posted(recorder) == []


class Sure(BaseModel):
    sure: bool


def ask_if_sure(amount: int) -> Elicit[Sure]:
    return Elicit(f"The service itself asks: really move {amount}?", Sure)


def build_asking_upstream() -> Any:
    """An upstream whose write asks its own question (MCPServer resolver: 2026-07-28 input_required, 2025-11-25 an
    elicitation/create mid-call)."""
    server = MCPServer("asking")

    @server.tool()
    def move_money(amount: int, answer: Annotated[Sure, Resolve(ask_if_sure)]) -> dict[str, Any]:
        """Move money (asks its own question first)."""
        return {"moved": amount, "sure": answer.sure}

    return server


@pytest.mark.parametrize("mode", MODES)
async def test_upstream_that_asks_its_own_question_completes(mode: str, start_proxy: Any, tmp_path: Path) -> None:
    """The person approves the write; the upstream then asks its own question (a second round of the same call in
    2026-07-28): that round carries the upstream's state through the proxy's next approval, never lost, never
    forwarded unapproved."""
    from proxy.demo.run import free_port
    from tests.conftest import ThreadedServer

    port = free_port()
    recorder = Recorder(build_asking_upstream().streamable_http_app())
    server = ThreadedServer(recorder, port)
    server.start()
    try:
        policy = tmp_path / "asking.yaml"
        policy.write_text("version: 1\nscopes: [mcp:read, mcp:write]\ntools:\n"
                          "  - {match: move_money, scopes: [mcp:write], effect: write, confirm: human}\n")
        url = await start_proxy(f"http://127.0.0.1:{port}/mcp", policy=str(policy))
        questions: list[str] = []

        async def person(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            questions.append(params.message)
            field = "approve" if "approve" in params.requested_schema["properties"] else "sure"
            return types.ElicitResult(action="accept", content={field: True})

        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKENS['writer']}"}, timeout=30)
        async with Client(streamable_http_client(url, http_client=http), mode=mode,
                          elicitation_callback=person) as sdk:
            result = await sdk.call_tool("move_money", {"amount": 5})
        assert not result.is_error, result.content
        assert result.structured_content == {"moved": 5, "sure": True}
        assert any("The service itself asks" in q for q in questions)
        calls = [c["params"] for c in recorder.calls("tools/call")]
        assert calls and all(c["arguments"] == {"amount": 5} for c in calls)
        assert not [c for c in calls if str(c.get("requestState", "")).startswith("sga_")]
    finally:
        server.stop()


def test_carried_round_opens_only_with_its_handle() -> None:
    from cryptography.exceptions import InvalidTag

    from proxy.guards.approval import new_handle, open_carry, seal_carry

    handle = new_handle("sga_")
    carry = {"requestState": "upstream-state", "inputResponses": {"k": {"action": "accept"}}}
    sealed = seal_carry(handle, carry)
    assert "upstream-state" not in sealed and open_carry(handle, sealed) == carry
    with pytest.raises(InvalidTag):
        open_carry(new_handle("sga_"), sealed)
    import base64

    raw = bytearray(base64.b64decode(sealed))
    raw[-1] ^= 1
    with pytest.raises(InvalidTag):
        open_carry(handle, base64.b64encode(bytes(raw)).decode())


async def test_questions_waiting_for_a_person_are_capped_per_credential(start_proxy: Any, upstream: Any,
                                                                       recorder: Recorder, tmp_path: Path) -> None:
    """A credential's open approval questions count against its pending previews like token previews do: past the
    cap the call is refused (nothing forwarded), another credential is unaffected, and an answered question frees
    its slot."""
    url = await start_proxy(upstream.url, policy=human_policy(tmp_path), max_pending_previews=2)
    approve = {"scopegate_approval": types.ElicitResult(action="accept", content={"approve": True})}
    async with client(url, "auto", Person("accept")) as sdk, \
            client(url, "auto", Person("accept"), token=TOKENS["other"]) as other:
        first = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        second = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and isinstance(second, types.InputRequiredResult)
        over = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        assert over.is_error and "too many writes waiting for a person's approval" in over.content[0].text
        theirs = await other.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        assert isinstance(theirs, types.InputRequiredResult)  # one credential's flood is its own
        done = await sdk.session.call_tool(TOOL, ENTRY, input_responses=approve, request_state=first.request_state,
                                           allow_input_required=True)
        assert not done.is_error
        again = await sdk.session.call_tool(TOOL, ENTRY, allow_input_required=True)
        assert isinstance(again, types.InputRequiredResult)  # the answered question gave its slot back
    assert posted(recorder) == [ENTRY]
