"""The filtered-list cache: a hit is exactly what the whole path makes, for every caller, and never another's.

Unit tests of the byte-level recogniser and of `ListFilter.raw` (pure: no server), then the same through the proxy
in front of the demo ledger with the SDK client in both modes, two credentials taking turns on the same upstream
bytes.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from proxy.edge.app import FORWARDER
from proxy.exchange import Exchange
from proxy.guards.list_filter import ListCache, ListFilter
from proxy.identity.principal import Principal
from proxy.jsonrpc import recognise_response, splice_response
from proxy.policy.decide import Rules
from proxy.policy.model import load_policy
from proxy.policy.reload import LivePolicy
from tests.conftest import MODES, TOKENS, sdk_client

POLICY = """version: 1
scopes: [a, b, c, w]
default: annotations
read_scope: a
write_scope: w
hide_bound_workspace: true
tools:
  - {match: "alpha_*", scopes: [a]}
  - {match: "beta_*", scopes: [b], effect: write}
  - {match: "gamma_*", scopes: [a, c], effect: write, confirm: human}
  - {match: "gamma_2*", scopes: [c], effect: write, confirm: human, fallback: token}
prompts:
  - {match: "p_*", scopes: [b]}
resources:
  - {match: "ledger://{workspace}/*", scopes: [c]}
  - {match: "file:///*", scopes: [a]}
