"""The request path's cheaper steps (the commits after f3a9a09) attacked as a hostile client or a misbehaving upstream
would: each optimisation keeps a guarantee, and each section here tries to break one.

1. Host/Origin decisions remembered per policy: a remembered answer is the fresh decision, whatever the memo holds.
2. Guards run only for the methods they declare: a skipped guard would have passed the message on untouched, and a
   guard that changes a message's method (in place too) forwards nothing.
3. Header names decided once per spelling: credentials, forwarding claims and hop-by-hop headers never cross.
4. Upstream request heads checked in one scan: nothing that would split a request, and no name that is not an HTTP
   token, is ever written; the pooled connection serves the next request unharmed.
5. One timer for the upstream's answer head: a late answer never becomes another request's, a stale timer never
   fires on a reused connection, nothing is left behind.
6. A body that came whole is taken without waiting: it is exactly its Content-Length bytes, never the next request's.
7. The scope decision remembered per scope set, name and policy generation.
8. Audit records built cheaper: the trail still verifies and digests still exclude (only) the confirmation token.

Each test's docstring says which weakness, put back, makes it fail (see notes/attack2.md for the runs).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.canonical import NotCanonical, canonical, digest
from proxy.edge import headers as crossing
from proxy.edge.app import FORWARDER
from proxy.edge.headers import client_response_headers, upstream_request_headers
from proxy.edge.upstream_http import Connection, HeaderRefused, HeadTimeout, Pool
from proxy.exchange import Answer, Exchange
from proxy.guards.approval import ELICIT_ID_PREFIX
from proxy.guards.pipeline import MethodChanged, Pipeline
from proxy.guards.scope import GATED, Malformed, ScopeGuard, targets
from proxy.guards.tasks import TASK_PREFIX
from proxy.origin import MEMO, OriginPolicy
from proxy.policy import decide as decide_module
from proxy.policy.decide import Rules, remembered
from proxy.policy.model import load_policy
from proxy.policy.reload import LivePolicy
from tests import test_upstream_attack as raw
from tests import test_upstream_http as pool_tests
from tests.conftest import MODERN_META, POLICIES, TOKENS, Recorder, modern_headers, wait_until
from tests.test_guard_plans import WRITER, message, real_pipeline, skipped_guards_pass_untouched

# --- helpers -----------------------------------------------------------------------------------------------------


@pytest.fixture
async def pool_upstream() -> Any:
    """tests/test_upstream_http.py's raw upstream, for the upstream client alone."""
    async with pool_tests.raw_upstreams() as make:
        yield make


@pytest.fixture
async def raw_upstream() -> Any:
    """tests/test_upstream_attack.py's raw keep-alive upstream (answers exactly the bytes a test gives it)."""
    made: list[raw.RawUpstream] = []

    async def make(reply: raw.Reply, **kw: Any) -> tuple[raw.RawUpstream, str]:
        up = raw.RawUpstream(reply, **kw)
        made.append(up)
        return up, await up.start()

    yield make
    for up in made:
        up.stop()


async def on_one_connection(proxy: str, *parts: bytes | float, count: int = 1,
                            seconds: float = 5) -> list[tuple[int, bytes]]:
    """Writes the parts on one connection (a float: a pause that long), then reads `count` answers: (status, body)
    each, in order (Content-Length framed, as the proxy's and aiohttp's own are), fewer if the proxy closes first.
    An unread body may keep a connection open (aiohttp's lingering close): answers are counted, not read to EOF."""
    url = URL(proxy)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    out: list[tuple[int, bytes]] = []
    try:
        for part in parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
            else:
                writer.write(part)
                await writer.drain()
        async with asyncio.timeout(seconds):
            while len(out) < count:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # closed
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                if status != 100:  # an interim answer
                    out.append((status, body))
        return out
    finally:
        writer.close()


def post_head(proxy: str, length: int | bytes, token: str | None = TOKENS["writer"], extra: bytes = b"") -> bytes:
    """A 2026-07-28 POST head as a client writes it; `length` is the Content-Length (or raw framing headers)."""
    url = URL(proxy)
    framing = b"Content-Length: %d\r\n" % length if isinstance(length, int) else length
    auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    return (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: ping\r\n"
            % (url.path.encode(), url.host.encode(), url.port) + auth + framing + extra + b"\r\n")


def pong_of(msg_id: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {}})


def live_head_timers() -> list[asyncio.TimerHandle]:
    """Timers still to fire that would give up an upstream connection's wait for its answer head."""
    loop = asyncio.get_running_loop()
    return [h for h in loop._scheduled  # type: ignore[attr-defined]
            if not h.cancelled() and isinstance(getattr(h._callback, "__self__", None), Connection)]


# --- 1. Host and Origin, remembered per policy ---------------------------------------------------------------------

HOSTS = ("mcp.example.com", "127.0.0.1:8000", "[::1]")
ORIGINS = ("https://app.example.com", "http://localhost:*")
HOST_CASES = [
    ("mcp.example.com", True), ("MCP.Example.COM", True), ("mcp.example.com:8443", True),
    ("mcp.example.com.", False), ("mcp.example.com.evil.example", False), ("evil.example", False),
    ("xmcp.example.com", False), ("127.0.0.1:8000", True), ("127.0.0.1:8001", False), ("127.0.0.1", False),
    ("[::1]", True), ("[::1]:9", True), ("[::2]", False), ("::1", False), ("[0:0:0:0:0:0:0:1]", False),
    ("127.0.0.1.nip.io:8000", False), ("localhost", False),  # a configured list replaces the loopback default
    ("https://app.example.com", False),  # an allowed Origin is no allowed Host
]
ORIGIN_CASES = [
    ("https://app.example.com", True), ("HTTPS://APP.EXAMPLE.COM", True), ("https://app.example.com:8443", False),
    ("http://app.example.com", False), ("https://app.example.com.evil.example", False),
    ("https://app.example.com/", False), ("null", False), ("", False), ("http://localhost:3000", True),
    ("http://LOCALHOST:1", True), ("http://localhost", True), ("http://localhost.evil.example:3000", False),
    ("mcp.example.com", False),  # an allowed Host is no allowed Origin
]


