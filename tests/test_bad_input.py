"""Bad input gets a clear error and reaches nothing: every case asserts the upstream received no POST."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import AUTH, MODERN_META, Recorder, modern_headers

LEGACY = {**AUTH, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers or LEGACY) as resp:
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None)


def deep(levels: int) -> bytes:
    return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b'{"a":' * levels + b"1" + b"}" * levels + b"}"


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"', -32700, "Parse error"),
        (b"\xff\xfe{}", -32700, "UTF-8"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\xed\xa0\x80"}}', -32700, "UTF-8"),  # lone surrogate
        (b"", -32700, "Parse error"),
        (b'"just a string"', -32600, "must be an object"),
        (b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}', -32600, "jsonrpc"),
        (b'{"jsonrpc":"2.0","id":1,"method":42}', -32600, "method"),
        (b'{"jsonrpc":"2.0","id":{"x":1},"method":"tools/list"}', -32600, "id"),
        (b'{"jsonrpc":"2.0","id":true,"method":"tools/list"}', -32600, "id"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1,2]}', -32600, "params"),
        (b'{"jsonrpc":"2.0","id":1}', -32600, "result"),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}', -32600, "exactly one"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_accounts","arguments":[1]}}',
         -32602, "arguments must be an object"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":17}}', -32602, "name must be"),
        (deep(80), -32600, "nests deeper than 64"),
        (deep(5000), -32600, "nests deeper than 64"),  # past orjson's own recursion limit
    ],
)
async def test_refused_before_the_upstream(
    body: bytes, code: int, words: str, proxy_url: str, recorder: Recorder
) -> None:
    status, answer = await post(proxy_url, body)
    assert status == 400
    assert answer["jsonrpc"] == "2.0" and answer["error"]["code"] == code
    assert words in answer["error"]["message"]
    assert answer["error"]["data"]["requestId"]
    assert recorder.posts() == []


async def test_id_kept_in_error_when_it_is_valid(proxy_url: str, recorder: Recorder) -> None:
    status, answer = await post(proxy_url, b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":"x"}')
    assert status == 400 and answer["id"] == 7
    assert recorder.posts() == []


async def test_oversized_body_counted_while_reading(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    url = await start_proxy(upstream.url, max_body_bytes=1024)
    big = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"pad": "x" * 2000}})

    async def chunked() -> Any:  # no Content-Length: the limit must hold while the body streams in
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=chunked(), headers=LEGACY) as resp:
            answer = await resp.json()
            assert resp.status == 413 and "exceeds 1024 bytes" in answer["error"]["message"]
        async with http.post(url, data=big, headers=LEGACY) as resp:  # with Content-Length: refused up front
            assert resp.status == 413
        small = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
        async with http.post(url, data=small, headers=modern_headers("tools/list")) as resp:
            assert resp.status == 200  # the same proxy still serves bodies under the limit
    assert len(recorder.posts()) == 1


async def test_duplicate_keys_upstream_acts_on_what_the_proxy_checked(
    start_proxy: Any, upstream: Any, recorder: Recorder
) -> None:
    """Two `name` keys: the guard and the upstream must see the same single tool name."""
    from proxy.guards.pipeline import Pipeline

    seen: list[str] = []

    async def spy(exchange: Any, message: dict) -> dict:
        if message.get("method") == "tools/call":
            seen.append(message["params"]["name"])
        return message

    url = await start_proxy(upstream.url, pipeline=Pipeline(guards=(spy,)))
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_journal_entry",'
        b'"name":"get_period_status","arguments":{"workspaceId":"acme","period":"2026-10"},'
        b'"_meta":' + orjson.dumps(MODERN_META) + b"}}"
    )
    status, answer = await post(url, body, {**modern_headers("tools/call", "get_period_status"),
                                            "Mcp-Param-Workspace": "acme"})
    assert status == 200 and answer["result"]["structuredContent"]["status"] == "open"
    (received,) = recorder.posts()
    assert received.body.count(b'"name"') == 1  # re-serialised: one key, not the client's two
    assert received.json()["params"]["name"] == seen[0] == "get_period_status"


BATCH = [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": 2, "method": "prompts/list"},
]


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", "2026-07-28"])
async def test_batches_refused_where_the_protocol_forbids_them(
    version: str, proxy_url: str, recorder: Recorder
) -> None:
    status, answer = await post(proxy_url, orjson.dumps(BATCH), {**LEGACY, "MCP-Protocol-Version": version})
    assert status == 400 and answer["error"]["code"] == -32600 and version in answer["error"]["message"]
    assert recorder.posts() == []


async def test_batch_limits(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    url = await start_proxy(upstream.url, max_batch=3)
    headers = {**LEGACY, "MCP-Protocol-Version": "2025-03-26"}
    status, answer = await post(url, b"[]", headers)
    assert status == 400 and "empty batch" in answer["error"]["message"]
    status, answer = await post(url, orjson.dumps(BATCH * 2), headers)
    assert status == 400 and "exceeds the limit of 3" in answer["error"]["message"]
    assert recorder.posts() == []


async def test_batch_elements_each_checked(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    """A guard sees every element of an allowed batch; an invalid element is answered, the valid ones proceed."""
    from proxy.guards.pipeline import Pipeline

    seen: list[str] = []

    async def spy(exchange: Any, message: dict) -> dict:
        seen.append(message["method"])
        return message

    url = await start_proxy(upstream.url, pipeline=Pipeline(guards=(spy,)))
    batch = [BATCH[0], {"jsonrpc": "2.0", "id": 9, "method": 5}, BATCH[1]]
    status, answer = await post(url, orjson.dumps(batch), LEGACY)  # no version header: 2025-03-26
    assert seen == ["tools/list", "prompts/list"]
    # The SDK server refuses arrays outright (400); its answer reaches the client beside the proxy's own answer to
    # the invalid element: nothing is lost.
    assert status == 400
    assert sorted(a["error"]["code"] for a in answer) == [-32602, -32600]
    (received,) = recorder.posts()
    assert [m["method"] for m in received.json()] == ["tools/list", "prompts/list"]


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        ({"Host": "evil.example"}, "Host"),
        ({"Host": "127.0.0.1.evil.example:80"}, "Host"),
        ({"Origin": "http://evil.example"}, "Origin"),
        ({"Origin": "http://localhost.evil.example:3000"}, "Origin"),
        ({"Origin": "null"}, "Origin"),
    ],
)
async def test_host_and_origin_refused(headers: dict, what: str, proxy_url: str, recorder: Recorder) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
    async with aiohttp.ClientSession() as http:
        for method in ("POST", "GET", "DELETE"):
            async with http.request(method, proxy_url, data=body if method == "POST" else None,
                                    headers={**modern_headers("tools/list"), **headers}) as resp:
                answer = await resp.json()
                assert resp.status == 403 and answer["error"]["message"] == f"{what} not allowed"
    assert recorder.received == []


async def test_allowed_origin_and_configured_host_pass(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    from proxy.origin import OriginPolicy

    policy = OriginPolicy(hosts=("mcp.example.com",), origins=("https://app.example.com",))
    url = await start_proxy(upstream.url, origin_policy=policy)
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
    good = {**modern_headers("tools/list"), "Host": "mcp.example.com", "Origin": "https://app.example.com"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=good) as resp:
            assert resp.status == 200
        async with http.post(url, data=body, headers={**good, "Host": "127.0.0.1"}) as resp:
            assert resp.status == 403  # loopback is only a default; a configured list replaces it
    (received,) = recorder.posts()
    assert "origin" not in received.headers  # checked here; the upstream would judge it against the wrong host
