"""Framing and headers at the edge (issue 24, item 6): what the proxy reads must be what the client and the upstream
read. An SSE answer opening with a byte-order mark is filtered as the client reads it; 2026-07-28 routing headers
that disagree with the body are refused by the proxy itself; a POST that is not JSON is refused with 415 before
anything reaches the upstream (aiohttp's own parser errors: tests/test_parser_errors.py).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from proxy.edge.framing import HEADER_MISMATCH, Frame, header_problem
from proxy.edge.sse import BOM, EventSplitter
from tests import test_upstream_attack as raw
from tests.conftest import AUTH, MODERN_META, Recorder, modern_headers

ACCEPT = "application/json, text/event-stream"
LEGACY = {**AUTH, "Content-Type": "application/json", "Accept": ACCEPT, "MCP-Protocol-Version": "2025-11-25"}


def client_events(body: bytes) -> list[Any]:
    """The data of each event as an SSE client reads the stream (WHATWG: one leading BOM ignored; lines end at CRLF,
    LF or CR; `data` fields joined with LF)."""
    text = body.decode("utf-8").removeprefix("\ufeff")
    events, data = [], []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if data:
                events.append(orjson.loads("\n".join(data)))
            data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    return events


async def post(url: str, headers: Any, body: bytes, **session: Any) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(**session) as http, http.post(url, headers=headers, data=body) as resp:
        return resp.status, await resp.read()


@pytest.fixture
async def raw_upstream() -> Any:
    made: list[raw.RawUpstream] = []

    async def make(reply: raw.Reply) -> tuple[raw.RawUpstream, str]:
        up = raw.RawUpstream(reply)
        made.append(up)
        return up, await up.start()

    yield make
    for up in made:
        up.stop()


def sse_answer(events: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(events)
            + events)


# --- (a) a byte-order mark before the first event -------------------------------------------------------------------


@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_the_splitter_drops_one_leading_bom_wherever_the_chunks_break(split: int) -> None:
    stream = BOM + b'data: {"a":1}\n\n' + BOM + b'data: {"b":2}\n\n'
    splitter = EventSplitter(1 << 20)
    events = [*splitter.feed(stream[:split]), *splitter.feed(stream[split:])]
    # Only the stream's first BOM goes: a later one is part of its line, as clients read it (a field nobody knows).
    assert events == [b'data: {"a":1}\n\n', BOM + b'data: {"b":2}\n\n']


async def test_a_bom_before_the_first_event_does_not_hide_the_list_from_the_filter(
        start_proxy: Any, raw_upstream: Any) -> None:
    """The upstream answers tools/list as an SSE stream that opens with a UTF-8 BOM (clients strip it). The proxy
    must filter what the client reads: the unlisted tool never reaches it."""
    listed = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "list_accounts", "inputSchema": {"type": "object"}},
        {"name": "wipe_ledger", "inputSchema": {"type": "object"}},  # named nowhere in the policy: denied
    ]}}
    _, url = await raw_upstream(raw.answering(lambda r: sse_answer(BOM + b"data: " + orjson.dumps(listed) + b"\n\n")))
    proxy = await start_proxy(url)
    status, body = await post(proxy, LEGACY, orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
    assert status == 200
    events = client_events(body)
    assert [[tool["name"] for tool in event["result"]["tools"]] for event in events] == [["list_accounts"]]
    assert b"wipe_ledger" not in body


# --- (b) Mcp-Method / Mcp-Name that disagree with the body ------------------------------------------------------------


def modern_call(name: str, msg_id: int = 1) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                         "params": {"name": name, "arguments": {"workspaceId": "acme"}, "_meta": MODERN_META}})


@pytest.mark.parametrize(("headers", "body"), [
    # the body asks for a read the policy allows; the header names a write: routing sees the write
    (modern_headers("tools/call", "delete_journal_entry"), modern_call("list_accounts")),
    (modern_headers("tools/list"), modern_call("list_accounts")),  # another method in the header
    (modern_headers("tools/call"), modern_call("list_accounts")),  # Mcp-Name missing where the revision needs it
    ({**modern_headers("tools/call", "list_accounts"), "Mcp-Name": "=?base64?bGlzdF9hY2NvdW50cw?="},  # bad base64
     modern_call("list_accounts")),
    ({**AUTH, "Content-Type": "application/json", "Accept": ACCEPT, "Mcp-Name": "delete_journal_entry"},
     orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),  # a name where the body names nothing
], ids=["other-tool", "other-method", "name-missing", "name-undecodable", "stray-name"])
async def test_routing_headers_that_disagree_with_the_body_are_refused_by_the_proxy(
        proxy_url: str, recorder: Recorder, headers: dict[str, str], body: bytes) -> None:
    status, answer = await post(proxy_url, headers, body)
    assert status == 400 and orjson.loads(answer)["error"]["code"] == HEADER_MISMATCH
    assert recorder.posts() == []  # decided by scopegate, never forwarded


async def test_routing_headers_sent_twice_are_refused(proxy_url: str, recorder: Recorder) -> None:
    headers = [*modern_headers("tools/call", "list_accounts").items(), ("Mcp-Name", "delete_journal_entry")]
    status, answer = await post(proxy_url, headers, modern_call("list_accounts"))
    assert status == 400 and orjson.loads(answer)["error"]["code"] == HEADER_MISMATCH
    assert recorder.posts() == []


async def test_routing_headers_that_agree_pass(proxy_url: str, recorder: Recorder) -> None:
    encoded = {**modern_headers("tools/call"), "Mcp-Name": "=?base64?bGlzdF9hY2NvdW50cw==?="}  # list_accounts
    for headers in (modern_headers("tools/call", "list_accounts"), encoded):
        status, answer = await post(proxy_url, headers, modern_call("list_accounts"))
        assert status == 200, answer
    assert [c["params"]["name"] for c in recorder.calls("tools/call")] == ["list_accounts", "list_accounts"]


def test_header_problem_is_pure_and_reads_every_value() -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "ledger://acme/x"}}
    one = Frame([call], is_batch=False)
    assert header_problem([], [], one) is None
    assert header_problem(["resources/read"], ["ledger://acme/x"], one) is None
    assert header_problem(["resources/read"], ["ledger://globex/x"], one) is not None
    assert header_problem(["resources/read", "resources/read"], ["ledger://acme/x"], one) is not None
    assert header_problem(["resources/read"], [], Frame([call, call], is_batch=True)) is not None


# --- (c) Content-Type ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", "multipart/form-data; boundary=x"])
async def test_a_post_that_is_not_json_is_refused_at_the_edge(
        proxy_url: str, recorder: Recorder, content_type: str | None) -> None:
    headers = {**AUTH, "Accept": ACCEPT}
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    status, raw_answer = await post(proxy_url, headers, body, skip_auto_headers=("Content-Type",))
    answer = orjson.loads(raw_answer)
    assert status == 415 and answer["error"]["code"] == -32600 and "application/json" in answer["error"]["message"]
    assert recorder.posts() == []


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
async def test_json_in_any_spelling_passes(proxy_url: str, recorder: Recorder, content_type: str) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
    headers = {**modern_headers("tools/list"), "Content-Type": content_type}
    status, answer = await post(proxy_url, headers, body)
    assert status == 200, answer
    # What the proxy forwards is the JSON it re-serialised, labelled as such whatever the client's spelling.
    (forwarded,) = [r for r in recorder.posts() if r.json().get("method") == "tools/list"]
    assert forwarded.headers["content-type"] == "application/json"
