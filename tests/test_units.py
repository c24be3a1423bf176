"""Unit tests of the pure pieces: SSE framing, JSON-RPC framing, headers, Host/Origin matching, JSON merging."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from proxy.edge.framing import FrameError, depth_exceeds, envelope_problem, parse_body
from proxy.edge.headers import client_response_headers, upstream_request_headers
from proxy.edge.sse import EventSplitter, EventTooLarge, event_data, event_id, rebuild
from proxy.origin import OriginPolicy, default_policy

STREAM = (
    b": a comment\r\nretry: 100\r\n\r\n"
    b"id: 7\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
    b"id: 8\ndata: {\"b\":2}\n\n"
    b"data: x\r\r"
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, len(STREAM)])
def test_splitter_is_indifferent_to_chunk_boundaries(size: int) -> None:
    splitter = EventSplitter(1 << 20)
    events: list[bytes] = []
    for i in range(0, len(STREAM), size):
        events.extend(splitter.feed(STREAM[i : i + size]))
    rest = splitter.rest()  # the last event ends in CR CR: it could still become CR CRLF, so it waits for the end
    assert b"".join(events) + rest == STREAM  # byte for byte, nothing lost or added
    assert len(events) == 3 and rest == b"data: x\r\r"
    assert event_data(events[0]) is None
    assert event_data(events[1]) == b'{"a":\n1}'
    assert event_data(events[2]) == b'{"b":2}'
    assert event_data(rest) == b"x"
    assert event_id(events[1]) == b"7" and event_id(events[0]) is None


def test_splitter_finish_gives_a_complete_last_event_only() -> None:
    splitter = EventSplitter(1 << 20)
    assert list(splitter.feed(b"data: x\r\r")) == []
    assert splitter.finish() == b"data: x\r\r"
    splitter = EventSplitter(1 << 20)
    assert list(splitter.feed(b"data: x\n")) == [] and splitter.finish() is None


def test_splitter_waits_for_the_lf_of_a_crlf() -> None:
    splitter = EventSplitter(1 << 20)
    assert list(splitter.feed(b"data: 1\r\n\r")) == []
    assert list(splitter.feed(b"\n")) == [b"data: 1\r\n\r\n"]


def test_splitter_limits_an_unterminated_event() -> None:
    splitter = EventSplitter(10)
    with pytest.raises(EventTooLarge):
        list(splitter.feed(b"data: " + b"x" * 20))


def test_rebuild_keeps_the_other_lines_in_place() -> None:
    event = b"id: 6\r\nevent: message\r\ndata: {\"a\":\r\nid:7\r\ndata: 1}\r\n: note\r\nidle: x\r\n\r\n"
    assert event_id(event) == b"7"  # the last id line is the one that counts
    assert rebuild(event, b'{"a":2}', b"S") == b'event: message\r\ndata: {"a":2}\r\nid: S\r\n: note\r\nidle: x\r\n\r\n'
    assert event_id(b"id: a\0b\n\n") is None  # clients ignore an id holding NUL
    assert rebuild(b"retry: 5\n\n", None, None) == b"retry: 5\n\n"


def test_depth() -> None:
    assert not depth_exceeds({"a": [1, {"b": 2}]}, 3)
    assert depth_exceeds({"a": [1, {"b": [2]}]}, 3)
    assert not depth_exceeds("scalar", 1)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"jsonrpc": "2.0", "method": "notifications/initialized"}, None),
        ({"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {}}, None),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, None),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}, None),
        ({"jsonrpc": "2.0", "id": 1, "method": ""}, "non-empty"),
        ({"jsonrpc": "2.0", "id": 1, "method": "x", "result": {}}, "cannot carry"),
        ({"jsonrpc": "2.0", "id": 1, "error": "bad"}, "must be an object"),
        ([], "must be an object"),
    ],
)
def test_envelope(message: object, problem: str | None) -> None:
    found = envelope_problem(message)
    assert (found is None) if problem is None else (problem in found)


def test_batch_answers_invalid_elements_and_keeps_order() -> None:
    body = orjson.dumps([{"jsonrpc": "2.0", "id": 1, "method": "a"}, {"id": 2}, {"jsonrpc": "2.0", "method": "b"}])
    frame = parse_body(body, max_depth=8, max_batch=5, protocol_version=None)
    assert frame.is_batch and [m["method"] for m in frame.messages] == ["a", "b"]
    assert frame.answers[0]["id"] == 2 and frame.answers[0]["error"]["code"] == -32600
    with pytest.raises(FrameError):
        parse_body(body, max_depth=8, max_batch=5, protocol_version="2025-11-25")


def test_headers_drop_hop_by_hop_and_what_connection_lists() -> None:
    client = CIMultiDict(
        [("Host", "proxy"), ("Connection", "x-a, Keep-Alive"), ("X-A", "1"), ("Keep-Alive", "5"),
         ("Authorization", "Bearer t"), ("Mcp-Session-Id", "s"), ("Mcp-Param-Region", "eu"), ("Accept", "a"),
         ("Proxy-Foo", "1"), ("Content-Length", "10"), ("Accept-Encoding", "gzip")]
    )
    up = upstream_request_headers(client, (("X-Request-Id", "r"),))
    assert dict(up) == {"Mcp-Session-Id": "s", "Mcp-Param-Region": "eu", "Accept": "a",
                        "Accept-Encoding": "identity", "X-Request-Id": "r"}
    down = client_response_headers(CIMultiDict([("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"),
                                                ("Mcp-Session-Id", "s"), ("Set-Cookie", "a=b"), ("Server", "x")]))
    assert dict(down) == {"Content-Type": "text/event-stream", "Mcp-Session-Id": "s"}


def test_header_decisions_are_remembered_per_spelling_within_bounds() -> None:
    """Each header name is decided once as spelled; asked again (from the memo, in any spelling, after junk names
    filled and cleared it) the answer is the same: the client's credential and forwarding claims never cross."""
    from proxy.edge import headers

    for round_ in range(3):
        junk = [(f"X-Junk-{round_}-{i}", "j") for i in range(headers._Crossing.MEMO + 5)]
        client = CIMultiDict([*junk, ("AUTHORIZATION", "Bearer t"), ("authorization", "Bearer u"), ("Cookie", "c"),
                              ("x-forwarded-for", "10.0.0.1"), ("Proxy-Authorization", "p"), ("Accept", "a")])
        up = upstream_request_headers(client)
        assert "Authorization" not in up and "Cookie" not in up and "X-Forwarded-For" not in up
        assert "Proxy-Authorization" not in up and up["Accept"] == "a" and len(up) == len(junk) + 2
        assert len(headers._UPSTREAM.seen) <= headers._Crossing.MEMO


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("localhost:8000", True), ("127.0.0.1", True), ("[::1]:9", True), ("LOCALHOST:1", True),
     ("localhost.evil:80", False), ("evil.com", False), ("", False), (None, False), ("[::1", False)],
)
def test_default_hosts(host: str | None, allowed: bool) -> None:
    assert default_policy(None, None).host_allowed(host) is allowed