def test_a_remembered_host_or_origin_decision_is_the_fresh_one_whatever_the_memo_holds() -> None:
    """Case, port, IPv6 and rebinding-style values, asked again and again while junk fills and clears the memo at a
    different point each round; each value asked as Host and as Origin (one is allowed only as the other); a second
    policy in the same process (CORS holds the same object as the Origin check, tests and workers hold others).
    Red with the two memos one dict (the Origin `https://app.example.com` taken for an allowed Host) and with one
    memo for every policy (a module-level dict keyed by value: the second policy's answers given to the first)."""
    policy = OriginPolicy(HOSTS, ORIGINS)
    other = OriginPolicy(("evil.example",), ("https://evil.example",))
    for round_ in range(4):
        for value, allowed in HOST_CASES:
            assert policy.host_allowed(value) is allowed, ("host", value)
        for value, allowed in ORIGIN_CASES:
            assert policy.origin_allowed(value) is allowed, ("origin", value)
        assert other.host_allowed("evil.example") and not other.host_allowed("mcp.example.com")
        assert other.origin_allowed("https://evil.example") and not other.origin_allowed("https://app.example.com")
        for i in range(MEMO - len(HOST_CASES) + round_ * 7):  # junk: the memo clears somewhere in the next round
            policy.host_allowed(f"junk-{round_}-{i}.example")
            policy.origin_allowed(f"https://junk-{round_}-{i}.example")
        assert len(policy._hosts_seen) <= MEMO and len(policy._origins_seen) <= MEMO


async def test_dns_rebinding_hosts_are_refused_by_the_check_and_by_cors_whatever_the_memo_holds(
        start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    """Through the whole proxy (the Origin check and CORS share one policy object): a good Host and Origin pass and
    get CORS headers; a rebinding Host, an Origin that only starts like the allowed one, and the allowed Origin's
    own text sent as Host are refused, by the check and by a preflight, after the memo was filled to the brim.
    Red with the Host and Origin memos one dict (the third Host is then taken from the Origin's answer)."""
    policy = OriginPolicy(HOSTS, ORIGINS)
    url = await start_proxy(upstream.url, origin_policy=policy)
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
    good = {**modern_headers("tools/list"), "Host": "MCP.example.com", "Origin": "https://app.example.com"}
    refused = [({"Host": "mcp.example.com.evil.example"}, "Host"), ({"Host": "127.0.0.1:8001"}, "Host"),
               ({"Origin": "https://app.example.com.evil.example"}, "Origin"),
               ({"Host": "https://app.example.com"}, "Host")]
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=good) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        for change, what in refused:
            for i in range(MEMO - len(policy._hosts_seen)):
                policy.host_allowed(f"junk-{i}.example")  # full: the next new value starts the memo over
            async with http.post(url, data=body, headers={**good, **change}) as resp:
                assert resp.status == 403 and (await resp.json())["error"]["message"] == f"{what} not allowed"
                assert "Access-Control-Allow-Origin" not in resp.headers
            async with http.options(url, headers={**good, **change, **preflight}) as resp:
                assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.options(url, headers={**good, **preflight}) as resp:
            assert resp.status == 204  # and the good pair still passes once the memo has been cleared
    assert len(recorder.posts()) == 1


# --- 2. guards run only for the methods they declare --------------------------------------------------------------

# Methods a client may send that look like gated ones (unusual but valid strings), and messages no list in
# tests/test_guard_plans.py has: each is passed on untouched by every guard that does not declare it.
LOOKALIKES = ["Tools/Call", "TOOLS/CALL", "tools/call ", " tools/call", "tools/call\t", "tools/call\u200b",
              "t\u043e\u043els/call", "tools\u2215call", "tools/call/", "prompts/get ", "Resources/Read",
              "resources/read\n", "Initialize", "initialize ", "tasks/Get", "completion/complete "]
ATTACKS = [
    *(message(m, name="delete_journal_entry", uri="ledger://globex/chart-of-accounts", taskId=f"{TASK_PREFIX}a",
              protocolVersion="2025-11-25", capabilities={"elicitation": {}}, arguments={"workspaceId": "globex"},
              ref={"type": "ref/resource", "uri": "file:///etc/passwd"}) for m in LOOKALIKES),
    message("tasks/result", taskId=f"{TASK_PREFIX}abc"),
    message("resources/unsubscribe", uri="ledger://globex/chart-of-accounts"),
    message("notifications/cancelled", requestId=7),
    message("elicitation/create", message="approve?", requestedSchema={}),  # a server's request, sent by a client
    message("tools/call", name="create_vendor", arguments={"workspaceId": "acme", "name": "x"}, task={"ttl": 1000}),
    {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete_journal_entry", "arguments": {}}},
    {"jsonrpc": "2.0", "id": f"{ELICIT_ID_PREFIX}x", "error": {"code": -1, "message": "declined"}},
    {"jsonrpc": "2.0", "id": ELICIT_ID_PREFIX, "result": {"action": "accept", "content": {}}},
    {"jsonrpc": "2.0", "id": 5, "result": {"action": "accept"}},
    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "x"}},
    {"jsonrpc": "2.0", "id": f"{TASK_PREFIX}abc", "result": {}},
]