"""

SCOPES = ["a", "b", "c", "w"]
VERSIONS = [None, "2025-11-25", "2026-07-28"]


def _tool(name: str, read_only: bool, with_output: bool) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": name, "description": f"{name} does a thing",
        "inputSchema": {"type": "object", "properties": {"workspaceId": {"type": "string"}, "n": {"type": "integer"}},
                        "required": ["workspaceId", "n"]},
        "annotations": {"readOnlyHint": read_only},
    }
    if with_output:
        tool["outputSchema"] = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    return tool


TOOLS = [_tool(f"{prefix}_{i}", i % 2 == 0, i % 3 == 0)
         for prefix in ("alpha", "beta", "gamma", "delta") for i in range(12)]
LISTS = {
    "tools/list": {"tools": TOOLS, "nextCursor": "page2"},
    "prompts/list": {"prompts": [{"name": f"p_{i}"} for i in range(5)] + [{"name": "q_1"}]},
    "resources/list": {"resources": [{"uri": f"ledger://{w}/a", "name": w} for w in ("acme", "globex", "initech")]
                       + [{"uri": "file:///etc", "name": "b"}]},
    "resources/templates/list": {"resourceTemplates": [{"uriTemplate": "ledger://{w}/a", "name": "t"}]},
}


@pytest.fixture
def live(tmp_path: Path) -> LivePolicy:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    policy = load_policy(path)
    return LivePolicy(policy, Rules(policy))


def _principal(name: str, scopes: tuple[str, ...], bound: str | None = None,
               workspaces: frozenset[str] | None = None, permissions: dict[str, str] | None = None) -> Principal:
    return Principal(subject=name, credential_id=name, label=name, kind="pat", scopes=frozenset(scopes),
                     bound_workspace=bound, workspaces=workspaces, permissions=permissions or {})


# What a credential says about workspaces: user-scoped, bound, a set of workspaces, one workspace denied.
REACH: list[dict[str, Any]] = [{}, {"bound": "acme"}, {"workspaces": frozenset({"globex"})},
                               {"permissions": {"acme": "none"}}]


def _callers() -> list[tuple[Principal, str | None]]:
    """Every scope subset, in each of the workspace reaches, in every protocol version: 192 callers."""
    out = []
    for n in range(len(SCOPES) + 1):
        for scopes in itertools.combinations(SCOPES, n):
            for reach in REACH:
                for version in VERSIONS:
                    out.append((_principal(f"{scopes}-{reach}-{version}", scopes, **reach), version))
    return out


def _exchange(principal: Principal, version: str | None) -> Exchange:
    return Exchange("t", None, version, CIMultiDict(), principal=principal)


def _whole_path(live: LivePolicy, exchange: Exchange, method: str, body: bytes) -> Any:
    """What the filter makes with nothing cached: parse the whole body, filter it."""
    return ListFilter(live, ListCache(0))(exchange, orjson.loads(body), method)


@pytest.mark.parametrize("data, msg_id, result", [
    (b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}', 1, b'{"tools":[]}'),
    (b'{"jsonrpc":"2.0","id":"7","result":{}}', "7", b"{}"),
    (b'{"result":{"x":{"id":5}},"jsonrpc":"2.0","id":3}', 3, b'{"x":{"id":5}}'),
    (b'{"id":-2,"result":[],"jsonrpc":"2.0"}', -2, b"[]"),
    (b' \r\n{ "jsonrpc" : "2.0" ,\t"id" : 0 , "result" : {"a":"}"} }\n', 0, b' {"a":"}"} '),
])
def test_recognised_responses(data: bytes, msg_id: Any, result: bytes) -> None:
    found = recognise_response(data)
    assert found is not None and found.msg_id == msg_id and type(found.msg_id) is type(msg_id)
    assert found.result == result
    assert orjson.loads(splice_response(found.msg_id, result)) == orjson.loads(data)


NOT_PLAIN = [
    b'{"jsonrpc":"2.0","id":1,"result":{},"id":2}',  # a repeated id: the last one wins in a parser
    b'{"jsonrpc":"2.0","id":1,"id":2,"result":{}}',
    b'{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"result":{}}',
    b'{"jsonrpc":"2.0","id":1,"result":{},"extra":1}',  # another member (split off, R is then not JSON)
    b'{"jsonrpc":"2.0","id":1,"result":{},"result":{}}',
    b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}',
    b'{"jsonrpc":"1.0","id":1,"result":{}}',
    b'{"id":1,"result":{}}',
    b'{"jsonrpc":"2.0","id":1.5,"result":{}}',  # "1.5" vs 1.5 and other ids: the whole path
    b'{"jsonrpc":"2.0","id":"a\\"b","result":{}}',
    b'{"jsonrpc":"2.0","id":null,"result":{}}',
    b'{"jsonrpc":"2.0","id":"\xff","result":{}}',  # not UTF-8
    b'[{"jsonrpc":"2.0","id":1,"result":{}}]',  # a batch
    b'{"jsonrpc":"2.0","id":1,"result":{}',
    b'{"jsonrpc":"2.0","id":1,"result":{"a":1},"id":1}',
    b'{"jsonrpc":"2.0","result":{"a":[1,"id":1]},"id":2}',
    b"",
]


def _never_misread(data: bytes) -> bool:
    """The recogniser's promise: when what it split off as the result is one JSON value, the text is exactly
    that response (the whole parse agrees); otherwise the caller takes the whole path."""
    found = recognise_response(data)
    if found is None:
        return True
    try:
        message = found.message()
    except orjson.JSONDecodeError:
        return True
    return orjson.loads(data) == message and type(orjson.loads(data)["id"]) is type(found.msg_id)


@pytest.mark.parametrize("data", NOT_PLAIN)
def test_not_plainly_a_response(data: bytes) -> None:
    found = recognise_response(data)
    if found is not None:  # split, but its result is not one JSON value: the caller parses the whole text
        with pytest.raises(orjson.JSONDecodeError):
            found.message()
    assert _never_misread(data)


def test_mangled_responses_are_never_misread() -> None:
    """Random edits (bytes dropped, repeated, members inserted) of real responses: never a wrong split."""
    rng = random.Random(7)
    pieces = [b',"id":9', b',"jsonrpc":"2.0"', b'"result":{}', b"}", b"{", b'"', b",", b"\\", b" ", b'"id":"x"']
    bases = [orjson.dumps({"jsonrpc": "2.0", "id": i, "result": r}) for i, r in enumerate(LISTS.values())]
    bases += [orjson.dumps({"result": {"x": [1, {"id": 3}]}, "id": "s", "jsonrpc": "2.0"})]
    for _ in range(4000):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                data[at:at] = rng.choice(pieces)
            else:
                del data[at : at + rng.randint(1, 3)]
        assert _never_misread(bytes(data)), bytes(data)


def test_a_hit_is_the_whole_path_for_every_caller(live: LivePolicy) -> None:
    """192 callers x 4 list methods, each asked twice in shuffled turns on the same upstream bytes: every answer is
    what the whole path makes for that caller, although every second answer comes from the cache."""
    listing = ListFilter(live)
    made = 0
    original = ListFilter.__call__

    def counting(self: ListFilter, *args: Any) -> Any:
        nonlocal made
        made += 1
        return original(self, *args)

    asks = [(c, m) for c in _callers() for m in LISTS] * 2
    random.Random(16).shuffle(asks)
    ListFilter.__call__ = counting  # type: ignore[method-assign]
    try:
        for n, ((principal, version), method) in enumerate(asks):
            body = orjson.dumps({"jsonrpc": "2.0", "id": n, "result": LISTS[method]})
            exchange = _exchange(principal, version)
            found = recognise_response(body)
            assert found is not None
            got = orjson.loads(splice_response(found.msg_id, listing.raw(exchange, found, method)))
            ListFilter.__call__ = original  # type: ignore[method-assign]
            expected = _whole_path(live, exchange, method, body)
            ListFilter.__call__ = counting  # type: ignore[method-assign]
            assert got == expected, (principal.scopes, principal.bound_workspace, version, method)
    finally:
        ListFilter.__call__ = original  # type: ignore[method-assign]
    # Filtered once per distinct key, every other ask a hit: 16 scope sets x 3 versions x 4 reaches, for each of
    # the 4 methods (any result may hold any kind of list, so every key holds every fact a list kind reads).
    assert made == len(listing.cache) == 16 * 3 * 4 * 4


def test_another_callers_list_is_never_served(live: LivePolicy) -> None:
    """Same upstream bytes, two credentials that differ in one thing each time: scopes, bound workspace, protocol."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": LISTS["tools/list"]})
    found = recognise_response(body)
    assert found is not None
    pairs = [
        ((_principal("x", ("a", "b", "c", "w"), None), "2026-07-28"), (_principal("y", ("a",), None), "2026-07-28")),
        ((_principal("x", ("a", "c"), None), "2026-07-28"), (_principal("y", ("a", "c"), "acme"), "2026-07-28")),
        ((_principal("x", ("a",), None), "2026-07-28"), (_principal("y", ("a",), None), "2025-11-25")),
    ]
    resources = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": LISTS["resources/list"]})
    reaches = [(_principal("x", ("c",)), _principal("y", ("c",), bound="globex")),
               (_principal("x", ("c",), workspaces=frozenset({"acme"})),
                _principal("y", ("c",), workspaces=frozenset({"globex"}))),
               (_principal("x", ("c",)), _principal("y", ("c",), permissions={"acme": "none"}))]
    cases = [("tools/list", body, first, second) for first, second in pairs]
    cases += [("resources/list", resources, (x, None), (y, None)) for x, y in reaches]
    for method, data, first, second in cases:
        found = recognise_response(data)
        assert found is not None
        listing = ListFilter(live)
        seen_first = orjson.loads(listing.raw(_exchange(*first), found, method))
        seen_second = orjson.loads(listing.raw(_exchange(*second), found, method))
        assert seen_first != seen_second
        assert seen_second == _whole_path(live, _exchange(*second), method, data)["result"]