def test_origin_patterns() -> None:
    policy = OriginPolicy(hosts=("mcp.example.com:443",), origins=("https://app.example.com", "http://dev:*"))
    assert policy.origin_allowed(None)
    assert policy.origin_allowed("https://app.example.com") and policy.origin_allowed("http://dev:3000")
    assert not policy.origin_allowed("http://app.example.com")  # scheme matters
    assert not policy.origin_allowed("https://app.example.com:8443")
    assert not policy.origin_allowed("https://app.example.com/path")
    assert policy.host_allowed("mcp.example.com:443") and not policy.host_allowed("mcp.example.com:444")
    public = default_policy("mcp.example.com", "https://mcp.example.com")
    assert public.host_allowed("mcp.example.com") and public.origin_allowed("https://mcp.example.com")


@pytest.mark.parametrize("pattern", ["*", "https://*", "https://*.example.com", "*://app.example.com", "null",
                                     "app.example.com", "https://app.example.com/", "https://app.example.com:99999",
                                     "https://app.example.com:", "https://a b", "https://", "http://[::1"])
def test_an_origin_setting_that_would_refuse_every_browser_is_refused_at_start(pattern: str) -> None:
    """Patterns that match no Origin a browser sends (`*` was accepted and then refused every browser) stop the
    start with one line naming the pattern and the syntax; a wildcard is not given the meaning "any origin": that
    would undo the DNS-rebinding protection."""
    from proxy.config import ConfigError, load

    with pytest.raises(ConfigError) as refused:
        load({"SCOPEGATE_UPSTREAM": "http://127.0.0.1:9/mcp", "SCOPEGATE_ALLOWED_ORIGINS": f"http://ok:*,{pattern}"},
             {})
    said = str(refused.value)
    assert said.startswith(f"SCOPEGATE_ALLOWED_ORIGINS: {pattern!r}: ") and "\n" not in said
    assert "scheme://host, scheme://host:port or scheme://host:*" in said
    assert ("wildcard" in said) == ("*" in pattern)


def test_origin_patterns_of_every_documented_form_are_accepted() -> None:
    from proxy.config import load

    patterns = ("https://app.example.com", "https://app.example.com:8443", "http://localhost:*", "http://[::1]:*",
                "chrome-extension://abcdefghijklmnop", "HTTPS://App.Example.com")
    config = load({"SCOPEGATE_UPSTREAM": "http://127.0.0.1:9/mcp", "SCOPEGATE_ALLOWED_ORIGINS": ",".join(patterns)},
                  {})
    assert config.origin_policy.origins == patterns
    assert config.origin_policy.origin_allowed("https://app.example.com")
    assert config.origin_policy.origin_allowed("http://[::1]:5173")


def test_origin_decisions_are_remembered_within_bounds_and_stay_right() -> None:
    """Each Host/Origin is decided once per policy; junk values cannot grow the memo, and asking again (from the
    memo) gives the same answer as the first time."""
    from proxy.origin import MEMO

    policy = OriginPolicy(hosts=("mcp.example.com",), origins=("https://app.example.com",))
    for i in range(MEMO * 2 + 7):
        assert not policy.host_allowed(f"junk{i}.example") and not policy.origin_allowed(f"https://junk{i}.example")
        assert len(policy._hosts_seen) <= MEMO and len(policy._origins_seen) <= MEMO
    for _ in range(2):
        assert policy.host_allowed("MCP.example.com:8443") and not policy.host_allowed("evil.example")
        assert policy.origin_allowed("https://app.example.com") and not policy.origin_allowed("https://evil.example")
    other = OriginPolicy(hosts=("evil.example",), origins=())
    assert other.host_allowed("evil.example") and not other.host_allowed("mcp.example.com")  # memo is per policy