async def test_every_guard_a_plan_skips_passes_attack_messages_on_untouched(tmp_path: Path, pat_file: str) -> None:
    """The contract of tests/test_guard_plans.py, asked of look-alike methods (case, spaces, zero-width and
    Cyrillic letters), notifications, task-augmented calls, responses shaped like the proxy's own elicitation ids:
    a guard the plan skips would have returned the very message, unchanged; and the look-alikes meet no guard at
    all (the upstream matches methods exactly: the SDKs answer them "method not found"). Red with the scope
    guard's first check made wider than its declaration (the method stripped and lower-cased before the check)."""
    pipeline = real_pipeline(tmp_path, pat_file)
    assert await skipped_guards_pass_untouched(pipeline, ATTACKS) > 150
    for method in LOOKALIKES:
        assert pipeline._by_method.get(method, pipeline._every) == (), method


BATCH_AUDIENCE = {**{k: v for k, v in modern_headers("x").items() if k not in ("MCP-Protocol-Version", "Mcp-Method")},
                  "Authorization": f"Bearer {TOKENS['reader']}"}  # no version header: 2025-03-26, batches allowed


async def test_a_batch_mixing_methods_forwards_only_what_its_own_guards_allow(start_proxy: Any, upstream: Any,
                                                                             recorder: Recorder) -> None:
    """One 2025-03-26 batch from the read-only credential bound to `acme`: a write call, the same as a notification,
    a completion naming a resource the policy does not list, a subscription to another workspace, an answer to an
    approval question it was never asked, and three messages that may pass. Each element meets its own method's
    guards; only the three reach the upstream. Red with the scope guard declaring only tools/call (the completion
    is forwarded) and with the approval guard declaring nothing (the answer is forwarded)."""
    url = await start_proxy(upstream.url)
    vendor = {"name": "create_vendor", "arguments": {"workspaceId": "acme", "name": "Paper Co"}}
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": vendor},
        {"jsonrpc": "2.0", "method": "tools/call", "params": vendor},
        {"jsonrpc": "2.0", "id": 2, "method": "completion/complete", "params": {
            "ref": {"type": "ref/resource", "uri": "file:///etc/passwd"}, "argument": {"name": "a", "value": ""}}},
        {"jsonrpc": "2.0", "id": 3, "method": "resources/subscribe",
         "params": {"uri": "ledger://globex/chart-of-accounts"}},
        {"jsonrpc": "2.0", "id": f"{ELICIT_ID_PREFIX}0123456789abcdef", "result": {"action": "accept", "content": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 5, "method": "Tools/Call", "params": vendor},
    ]
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(batch), headers=BATCH_AUDIENCE) as r:
        answered = {a.get("id"): a for a in await r.json()}
    assert answered[1]["error"]["code"] == -32003 and answered[2]["error"]["code"] == -32003
    assert answered[3]["error"]["code"] == -32003
    (received,) = recorder.posts()
    assert [m.get("method") for m in received.json()] == ["ping", "notifications/initialized", "Tools/Call"]