def test_the_same_bytes_as_another_list_method(live: LivePolicy) -> None:
    """One upstream result holding every kind of list, answering different methods: each is filtered as its own."""
    everything = {key: value for result in LISTS.values() for key, value in result.items()}
    found = recognise_response(orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": everything}))
    assert found is not None
    caller = _exchange(_principal("x", ("a", "b"), None), None)
    listing = ListFilter(live)
    for method in LISTS:
        got = orjson.loads(listing.raw(caller, found, method))
        assert got == _whole_path(live, caller, method, splice_response(1, found.result))["result"], method


def test_a_policy_reload_empties_the_cache(live: LivePolicy, tmp_path: Path) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": LISTS["tools/list"]})
    found = recognise_response(body)
    assert found is not None
    caller = _exchange(_principal("x", ("a",), None), None)
    listing = ListFilter(live)
    before = {t["name"] for t in orjson.loads(listing.raw(caller, found, "tools/list"))["tools"]}
    assert "alpha_1" in before
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(POLICY.replace('{match: "alpha_*", scopes: [a]}', '{match: "alpha_*", scopes: [b]}'))
    policy = load_policy(stricter)
    live.policy, live.rules = policy, Rules(policy)
    after = {t["name"] for t in orjson.loads(listing.raw(caller, found, "tools/list"))["tools"]}
    assert not any(name.startswith("alpha_") for name in after)
    assert len(listing.cache) == 1


def test_the_cache_is_bounded_by_bytes_oldest_out(live: LivePolicy) -> None:
    cache = ListCache(limit_bytes=1000)
    rules = live.rules
    cache.get(rules, ("m", b"0", frozenset(), None, False))  # binds it to the policy in force
    for n in range(50):
        cache.put(rules, ("m", str(n).encode(), frozenset(), None, False), b"x" * 100)
    assert cache.size <= 1000 and len(cache) == 10
    assert cache.get(rules, ("m", b"49", frozenset(), None, False)) is not None
    assert cache.get(rules, ("m", b"0", frozenset(), None, False)) is None
    cache.put(rules, ("m", b"big", frozenset(), None, False), b"x" * 300)  # more than a quarter: not kept
    assert cache.get(rules, ("m", b"big", frozenset(), None, False)) is None


def test_list_changed_forgets(live: LivePolicy) -> None:
    listing = ListFilter(live)
    found = recognise_response(orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": LISTS["prompts/list"]}))
    assert found is not None
    listing.raw(_exchange(_principal("x", ("b",), None), None), found, "prompts/list")
    assert len(listing.cache) == 1
    listing.saw({"jsonrpc": "2.0", "id": 3, "method": "notifications/tools/list_changed"})  # not a notification
    listing.saw({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"})
    assert len(listing.cache) == 1
    listing.saw({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert len(listing.cache) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_two_credentials_take_turns_through_the_proxy(start_proxy: Any, upstream: Any, recorder: Any,
                                                            mode: str) -> None:
    """The demo ledger's real lists, a writer and a workspace-bound reader in turns: each sees on every turn what
    it saw on its first (the whole path), the two differ, and the later turns were served from the cache."""
    url = await start_proxy(upstream.url)
    listing = next(r for r in start_proxy.runners[-1].app[FORWARDER].pipeline.rewriters if isinstance(r, ListFilter))
    seen: dict[str, list[list[dict[str, Any]]]] = {"writer": [], "reader": []}
    for _ in range(3):
        for name in seen:
            async with sdk_client(url, mode, token=TOKENS[name]) as client:
                tools = (await client.list_tools()).tools
                seen[name].append(sorted((t.model_dump(by_alias=True, exclude_none=True) for t in tools),
                                         key=lambda t: t["name"]))
    for name, turns in seen.items():
        assert turns[0] and all(turn == turns[0] for turn in turns), name
    writer, reader = ({t["name"] for t in seen[n][0]} for n in ("writer", "reader"))
    assert "create_journal_entry" in writer - reader  # a write: the reader holds mcp:read only
    assert (listing.cache.misses, listing.cache.hits) == (2, 4)  # made once per caller, then reused