async def test_a_guard_that_changes_the_method_in_place_is_refused_and_nothing_is_forwarded(
        start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    """`MethodChanged` for a rewrite into another method held for copies only: a guard that changed the method of
    the very dict it was given (or took it away, or gave a response one) passed unchecked, and the guards after it
    had been chosen for the old method; a mapping other than a dict was not checked at all. Red with the check made
    for new dicts only (as it was)."""
    async def rename_in_place(exchange: Exchange, msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("method") == "tools/call":
            msg["method"] = "ping"
        return msg

    async def unmethod_in_place(exchange: Exchange, msg: dict[str, Any]) -> dict[str, Any]:
        msg.pop("method", None)
        return msg

    async def method_for_a_response(exchange: Exchange, msg: dict[str, Any]) -> dict[str, Any]:
        msg["method"] = "tools/call"
        return msg

    async def another_mapping(exchange: Exchange, msg: dict[str, Any]) -> Any:
        return OrderedDict({**msg, "method": "ping"})

    exchange = Exchange("r", None, None, CIMultiDict(), principal=WRITER)
    for guard, msg in ((rename_in_place, message("tools/call", name="x")),
                       (unmethod_in_place, message("tools/list")), (method_for_a_response, message(None)),
                       (another_mapping, message("tools/call", name="x"))):
        with pytest.raises(MethodChanged):
            await Pipeline(guards=(guard,)).guard(exchange, msg)
    assert (await Pipeline(guards=(rename_in_place,)).guard(exchange, message("ping")))["method"] == "ping"

    url = await start_proxy(upstream.url, pipeline=Pipeline(guards=(rename_in_place,)))
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x"}}]
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(batch), headers=BATCH_AUDIENCE) as r:
        assert r.status == 500 and (await r.json())["error"]["message"] == "internal error"
    assert recorder.posts() == []


async def test_tracing_keeps_each_guards_plan(tmp_path: Path, pat_file: str) -> None:
    """A traced pipeline is planned like the untraced one (each span wrapper says what its guard acts on). Red
    with the wrapper's `methods` left out (every traced guard then meets every message)."""
    from opentelemetry.sdk.trace import TracerProvider

    from proxy.ops.tracing import Tracing

    pipeline = real_pipeline(tmp_path, pat_file)
    traced = Tracing(TracerProvider()).pipeline(pipeline)
    assert traced.guards != pipeline.guards and traced._every == ()
    assert {m: len(g) for m, g in traced._by_method.items()} == {m: len(g) for m, g in pipeline._by_method.items()}
    for plain, wrapped in zip(pipeline.guards, traced.guards, strict=True):
        assert wrapped.methods == plain.methods  # type: ignore[attr-defined]


# --- 3. header names decided once per spelling ---------------------------------------------------------------------

NEVER_UP = ["Authorization", "AUTHORIZATION", "authorization", "AuThOrIzAtIoN", "Cookie", "COOKIE", "cookie",
            "Proxy-Authorization", "PROXY-AUTHORIZATION", "proxy-connection", "Proxy-Whatever", "X-Forwarded-For",
            "x-forwarded-host", "X-FORWARDED-PROTO", "Forwarded", "FORWARDED", "X-Real-IP", "x-real-ip", "Host",
            "HOST", "Origin", "ORIGIN", "Content-Length", "content-LENGTH", "Transfer-Encoding", "TRANSFER-ENCODING",
            "TE", "te", "Upgrade", "Keep-Alive", "KEEP-ALIVE", "Connection", "Trailer", "Accept-Encoding"]
NEVER_DOWN = ["Set-Cookie", "SET-COOKIE", "set-cookie", "Content-Length", "Date", "DATE", "Server", "SERVER",
              "Transfer-Encoding", "Keep-Alive", "Connection", "CONNECTION", "Proxy-Authenticate", "Trailer",
              "Upgrade", "X-Forwarded-For"]


def test_credentials_and_hop_by_hop_headers_never_cross_in_any_spelling_whatever_the_memo_holds() -> None:
    """Two credentials' requests in turn, each header in many spellings (repeated too), while junk names fill and
    clear the memo at a different point each time; a Connection header lists a name for its own request only
    (the next request's header of that name crosses, the one after that, listing it in another spelling, drops
    it); the upstream's answers likewise. Red with the drop decision made on the name as spelled (not lower-cased)
    and with Connection-listed names dropped only when the name was not remembered."""
    for round_ in range(6):
        token = TOKENS["writer" if round_ % 2 else "other"]
        client = CIMultiDict([(name, f"Bearer {token}") for name in NEVER_UP])
        client.add("Accept", "application/json")
        client.add("X-Secret-Hop", "hop")
        if round_ % 3 != 1:
            client.add("Connection", "keep-alive, " + ("X-SECRET-HOP" if round_ % 3 else "x-secret-hop"))
        up = upstream_request_headers(client, [("x-app-token", "server-side")])
        assert not {name.lower() for name in up} & {name.lower() for name in NEVER_UP if name != "Accept-Encoding"}
        assert token not in str(list(up.items())) and up["Accept-Encoding"] == "identity"
        assert up["Accept"] == "application/json" and up["x-app-token"] == "server-side"
        assert ("X-Secret-Hop" in up) is (round_ % 3 == 1), round_
        upstream = CIMultiDict([(name, "s=1") for name in NEVER_DOWN])
        upstream.add("Mcp-Session-Id", "s-1")
        upstream.add("connection", "X-UP-HOP")
        upstream.add("x-up-hop", "1")
        down = client_response_headers(upstream)
        assert list(down.items()) == [("Mcp-Session-Id", "s-1")]
        for i in range(crossing._Crossing.MEMO - 20 + round_ * 3 if round_ >= 3 else 0):
            crossing._UPSTREAM.decide(f"X-Junk-{round_}-{i}")
            crossing._DOWNSTREAM.decide(f"X-Junk-{round_}-{i}")


async def test_odd_spellings_cross_the_whole_proxy_as_they_should(start_proxy: Any, raw_upstream: Any) -> None:
    """Raw requests from two credentials spelling credentials, cookies, forwarding claims and a Connection-listed
    header oddly (junk names filling the memo to the brim between them); an upstream answering with Set-Cookie and
    hop-by-hop headers oddly spelt: the upstream sees no credential and no claim, the client no cookie and no
    hop-by-hop header. Red with the drop decision made on the name as spelled."""
    up, url = await raw_upstream(raw.answering(lambda r: raw.pong(r.msg_id, headers=(
        b"SET-COOKIE: a=b\r\nset-cookie: c=d\r\nKEEP-ALIVE: timeout=5\r\nconnection: X-UP-HOP\r\nx-up-hop: 1\r\n"
        b"X-Kept: k\r\n"))))
    proxy = await start_proxy(url)
    u = URL(proxy)
    got = []
    for n, (who, spelled) in enumerate((("writer", b"AUTHORIZATION"), ("other", b"authorization"))):
        body = raw.ping(n + 1)
        head = (b"POST /mcp HTTP/1.1\r\nhOsT: %s:%d\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n"
                b"Mcp-Method: ping\r\n%s: Bearer %s\r\nCOOKIE: c=1\r\nx-FORWARDED-host: evil.example\r\n"
                b"FORWARDED: for=10.0.0.1\r\nX-REAL-IP: 10.0.0.1\r\nPROXY-AUTHORIZATION: Basic eA==\r\n"
                b"CONNECTION: close, X-SECRET-HOP\r\nx-secret-hop: s\r\nContent-Length: %d\r\n\r\n"
                % (u.host.encode(), u.port, spelled, TOKENS[who].encode(), len(body)))
        for i in range(crossing._Crossing.MEMO - len(crossing._UPSTREAM.seen)):
            crossing._UPSTREAM.decide(f"X-Junk-{n}-{i}")  # full: the next new name starts the memo over
        reader, writer = await asyncio.open_connection(u.host, u.port)
        writer.write(head + body)
        async with asyncio.timeout(5):
            got.append(await reader.read(-1))  # the request said close: the whole answer, then EOF
        writer.close()
    assert len(up.requests) == 2
    for request, answer in zip(up.requests, got, strict=True):
        sent = request.head.lower()
        for gone in (TOKENS["writer"].lower().encode(), TOKENS["other"].lower().encode(), b"bearer", b"cookie",
                     b"forwarded", b"x-real-ip", b"proxy-authorization", b"x-secret-hop", b"evil.example"):
            assert gone not in sent, gone
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200") and b"\r\nx-kept: k" in head
        for gone in (b"set-cookie", b"x-up-hop", b"keep-alive", b"a=b"):
            assert gone not in head, gone


# --- 4. upstream request heads -------------------------------------------------------------------------------------

SPLITTING = ["a\rb", "a\nb", "a\r\nb", "a\0b", "a\r\n b", "\r\n\r\nGET /admin HTTP/1.1\r\nHost: x", "a\r", "\n",
             "x" * 65536 + "\r\nX-Late: 1"]
NOT_TOKENS = ["X Foo", "X\tFoo", "X\x01Foo", "X\x0bFoo", "X\x7fFoo", "X\u00e9", "Mcp-Param-Work Space", "X(Foo)",
              "X/Foo", 'X"Foo', "X{Foo}", "X@Foo", "X=Foo", "X,Foo", "X;Foo", "X?Foo", "X[Foo]", "X\\Foo",
              "Transfer-Encoding ", " Content-Length", "", "X\udcffFoo"]


async def test_nothing_that_would_split_a_request_is_written_and_the_connection_serves_the_next(
        pool_upstream: Any) -> None:
    """Values with a lone CR, a lone LF, CRLF, NUL, an obs-fold, a whole smuggled request, a huge value: first,
    middle or last among good headers; and the same values under names this client frames itself (never written,
    in any spelling). Nothing refused reaches the upstream; another credential's request on the same pooled
    connection then gets its own answer. Red with the check counting CRLF pairs instead of CR and LF each."""
    up = pool_upstream(lambda n, req: pool_tests.OK)
    pool = await pool_tests.serve(up)
    assert await pool_tests.whole(pool, Authorization="Bearer first") == (200, b"{}")
    for value in SPLITTING:
        for position in range(3):
            headers = [("Accept", "a"), ("X-Request-Id", "r")]
            headers.insert(position, ("X-Evil", value))
            with pytest.raises(HeaderRefused):
                await pool.request("POST", data=b"{}", headers=CIMultiDict(headers))
        for own in ("HOST", "content-length", "Transfer-Encoding", "CONNECTION"):
            assert await pool_tests.whole(pool, **{own: value}) == (200, b"{}")  # dropped, never written
    assert await pool_tests.whole(pool, Authorization="Bearer second") == (200, b"{}")
    assert up.connections == 1 and len(up.requests) == 2 + 4 * len(SPLITTING)
    for request in up.requests:
        head = request.split(b"\r\n\r\n")[0]
        assert head.count(b"\r") == head.count(b"\n") == head.count(b"\r\n") and b"\0" not in head
        assert head.lower().count(b"\r\nhost:") == 1 and head.lower().count(b"\r\ncontent-length:") == 1
        assert b"GET /admin" not in request and b"X-Late" not in request and b"X-Evil" not in request
    assert b"\r\nAuthorization: Bearer second\r\n" in up.requests[-1]
    await pool.close()


async def test_a_header_name_that_is_not_a_token_is_never_written(pool_upstream: Any) -> None:
    """RFC 9110 says a field name is a token; a space, a tab, a control character, a separator or a non-ASCII
    letter makes some parsers read another header than the one meant (`Transfer-Encoding ` taken for
    `Transfer-Encoding`: request smuggling). aiohttp's server refuses such names from clients; an upstream's own
    `x-mcp-header` token (mirrored as `Mcp-Param-{token}`) is not checked anywhere else. Each is refused, before and
    after its name was remembered, nothing is written, and the connection serves the next request. Red without
    the token check (as before: only CR, LF, NUL and `:` were refused in names)."""
    up = pool_upstream(lambda n, req: pool_tests.OK)
    pool = await pool_tests.serve(up)
    assert await pool_tests.whole(pool) == (200, b"{}")
    for name in NOT_TOKENS:
        for _ in range(2):
            with pytest.raises(HeaderRefused):
                await pool.request("POST", data=b"{}", headers={"Accept": "a", name: "v"})
    assert await pool_tests.whole(pool, **{"X-Ok!#$%&'*+.^_`|~": "v"}) == (200, b"{}")  # every token character
    assert up.connections == 1 and len(up.requests) == 2
    await pool.close()


def tagged_catalog(token: str) -> Any:
    """An upstream catalog whose one tool mirrors `workspaceId` into a header named by `token` (x-mcp-header)."""
    def catalog(msg_id: Any) -> bytes:
        tool = {"name": "tagged", "inputSchema": {"type": "object", "properties": {
            "workspaceId": {"type": "string", "x-mcp-header": token}}}}
        body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"tools": [tool]}})
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return catalog


async def test_an_upstream_header_token_that_is_no_header_name_is_refused_not_written(
        start_proxy: Any, raw_upstream: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misbehaving upstream names its `x-mcp-header` with a space: the proxy, mirroring a 2026-07-28 call's
    workspace into `Mcp-Param-Work Space`, refuses the call (400) and writes nothing; a well-named token is sent.
    Red without the token check on names (the malformed header line reached the upstream)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nname: t\nscopes: [mcp:read]\ndefault: deny\n"
                      "tools:\n  - {match: tagged, scopes: [mcp:read], workspace: verify}\n")
    for token, status in (("Work Space", 400), ("Workspace", 200)):
        monkeypatch.setattr(raw, "catalog", tagged_catalog(token))
        up, url = await raw_upstream(raw.answering(lambda r: raw.pong(r.msg_id)))
        proxy = await start_proxy(url, policy=str(policy))
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "tagged", "arguments": {"workspaceId": "acme"}, "_meta": MODERN_META}})
        async with aiohttp.ClientSession() as http, \
                http.post(proxy, data=body, headers=modern_headers("tools/call", "tagged")) as resp:
            assert resp.status == status, await resp.text()
        if status == 400:
            assert up.requests == []
        else:
            assert b"\r\nMcp-Param-Workspace: acme\r\n" in up.requests[0].head


# --- 5. one timer for the answer head ------------------------------------------------------------------------------

async def test_a_head_timer_never_outlives_its_request() -> None:
    """A request answered in time leaves no timer behind: the next request on the same (reused) connection, slower
    than the first one's timeout, is not given up; hundreds of requests leave no live timer; requests that time out
    leave no connection. Red with the timer not cancelled once the head came (the second request fails with
    HeadTimeout) and with a timeout that does not close its connection (five left open)."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)  # every body here is {}
                if b"X-Never" in head:
                    continue  # no answer, ever
                if b"X-Slow" in head:
                    await asyncio.sleep(0.3)
                writer.write(pool_tests.OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = Pool(URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"), limit=4, connect_timeout=2)
    try:
        first = await pool.request("POST", data=b"{}", headers={}, head_timeout=0.15)
        assert await first.read() == b"{}"
        first.release()
        second = await pool.request("POST", data=b"{}", headers={"X-Slow": "1"})  # past the first one's timer
        assert second.status == 200 and await second.read() == b"{}"
        second.release()
        assert connections == 1  # the same connection, not given up by the first request's timer
        for _ in range(300):
            response = await pool.request("POST", data=b"{}", headers={}, head_timeout=60)
            await response.read()
            response.release()
        assert live_head_timers() == []
        for _ in range(5):
            with pytest.raises(HeadTimeout):
                await pool.request("POST", data=b"{}", headers={"X-Never": "1"}, head_timeout=0.02)
        assert pool._open == set() and live_head_timers() == []
    finally:
        await pool.close()
        server.close()


async def test_a_late_answer_after_the_timeout_never_answers_another_request(start_proxy: Any,
                                                                            raw_upstream: Any) -> None:
    """One connection to the upstream. A call gets no answer head in time (504), and its answer, meant to be taken
    for the next request's, comes late on that connection; the next call, another credential's, gets its own answer
    on a new connection, and the first call was never sent twice. Red with the timed-out connection kept (the
    pool's one connection is then never free again: 502)."""
    async def reply(request: raw.Request, writer: asyncio.StreamWriter) -> None:
        if request.msg_id == 1:
            await asyncio.sleep(0.5)
            writer.write(raw.pong(1) + raw.evil(2))
        else:
            writer.write(raw.pong(request.msg_id))
        await writer.drain()

    up, url = await raw_upstream(reply)
    proxy = await start_proxy(url, response_timeout=0.25, call_connections=1, connect_timeout=0.2)
    forwarder = start_proxy.runners[-1].app[FORWARDER]
    async with aiohttp.ClientSession() as http:
        status, body = await raw.call(http, proxy, 1)
        assert status == 504 and orjson.loads(body)["error"]["code"] == -32001
        assert not forwarder.session._open  # given up at once, not when the late answer comes
        for msg_id in (2, 3):
            status, body = await raw.call(http, proxy, msg_id, token=TOKENS["other"])
            assert (status, orjson.loads(body)) == (200, {"jsonrpc": "2.0", "id": msg_id, "result": {}})
        await asyncio.sleep(0.4)  # the late answer has been written (to a closed connection)
        status, body = await raw.call(http, proxy, 4, token=TOKENS["other"])
        assert (status, orjson.loads(body)) == (200, {"jsonrpc": "2.0", "id": 4, "result": {}})
    assert [r.msg_id for r in up.requests] == [1, 2, 3, 4]


async def test_a_client_that_leaves_while_the_upstream_thinks_leaves_nothing_behind(start_proxy: Any,
                                                                                  raw_upstream: Any) -> None:
    """The client disconnects while its call waits for the upstream's answer head: the wait is cancelled, the
    upstream connection given up, and its timer cancelled (none left to fire in two minutes on a connection that
    may by then carry someone else's request). Red with the timer not cancelled when the wait is."""
    held = asyncio.Event()

    async def hold(request: raw.Request, writer: asyncio.StreamWriter) -> None:
        if request.msg_id == 1:
            await held.wait()
        writer.write(raw.pong(request.msg_id))

    up, url = await raw_upstream(hold)
    proxy = await start_proxy(url)
    forwarder = start_proxy.runners[-1].app[FORWARDER]
    leaving = asyncio.get_running_loop().create_task(
        on_one_connection(proxy, post_head(proxy, len(raw.ping(1))) + raw.ping(1), seconds=0.3))  # then it leaves
    assert await wait_until(lambda: len(up.requests) == 1 and len(live_head_timers()) == 1)
    with pytest.raises(TimeoutError):
        await leaving  # and the client's socket is closed
    assert await wait_until(lambda: not forwarder.session._open and not live_head_timers())
    held.set()
    async with aiohttp.ClientSession() as http:
        assert await raw.call(http, proxy, 2, token=TOKENS["other"]) == (200, pong_of(2))


# --- 6. a body that came whole -------------------------------------------------------------------------------------

async def test_a_body_is_exactly_its_own_bytes_never_the_next_requests(start_proxy: Any, raw_upstream: Any) -> None:
    """Three requests on one keep-alive connection: the first body split across two writes, the second request
    (no credential) pipelined right behind it in the same write, the third another credential's. Each body is its
    own Content-Length bytes: the first is whole (not what had come when its headers did), the second is refused
    for itself (401), the third answered as itself. Then a body followed by bytes its Content-Length does not
    cover: they are read as a request of their own (400), never as part of the body. Red with a body taken as it
    is without checking that all of it had arrived."""
    up, url = await raw_upstream(raw.answering(lambda r: raw.pong(r.msg_id)))
    proxy = await start_proxy(url)
    one, two, three = raw.ping(1), raw.ping(2), raw.ping(3)
    got = await on_one_connection(
        proxy, post_head(proxy, len(one)) + one[:9], 0.05,
        one[9:] + post_head(proxy, len(two), token=None) + two + post_head(proxy, len(three), token=TOKENS["other"])
        + three, count=3)
    assert [status for status, _ in got] == [200, 401, 200]
    assert got[0][1] == pong_of(1) and got[2][1] == pong_of(3)
    assert [r.body for r in up.requests] == [one, three]

    smuggled = raw.ping(99)  # bytes past the Content-Length: in the same write, or a moment later
    got = await on_one_connection(proxy, post_head(proxy, len(one)) + one + smuggled, count=2)
    assert [status for status, _ in got] in ([400], [200, 400])  # aiohttp refuses what it read at once, or the rest
    got = await on_one_connection(proxy, post_head(proxy, len(one)) + one, 0.05, smuggled, count=2)
    assert got[0] == (200, pong_of(1)) and got[1][0] == 400
    assert [r.msg_id for r in up.requests] in ([1, 3, 1], [1, 3, 1, 1])


async def test_expect_100_continue_and_chunked_bodies_are_read_whole(start_proxy: Any, raw_upstream: Any) -> None:
    """A client that waits for 100 Continue before its body, and chunked bodies (one chunk at a time, with pauses):
    each forwarded whole. Red with a body taken as it is without checking that all of it had arrived (the 100
    Continue one is empty then)."""
    up, url = await raw_upstream(raw.answering(lambda r: raw.pong(r.msg_id)))
    proxy = await start_proxy(url)
    body = raw.ping(7)
    u = URL(proxy)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    writer.write(post_head(proxy, len(body), extra=b"Expect: 100-continue\r\n"))
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(len(pong_of(7))) == pong_of(7)
    writer.close()
    chunks = [body[:5], body[5:20], body[20:]]
    parts: list[bytes | float] = [post_head(proxy, b"Transfer-Encoding: chunked\r\n")]
    for chunk in chunks:
        parts += [b"%x\r\n%s\r\n" % (len(chunk), chunk), 0.03]
    parts.append(b"0\r\n\r\n")
    assert await on_one_connection(proxy, *parts) == [(200, pong_of(7))]
    assert [r.body for r in up.requests] == [body, body]


async def test_bodies_at_and_past_the_limit(start_proxy: Any, raw_upstream: Any) -> None:
    """SCOPEGATE_MAX_BODY_BYTES=512: a body of exactly 512 bytes is taken; 513 is refused (413) whether it came
    whole with its headers, chunked, or only announced (refused without waiting for it); none of those reach the
    upstream. Red with the Content-Length not checked before a body that came whole is taken."""
    up, url = await raw_upstream(raw.answering(lambda r: raw.pong(r.msg_id)))
    proxy = await start_proxy(url, max_body_bytes=512)
    exact = raw.ping(5) + b" " * (512 - len(raw.ping(5)))
    over = exact + b" "
    assert await on_one_connection(proxy, post_head(proxy, 512) + exact) == [(200, pong_of(5))]
    for parts in ([post_head(proxy, 513) + over],
                  [post_head(proxy, b"Transfer-Encoding: chunked\r\n")
                   + b"%x\r\n%s\r\n0\r\n\r\n" % (len(over), over)],
                  [post_head(proxy, 10_000_000) + over[:10]]):
        ((status, body),) = await on_one_connection(proxy, *parts)
        assert status == 413 and b"exceeds 512 bytes" in body
    assert [r.msg_id for r in up.requests] == [5]


async def test_a_body_that_never_comes_whole_is_408_within_the_body_timeout(start_proxy: Any,
                                                                           raw_upstream: Any) -> None:
    """Content-Length larger than what the client sends: 408 once the body timeout passes, nothing forwarded. Red
    with the whole read taken outside the body timeout."""
    up, url = await raw_upstream(raw.answering(lambda r: raw.pong(r.msg_id)))
    proxy = await start_proxy(url, body_timeout=0.3)
    started = asyncio.get_running_loop().time()
    got = await on_one_connection(proxy, post_head(proxy, 100) + raw.ping(1), seconds=3)
    assert [status for status, _ in got] == [408] and asyncio.get_running_loop().time() - started < 2
    assert up.requests == []


# --- 7. the scope decision, remembered -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["tools/call", "prompts/get", "resources/read", "resources/subscribe"])
@pytest.mark.parametrize("value", [None, "", [], ["create_vendor"], {}, {"name": "x"}, 0, 1, True, 1.5])
def test_a_name_that_is_not_a_non_empty_string_is_malformed(method: str, value: Any) -> None:
    """The fast path takes a name straight from params only when it is a non-empty string. Red with it taking any
    truthy value (a list, a dict, a number would be passed on to be decided as a name)."""
    field = "name" if GATED[method].where == "name" else "uri"
    with pytest.raises(Malformed):
        targets(method, {field: value})
    assert targets(method, {field: "x"}) == [(GATED[method].kind, "x")]


def test_remembered_decisions_are_per_scope_set_and_survive_a_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two credentials with different scopes ask for the same names in turn, before and after junk names fill the
    memo past its bound: each gets its own decision every time. Red with the memo keyed without the scope set."""
    monkeypatch.setattr(decide_module, "_CACHE_LIMIT", 10)
    rules = Rules(load_policy(str(POLICIES / "pat-workspaces.yaml")))
    reader, writer = frozenset({"mcp:read"}), frozenset({"mcp:read", "mcp:write"})
    for round_ in range(3):
        for held, allowed in ((writer, True), (reader, False), (writer, True), (reader, False)):
            assert remembered(rules, held, "tool", "create_vendor").allowed is allowed
            assert remembered(rules, held, "tool", "list_accounts").allowed is True
            assert remembered(rules, held, "tool", "invite_member").allowed is False  # not in the policy
        for i in range(30):
            assert not remembered(rules, writer if i % 2 else reader, "tool", f"junk-{round_}-{i}").allowed
        assert len(rules.listing_memo) <= 50


def test_a_flood_of_junk_names_does_not_stop_real_ones_being_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its bound the memo starts over rather than stop remembering: after a client's junk names, the next real
    name is remembered again (red when a full memo takes nothing more: every real decision uncached until reload)."""
    monkeypatch.setattr(decide_module, "_CACHE_LIMIT", 10)
    rules = Rules(load_policy(str(POLICIES / "pat-workspaces.yaml")))
    reader, writer = frozenset({"mcp:read"}), frozenset({"mcp:read", "mcp:write"})
    for i in range(120):
        assert not remembered(rules, reader, "tool", f"junk-{i}").allowed
    assert len(rules.listing_memo) <= 50
    assert remembered(rules, writer, "tool", "create_vendor").allowed
    assert (writer, "tool", "create_vendor", None) in rules.listing_memo


async def test_a_policy_reload_between_requests_is_decided_by_the_new_policy(tmp_path: Path) -> None:
    """The scope guard remembers decisions; a reload (a new Rules, as PolicyReloader makes) between two requests:
    the second is decided by the new policy, while a request pinned before the reload keeps the old one. Red with
    the memo kept across generations (one dict for every Rules)."""
    text = (POLICIES / "pat-workspaces.yaml").read_text()
    old = load_policy(str(POLICIES / "pat-workspaces.yaml"))
    (tmp_path / "new.yaml").write_text("\n".join(line for line in text.splitlines() if "create_vendor" not in line))
    new = load_policy(str(tmp_path / "new.yaml"))
    live = LivePolicy(old, Rules(old))
    guard = ScopeGuard(live, catalog=None)  # type: ignore[arg-type]  # default deny: the catalog is never asked

    async def decided(pinned: Exchange | None = None) -> Any:
        exchange = pinned or Exchange("r", None, "2026-07-28", CIMultiDict(), principal=WRITER)
        if pinned is None:
            live.pin(exchange)
        msg = message("tools/call", name="create_vendor", arguments={"workspaceId": "acme"})
        return exchange, await guard(exchange, msg)

    before, outcome = await decided()
    assert isinstance(outcome, dict)
    for _ in range(2):
        assert isinstance((await decided())[1], dict)  # from the memo
    live.policy, live.rules = new, Rules(new)  # the reload's swap
    for _ in range(2):
        outcome = (await decided())[1]
        assert isinstance(outcome, Answer) and outcome.reason == "unlisted"
    assert isinstance((await decided(before))[1], dict)  # pinned before the reload: the old generation


# --- 8. audit records and digests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [{1: "a"}, {"a": "b", 2: "c"}, {"a": {3: "x"}}, {(1, 2): "a"}, {None: "a"},
                                   {b"a": "b"}])
def test_an_object_key_that_is_not_a_string_has_no_canonical_form(value: dict) -> None:
    """The flat-object fast path checks keys too. Red with it checking only the values (a dict with an int key
    passes unchanged)."""
    with pytest.raises(NotCanonical):
        canonical(value)
    with pytest.raises(NotCanonical):
        digest(value)


def test_the_digest_leaves_out_only_the_top_level_token_and_never_touches_the_arguments() -> None:
    """The digest copies the arguments only when a confirmation token is there: the caller's own arguments are never
    changed (the forwarded call and the raw audit record are the same object), the top-level token is left out, a
    nested one is not, key order does not matter. Red with the token popped from the caller's dict."""
    args = {"confirmationToken": "sgc_x", "b": "1", "a": "2", "chain": "c", "seq": "9", "hash": "h"}
    kept = copy.deepcopy(args)
    plain = {k: v for k, v in args.items() if k != "confirmationToken"}
    assert digest(args) == digest(plain) == digest(dict(reversed(list(plain.items()))))
    assert args == kept and list(args) == list(kept)
    assert digest({"x": {"confirmationToken": "t"}}) != digest({"x": {}})
    expected = hashlib.sha256(orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert digest(args) == expected


async def test_a_trail_with_hostile_argument_keys_verifies_and_says_what_was_called(
        start_proxy: Any, upstream: Any, recorder: Recorder, tmp_path: Path) -> None:
    """Raw arguments in the records (SCOPEGATE_AUDIT_ARGUMENTS=true), whose keys are the record's own chain, seq,
    prev, hash, time and decision, with a confirmation token beside them (a read: forwarded as it is), and a write
    previewed then confirmed with the same hostile keys: `scopegate audit verify` passes, every record keeps its
    own chain/seq/prev, the raw arguments are as sent less any token (a secret, wherever it came), and each digest
    leaves out the token (the preview's and the confirmation's are the same). Red with the digest not leaving the
    token out."""
    from tests.test_operations import call

    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, audit_sink=f"file:{trail}", audit_arguments=True)
    hostile = {"chain": "forged", "seq": 1, "prev": "0" * 64, "hash": "f" * 64, "time": "1970", "decision": "allow"}
    read = {"workspaceId": "acme", **hostile, "confirmationToken": "sgc_not_a_real_one"}
    await call(url, "list_accounts", read)
    write = {"workspaceId": "acme", "name": "Paper Co", **hostile}
    _, preview = await call(url, "create_vendor", write)
    token = preview["result"]["structuredContent"]["confirmationToken"]
    status, _ = await call(url, "create_vendor", {**write, "confirmationToken": token})
    assert status == 200
    await start_proxy.runners.pop().cleanup()  # shutdown writes what is pending and seals the chain
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    done = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", str(trail), "--unsigned"],
                          env=clean, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [orjson.loads(line) for line in trail.read_text().splitlines()]
    chain = lines[0]["chain"]
    assert [r["chain"] for r in lines] == [chain] * len(lines)
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    assert all(r["prev"] == p["hash"] for p, r in itertools.pairwise(lines))
    calls = [r for r in lines if r.get("method") == "tools/call"]
    assert [r["decision"] for r in calls] == ["allow", "preview", "confirm"]

    def expected(arguments: dict) -> str:
        plain = {k: v for k, v in arguments.items() if k != "confirmationToken"}
        return hashlib.sha256(orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)).hexdigest()

    assert calls[0]["arguments"] == {k: v for k, v in read.items() if k != "confirmationToken"}
    assert calls[0]["arguments_digest"] == expected(read) and "sgc_not_a_real_one" not in trail.read_text()
    assert calls[1]["arguments_digest"] == calls[2]["arguments_digest"] == expected(write)
    assert token not in trail.read_text()  # a write's token is the proxy's: never forwarded, never written
