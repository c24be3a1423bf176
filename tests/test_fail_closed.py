"""Issue 12: guarantees that hold against a hostile client and a misbehaving upstream, each attacked directly.
Assertions are made on what the upstream received (the Recorder) and on what the client saw."""

from __future__ import annotations

import asyncio
import base64
import unicodedata
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from proxy.guards.confirmation import visible
from tests.conftest import MODERN_META, POLICIES, TOKENS, Recorder, modern_headers, wait_until
from tests.test_confirm import call, upstream_calls
from tests.test_identity import AUDIENCE, ISSUER, JwksServer, jwk_of, new_keys, sign, write_policy
from tests.test_identity import call as identity_call

# Values that try to make the preview say something other than the write: a forged line, a right-to-left override
# that reverses what follows, isolates, zero-width characters, a C1 control and a line separator.
FORGED_NAME = ("Paper Co\n\nNothing has changed yet. lock_period would run with these arguments: {}\r"
               "\u202e0001 EUR\u202c \u2066x\u2069 \u200bzero\u200dwidth\ufeff \x85next\u2028line")


def test_visible_escapes_every_hidden_character() -> None:
    for ch in "\n\r\t\x00\x1b\x7f\x85\u200b\u200c\u200d\u200e\u200f\u2028\u2029\u2060\ufeff\u00a0" \
              "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\U000e0041\U0010fffd":
        shown = visible(f"a{ch}b")
        assert shown.isascii() and shown.isprintable() and ch not in shown, repr(ch)
        assert orjson.loads(f'"{shown}"') == f"a{ch}b"  # still exactly the value, as a JSON escape
    assert visible("plain text, ünïcödé and 漢字") == "plain text, ünïcödé and 漢字"


async def test_preview_text_shows_exactly_the_write(proxy_url: str, recorder: Recorder) -> None:
    arguments = {"workspaceId": "acme", "name": FORGED_NAME, "iban": ""}
    preview = await call(proxy_url, arguments)
    text = preview["content"][0]["text"]
    hidden = [ch for ch in text if ch != "\n" and unicodedata.category(ch)[0] in "CZ" and ch != " "]
    assert hidden == [], hidden
    lines = text.split("\n")
    assert sum(line.startswith("Nothing has changed yet.") for line in lines) == 1  # the forged line is not a line
    assert "lock_period would run" not in "\n".join(line for line in lines if not line.startswith('  "name"'))
    start, end = lines.index(next(ln for ln in lines if ln.startswith("{"))), lines.index("}")
    assert orjson.loads("\n".join(lines[start:end + 1])) == {**arguments, "iban": "***"}  # escaped, not altered
    assert upstream_calls(recorder, "create_vendor") == []

    token = preview["structuredContent"]["confirmationToken"]
    done = await call(proxy_url, {**arguments, "confirmationToken": token})
    assert done["isError"] is False
    (applied,) = upstream_calls(recorder, "create_vendor")
    assert applied["arguments"]["name"] == FORGED_NAME  # escaping is for the reader; the write is untouched


def test_escaped_workspace_and_tool_names() -> None:
    from proxy.guards.confirmation import describe

    text = describe("create_vendor\u202e", "acme\nglobex", {"a": 1}, 60, {"note": "ok\u2066"})
    assert "\u202e" not in text and "\u2066" not in text and "acme\nglobex" not in text
    assert text.count("\n") == describe("create_vendor", "acme", {"a": 1}, 60, {"note": "ok"}).count("\n")




# --- 5. authentication never crashes -------------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _crafted(header: Any, payload: Any, signature: bytes = b"\0" * 64) -> str:
    return f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(payload))}.{_b64(signature)}"


CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": 9_999_999_999, "scope": "journal:read"}
CRAFTED = {
    "ES256 header, RSA key": _crafted({"alg": "ES256"}, CLAIMS),
    "EdDSA header, RSA key": _crafted({"alg": "EdDSA"}, CLAIMS),
    "RS256 header, wrong length signature": _crafted({"alg": "RS256"}, CLAIMS, b"\1" * 7),
    "kid is an object": _crafted({"alg": "RS256", "kid": {"a": 1}}, CLAIMS),
    "kid is a list": _crafted({"alg": "RS256", "kid": [1]}, CLAIMS),
    "alg is a list": _crafted({"alg": ["RS256"]}, CLAIMS),
    "payload is a list": _crafted({"alg": "RS256"}, [CLAIMS]),
    "header is a list": f"{_b64(b'[1]')}.{_b64(orjson.dumps(CLAIMS))}.AAAA",
    "not base64": "@@@.###.$$$",
    "not JSON": f"{_b64(b'nope')}.{_b64(b'nope')}.AAAA",
    "sub is an object": _crafted({"alg": "RS256"}, {**CLAIMS, "sub": {"x": 1}}),
    "exp is a string": _crafted({"alg": "RS256"}, {**CLAIMS, "exp": "soon"}),
    "scope is a number": _crafted({"alg": "RS256"}, {**CLAIMS, "scope": 7}),
    "huge header": _crafted({"alg": "RS256", "x": "a" * 5000}, CLAIMS),
    "non-ASCII": "sgp_\u00e9\u00e9\u00e9_" + "A" * 40,
    "spaces inside": "abc def.ghi",
    "alg carries text to log": _crafted({"alg": "sgp_0123456789ab_LOGGED" + "L" * 30}, CLAIMS),
    "kid carries text to log": _crafted({"alg": "RS256", "kid": "sgp_0123456789ab_LOGGED" + "L" * 30}, CLAIMS),
}


@pytest.mark.parametrize("key_alg", ["RS256", "ES256", "EdDSA"])
async def test_crafted_credentials_are_401_never_500(key_alg: str, start_proxy: Any, upstream: Any,
                                                     recorder: Recorder, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A PEM key file (no JWKS: nothing binds the token's `alg` to the key but the proxy) of each key type, and
    tokens whose header names another key type's algorithm, or that are malformed in every other way."""
    caplog.set_level("DEBUG")
    private = new_keys()[key_alg]
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = write_policy(tmp_path, "", issuers=[{"issuer": ISSUER, "public_key_file": str(pem), "audience": AUDIENCE,
                                                  "algorithms": ["RS256", "ES256", "EdDSA"]}])
    url = await start_proxy(upstream.url, policy=policy)
    others = {alg: _crafted({"alg": alg}, CLAIMS) for alg in ("RS256", "ES256", "EdDSA") if alg != key_alg}
    for case, token in {**CRAFTED, **others}.items():
        resp = await identity_call(url, token)
        assert resp.status == 401, (case, resp.status)
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"], case
    assert "LOGGED" not in _everything_logged(caplog)  # what a token carries is not logged
    good = sign(private, key_alg, kid=None)
    assert (await identity_call(url, good)).status == 200  # the key works for its own algorithm
    assert [r for r in recorder.received if r.method == "POST"] and all(
        "mallory" not in r.body.decode() for r in recorder.received)


async def test_crafted_kids_against_a_jwks_are_401(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                   tmp_path: Path) -> None:
    keys = new_keys()
    server = JwksServer()
    server.keys = [jwk_of(keys[alg], f"k-{alg}", alg) for alg in keys]
    await server.start()
    try:
        url = await start_proxy(upstream.url, policy=write_policy(tmp_path, server.url))
        for case, token in CRAFTED.items():
            assert (await identity_call(url, token)).status == 401, case
        mismatched = _crafted({"alg": "EdDSA", "kid": "k-ES256"}, CLAIMS)
        assert (await identity_call(url, mismatched)).status == 401
    finally:
        assert server.runner is not None
        await server.runner.cleanup()
    assert recorder.received == []


# --- 5. no exception reaches aiohttp's default 500 page; nothing from the request in the log ---------------------

SECRET_TOKEN = TOKENS["writer"]


async def explode_in_admission(request: Any, exchange: Any) -> None:
    raise ValueError(f"admission exploded on {request.headers['Authorization']}")


async def explode_in_guard(exchange: Any, message: dict) -> dict:
    raise ValueError(f"guard exploded on {message} with {SECRET_TOKEN}")


async def explode_in_hook(exchange: Any, status: int, headers: Any) -> None:
    raise RuntimeError(f"hook exploded with {SECRET_TOKEN}")


class ExplodingRewriter:
    methods = frozenset({"tools/call"})

    def __call__(self, exchange: Any, method: str, response: dict) -> dict:
        raise KeyError(f"rewriter exploded on {response} with {SECRET_TOKEN}")


def _everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    import logging

    formatter = logging.Formatter()
    out = []
    for record in caplog.records:
        out.append(record.getMessage())
        if record.exc_info:
            out.append(formatter.formatException(record.exc_info))
        if record.exc_text:
            out.append(record.exc_text)
    return "\n".join(out)


@pytest.mark.parametrize("step", ["admission", "guard", "hook", "rewriter"])
async def test_an_exception_in_any_step_is_a_json_rpc_500_and_logs_no_request_data(
        step: str, start_proxy: Any, upstream: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    from proxy.guards.pipeline import Pipeline

    pipeline = {"admission": Pipeline(admission=(explode_in_admission,)),
                "guard": Pipeline(guards=(explode_in_guard,)),
                "hook": Pipeline(response_hooks=(explode_in_hook,)),
                "rewriter": Pipeline(rewriters=(ExplodingRewriter(),))}[step]
    url = await start_proxy(upstream.url, pipeline=pipeline)
    marker = "arg-" + "7" * 20
    body = orjson.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "list_accounts", "arguments": {"workspaceId": marker}, "_meta": MODERN_META}})
    headers = {**modern_headers("tools/call", "list_accounts"), "X-Request-Id": "req-explode-1"}
    with caplog.at_level("DEBUG"):
        async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
            answer = await resp.read()
            assert resp.status == 500 and resp.headers["Content-Type"].startswith("application/json")
    payload = orjson.loads(answer)
    assert payload["error"]["code"] == -32603 and payload["error"]["data"] == {"requestId": "req-explode-1"}
    assert "Traceback" not in answer.decode() and "exploded" not in answer.decode()
    logged = _everything_logged(caplog)
    assert "req-explode-1" in str([getattr(r, "request_id", "") for r in caplog.records])  # it was logged...
    assert SECRET_TOKEN not in logged and marker not in logged and "exploded" not in logged  # ...without data
    if step in ("admission", "guard"):
        assert recorder.calls("tools/call") == []  # and nothing of it was forwarded


# --- 6. headers ----------------------------------------------------------------------------------------------------

async def test_forwarding_claims_never_reach_the_upstream(proxy_url: str, recorder: Recorder) -> None:
    claims = {"Forwarded": "for=10.0.0.1;host=admin.internal", "X-Forwarded-For": "10.0.0.1",
              "X-Forwarded-Host": "admin.internal", "X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/admin",
              "X-Real-IP": "10.0.0.1", "X-Fine": "kept"}
    async with aiohttp.ClientSession() as http, http.post(
            proxy_url, data=orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                          "params": {"_meta": MODERN_META}}),
            headers={**modern_headers("tools/list"), **claims}) as resp:
        assert resp.status == 200
    (received,) = recorder.posts()
    assert received.headers["x-fine"] == "kept"
    leaked = [name for name in received.headers if name in ("forwarded", "x-real-ip") or name.startswith("x-forwarded")]
    assert leaked == []


@pytest.mark.parametrize("spelling", ["X-App-Token", "x-app-token", "X_App_Token", "x_app-token", "X-APP_TOKEN"])
async def test_lookalikes_of_a_secret_header_are_refused(spelling: str, start_proxy: Any, upstream: Any,
                                                         recorder: Recorder) -> None:
    secret = "app-token-5e4d3c2b"
    url = await start_proxy(upstream.url, env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": secret})
    resp = await identity_call(url, TOKENS["writer"], {spelling: "attacker-chosen"})
    assert resp.status == 400
    assert recorder.received == []  # refused before anything was forwarded
    assert (await identity_call(url, TOKENS["writer"])).status == 200
    (received,) = recorder.received
    assert [(k, v) for k, v in received.headers.items() if k.replace("_", "-") == "x-app-token"] == [
        ("x-app-token", secret)]


async def test_metadata_only_for_allowed_hosts(proxy_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
            base = proxy_url.rsplit("/mcp", 1)[0]
            async with http.get(base + path, headers={"Host": "evil.example"}) as resp:
                assert resp.status == 403 and b"evil.example" not in await resp.read()
            async with http.get(base + path) as resp:
                assert resp.status == 200 and (await resp.json())["resource"].startswith("http://127.0.0.1:")


RAW_SECRET = "sgp_0123456789ab_" + "S" * 43  # looks like a PAT: it must never appear in a log


@pytest.mark.parametrize("raw", [
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + RAW_SECRET.encode() + b"\x01x\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + RAW_SECRET.encode() + b"\x00\r\n\r\n",
    b"POST /mcp?" + RAW_SECRET.encode() + b" HTTP/1.1 trailing\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /mcp " + RAW_SECRET.encode() + b"\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization Bearer " + RAW_SECRET.encode() + b"\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + RAW_SECRET.encode() + b"A" * 9000
    + b"\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + RAW_SECRET.encode() + b"\xff\xfe\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: " + RAW_SECRET.encode() + b"\r\n Folded: " + RAW_SECRET.encode()
    + b"\r\n\r\n",
], ids=["control char", "NUL", "bad request line", "no version", "no colon", "oversized", "not UTF-8", "folded"])
async def test_malformed_requests_put_no_header_in_any_log(raw: bytes, proxy_url: str, recorder: Recorder,
                                                           caplog: pytest.LogCaptureFixture,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    import asyncio

    port = int(proxy_url.split(":")[2].split("/")[0])
    with caplog.at_level("DEBUG"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
        await asyncio.sleep(0.05)  # let the server finish logging
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 401", b"HTTP/1.0 400")), answer[:80]
    out, err = capfd.readouterr()
    logged = _everything_logged(caplog) + out + err
    assert RAW_SECRET not in logged and "SSSSSSSS" not in logged
    assert recorder.received == []


# --- 2. every method that names a tool, prompt or resource is gated; resources carry workspaces -----------------

async def rpc(url: str, token: str, method: str, params: dict, name: str | None = None) -> tuple[int, Any]:
    """One 2026-07-28 request; a stream (a listen) is read up to its first event and closed."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 41, "method": method, "params": {**params, "_meta": MODERN_META}})
    headers = {**modern_headers(method, name), "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            first = await asyncio.wait_for(resp.content.readany(), 10)
            return resp.status, first.decode()
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else None


ACME, GLOBEX = "ledger://acme/chart-of-accounts", "ledger://globex/chart-of-accounts"
# method -> [(who, params, Mcp-Name, expected: "forwarded" | HTTP status of the refusal)]
GATE_CASES: dict[str, list[tuple[str, dict, str | None, Any]]] = {
    "tools/call": [
        ("none", {"name": "list_accounts", "arguments": {"workspaceId": "acme"}}, "list_accounts", 403),
        ("bound", {"name": "list_accounts", "arguments": {"workspaceId": "globex"}}, "list_accounts", "tool error"),
        ("bound", {"name": "list_accounts", "arguments": {}}, "list_accounts", "forwarded"),
    ],
    "prompts/get": [
        ("none", {"name": "reconcile_bank_transactions"}, "reconcile_bank_transactions", 403),
        ("bound", {"name": "reconcile_bank_transactions"}, "reconcile_bank_transactions", "forwarded"),
    ],
    "resources/read": [
        ("none", {"uri": ACME}, ACME, 403),
        ("bound", {"uri": GLOBEX}, GLOBEX, 403),
        ("bound", {"uri": "ledger://glob%65x/chart-of-accounts"}, "ledger://glob%65x/chart-of-accounts", 403),
        ("bound", {"uri": "ledger://%ff/chart-of-accounts"}, "ledger://%ff/chart-of-accounts", 403),
        ("bound", {"uri": ACME}, ACME, "forwarded"),
        ("bound", {"uri": 7}, None, 400),
    ],
    "resources/subscribe": [
        ("none", {"uri": ACME}, None, 403),
        ("bound", {"uri": GLOBEX}, None, 403),
        ("bound", {"uri": ACME}, None, "forwarded"),
    ],
    "resources/unsubscribe": [
        ("bound", {"uri": GLOBEX}, None, 403),
        ("bound", {"uri": ACME}, None, "forwarded"),
    ],
    "subscriptions/listen": [
        ("none", {"notifications": {"resourceSubscriptions": [ACME]}}, None, 403),
        ("bound", {"notifications": {"resourceSubscriptions": [ACME, GLOBEX]}}, None, 403),
        ("bound", {"notifications": {"toolsListChanged": True, "taskIds": ["t-1"]}}, None, 400),
        ("bound", {"notifications": {"resourceSubscriptions": "not a list"}}, None, 400),
        ("bound", {"notifications": {"resourceSubscriptions": [ACME], "toolsListChanged": True}}, None, "forwarded"),
    ],
    "completion/complete": [
        ("none", {"ref": {"type": "ref/prompt", "name": "reconcile_bank_transactions"},
                  "argument": {"name": "x", "value": ""}}, None, 403),
        ("none", {"ref": {"type": "ref/resource", "uri": "ledger://{workspaceId}/chart-of-accounts"},
                  "argument": {"name": "workspaceId", "value": ""}}, None, 403),
        ("bound", {"ref": {"type": "ref/other"}, "argument": {"name": "x", "value": ""}}, None, 400),
        ("bound", {"ref": {"type": "ref/resource", "uri": "ledger://{workspaceId}/chart-of-accounts"},
                   "argument": {"name": "workspaceId", "value": ""}}, None, "forwarded"),
    ],
}


def test_every_gated_method_has_its_cases() -> None:
    from proxy.guards.scope import GATED

    assert set(GATE_CASES) == set(GATED)


@pytest.mark.parametrize("method", sorted(GATE_CASES))
async def test_gated_method(method: str, start_proxy: Any, upstream: Any, recorder: Recorder, issue: Any) -> None:
    tokens = {"none": issue("nothing", scopes=[]), "bound": issue("bound", scopes=["mcp:read"], workspace="acme")}
    url = await start_proxy(upstream.url, pat_file=issue.path)
    for who, params, name, expected in GATE_CASES[method]:
        recorder.received.clear()
        status, answer = await rpc(url, tokens[who], method, params, name)
        reached = recorder.calls(method)
        if expected == "forwarded":
            assert len(reached) == 1, (method, params, status, answer)
            if method == "tools/call":
                assert reached[0]["params"]["arguments"]["workspaceId"] == "acme"  # injected
        elif expected == "tool error":
            assert status == 200 and answer["result"]["isError"] is True and reached == [], (params, answer)
        else:
            assert (status, reached) == (expected, []), (method, who, params, status, answer)
            # -32020: a request whose Mcp-Name cannot mirror its body (a uri that is no string) is refused at the edge
            assert answer["error"]["code"] in (-32003, -32602, -32020)


def test_workspace_segment_in_resource_rules(tmp_path: Path) -> None:
    from proxy.policy.decide import Rules
    from proxy.policy.model import PolicyError, load_policy

    rules = Rules(load_policy(POLICIES / "pat-workspaces.yaml"))
    assert rules.resource_workspace(ACME) == (True, "acme")
    assert rules.resource_workspace("ledger://glob%65x/chart-of-accounts") == (True, "globex")  # as the SDK reads it
    assert rules.resource_workspace("ledger://%ff/chart-of-accounts") == (True, None)  # undecodable: refused
    assert rules.resource_workspace("ledger://a/b/chart-of-accounts") == (False, None)  # one segment only: no rule
    for bad in ('{match: "ledger://{workspace}/{workspace}", scopes: []}', '{match: "ledger://{ws}/x", scopes: []}'):
        path = tmp_path / "p.yaml"
        path.write_text(f"version: 1\nresources:\n  - {bad}\n")
        with pytest.raises(PolicyError, match="braces"):
            load_policy(path)
    path.write_text('version: 1\ntools:\n  - {match: "x_{workspace}", scopes: []}\n')
    with pytest.raises(PolicyError, match="braces"):
        load_policy(path)


# --- 1. workspace boundaries never depend on learned state ---------------------------------------------------------

def test_only_a_parsed_notification_is_a_change() -> None:
    from proxy.guards.catalog import Catalog

    catalog = Catalog(None)
    for message in ({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"text": "notifications/tools/list_changed"}]}},
                    {"jsonrpc": "2.0", "id": 2, "method": "notifications/tools/list_changed"},  # a request, not one
                    {"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"},
                    {"jsonrpc": "2.0", "method": "log", "params": {"m": "notifications/tools/list_changed"}}):
        catalog.saw(message)
    assert catalog.changes == 0
    catalog.saw({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert catalog.changes == 1


async def test_catalog_single_flight_bounded_wait_and_refusal() -> None:
    from proxy.guards.catalog import Catalog, CatalogUnavailable

    calls: list[int] = []
    gate = asyncio.Event()

    async def fetch() -> list[Any]:
        calls.append(1)
        await gate.wait()
        return [{"name": "t", "inputSchema": {"properties": {"workspaceId": {"x-mcp-header": "Workspace"}}}}]

    catalog = Catalog(fetch, wait=2.0)
    waiters = [asyncio.create_task(catalog.facts("t")) for _ in range(20)]
    await asyncio.sleep(0.05)
    catalog.saw({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})  # a change while fetching
    gate.set()
    results = await asyncio.gather(*waiters)
    assert all(r is not None and r.properties == {"workspaceId": "Workspace"} for r in results)
    assert len(calls) == 2  # one shared fetch, and one more because the tools changed while it ran

    async def failing() -> list[Any]:
        raise aiohttp.ClientConnectionError("down")

    async def hanging() -> list[Any]:
        await asyncio.Event().wait()
        return []

    for broken in (failing, hanging):
        with pytest.raises(CatalogUnavailable):
            await Catalog(broken, wait=0.2).facts("t")
    with pytest.raises(CatalogUnavailable):
        await Catalog(None).facts("t")


def _undeclared(name: str, tmp_path: Path) -> str:
    """The example policy as it shipped before: no `workspace:` anywhere, so the upstream's schema decides."""
    import yaml

    policy = yaml.safe_load((POLICIES / f"{name}.yaml").read_text())
    for rule in policy["tools"]:
        rule.pop("workspace", None)
    path = tmp_path / f"{name}-undeclared.yaml"
    path.write_text(orjson.dumps(policy).decode())
    return str(path)


DELEGATED = {"ledger-scopes": ["journal:read", "payables:write"], "app-token": ["store:read", "store:write"]}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("name", sorted(DELEGATED))
async def test_fresh_proxy_checks_workspaces_of_delegated_tools(name: str, mode: str, start_proxy: Any,
                                                                upstream: Any, recorder: Recorder, issue: Any,
                                                                tmp_path: Path) -> None:
    """No list was ever seen by this proxy: a bound credential still cannot act in another workspace."""
    from tests.conftest import sdk_client

    bound = issue("bound", scopes=DELEGATED[name], workspace="acme")
    env = {"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": "app-token-1"} if name == "app-token" else {}
    url = await start_proxy(upstream.url, policy=_undeclared(name, tmp_path), pat_file=issue.path, env=env)
    async with sdk_client(url, mode, token=bound) as client:  # no list_tools: straight to the calls
        refused = await client.call_tool("list_accounts", {"workspaceId": "globex"})
        assert refused.is_error and "bound to workspace 'acme'" in refused.content[0].text
        write = await client.call_tool("create_vendor", {"workspaceId": "globex", "name": "x"})
        assert write.is_error and "bound to workspace 'acme'" in write.content[0].text
        ok = await client.call_tool("list_accounts", {})
        assert ok.structured_content["workspaceId"] == "acme"
    assert [c["params"]["arguments"] for c in recorder.calls("tools/call")] == [{"workspaceId": "acme"}]
    fetched = [r for r in recorder.catalog if r.method == "POST"]
    assert fetched and all(r.headers.get("x-app-token") == env.get("SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN")
                           and "authorization" not in r.headers for r in fetched)  # its own headers only


async def test_an_echoed_notice_string_changes_nothing(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                       issue: Any, tmp_path: Path) -> None:
    from proxy.edge.app import FORWARDER
    from tests.conftest import sdk_client

    bound = issue("bound", scopes=DELEGATED["ledger-scopes"] + ["periods:read"], workspace="acme")
    url = await start_proxy(upstream.url, policy=_undeclared("ledger-scopes", tmp_path), pat_file=issue.path)
    catalog = start_proxy.runners[-1].app[FORWARDER].pipeline.upstream_watches[0].__self__
    async with sdk_client(url, "legacy", token=bound) as client:
        assert (await client.call_tool("list_accounts", {})).structured_content["workspaceId"] == "acme"
        assert await wait_until(lambda: catalog.changes == 1)  # its own listen stream opened (counts as a change)
        await client.call_tool("list_accounts", {})  # and the catalog is fresh again
        changes, fetches = catalog.changes, catalog.fetches
        echoed = await client.call_tool("get_period_status", {"period": "notifications/tools/list_changed"})
        assert echoed.structured_content["period"] == "notifications/tools/list_changed"  # it passed the relay
        refused = await client.call_tool("list_accounts", {"workspaceId": "globex"})
        assert refused.is_error
    assert (catalog.changes, catalog.fetches) == (changes, fetches) and catalog.fresh()


async def test_no_schema_no_decision_503(start_proxy: Any, recorder: Recorder, issue: Any, tmp_path: Path) -> None:
    """An upstream whose tools/list fails (only the proxy's own asks fail here): delegated calls wait, then 503;
    nothing is forwarded unchecked."""
    from proxy.demo.event_store import resumable_app
    from proxy.demo.ledger import build_server
    from tests.conftest import ThreadedServer, free_port

    inner = Recorder(resumable_app(build_server()))

    async def broken_lists(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"x-request-id", b"scopegate-catalog") in scope["headers"]:
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await inner(scope, receive, send)

    port = free_port()
    server = ThreadedServer(broken_lists, port)
    server.start()
    try:
        bound = issue("bound", scopes=DELEGATED["ledger-scopes"], workspace="acme")
        url = await start_proxy(f"http://127.0.0.1:{port}/mcp", policy=_undeclared("ledger-scopes", tmp_path),
                                pat_file=issue.path)
        status, answer = await rpc(url, bound, "tools/call", {"name": "list_accounts",
                                                              "arguments": {"workspaceId": "globex"}}, "list_accounts")
        assert status == 503 and answer["error"]["code"] == -32603
        assert inner.calls("tools/call") == []
        explicit = await start_proxy(f"http://127.0.0.1:{port}/mcp", policy=str(POLICIES / "ledger-scopes.yaml"),
                                     pat_file=issue.path)  # `workspace:` said: no schema needed (2025-11-25 too)
        status, answer = await rpc(explicit, bound, "prompts/get", {"name": "process_incoming_invoice"},
                                   "process_incoming_invoice")
        assert status == 403  # decided by the policy alone, as before
    finally:
        server.stop()


def paged_legacy_upstream() -> Any:
    """A 2025-11-25-only MCP server (official SDK, low level) whose tools/list comes in three pages; the one
    workspace-scoped tool is on the last page."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    pages = [[f"tool_{page}_{i}" for i in range(3)] for page in range(3)]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        page = int(params.cursor) if params is not None and params.cursor else 0
        tools = [types.Tool(name=name, input_schema={"type": "object", "properties": {
            "workspaceId" if name == "tool_2_2" else "note": {"type": "string"}}}) for name in pages[page]]
        return types.ListToolsResult(tools=tools, next_cursor=str(page + 1) if page < 2 else None)

    async def call_tool(ctx: Any, params: Any) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=orjson.dumps(params.arguments).decode())])

    app = Server("paged", on_list_tools=list_tools, on_call_tool=call_tool).streamable_http_app()

    async def legacy_only(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"mcp-protocol-version", b"2026-07-28") in scope["headers"]:
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Unsupported protocol version"}}'
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return legacy_only


async def test_all_pages_in_its_own_legacy_session(start_proxy: Any, issue: Any, tmp_path: Path) -> None:
    from tests.conftest import ThreadedServer, free_port, sdk_client

    recorder = Recorder(paged_legacy_upstream())
    port = free_port()
    server = ThreadedServer(recorder, port)
    server.start()
    try:
        path = tmp_path / "paged.yaml"
        path.write_text(orjson.dumps({"version": 1, "scopes": ["r"], "tools": [{"match": "*", "scopes": ["r"]}]})
                        .decode())
        bound = issue("bound", scopes=["r"], workspace="acme")
        url = await start_proxy(f"http://127.0.0.1:{port}/mcp", policy=str(path), pat_file=issue.path)
        async with sdk_client(url, "legacy", token=bound) as client:
            refused = await client.call_tool("tool_2_2", {"workspaceId": "globex"})
            assert refused.is_error and "bound to workspace 'acme'" in refused.content[0].text
            injected = await client.call_tool("tool_2_2", {})
            assert orjson.loads(injected.content[0].text) == {"workspaceId": "acme"}
            plain = await client.call_tool("tool_0_0", {"note": "n"})
            assert orjson.loads(plain.content[0].text) == {"note": "n"}
            client_session = next(r.headers["mcp-session-id"] for r in recorder.received if r.method == "POST"
                                  and "mcp-session-id" in r.headers)
        first, *rest = [r for r in recorder.catalog if r.method == "POST"]
        assert first.headers["mcp-protocol-version"] == "2026-07-28" and first.headers["mcp-method"] == "tools/list"
        own = [(r.json().get("method"), r.json().get("params", {}).get("cursor"), r.headers.get("mcp-session-id"))
               for r in rest]  # refused, so asked again in 2025-11-25:
        assert [m for m, _, _ in own][:2] == ["initialize", "notifications/initialized"]
        pages = [(cursor, session) for method, cursor, session in own if method == "tools/list"]
        assert [cursor for cursor, _ in pages] == [None, "1", "2"]
        assert len({session for _, session in pages}) == 1 and pages[0][1] not in (None, client_session)
        assert [c["params"]["arguments"] for c in recorder.calls("tools/call")] == [{"workspaceId": "acme"},
                                                                                     {"note": "n"}]
        await start_proxy.runners.pop().cleanup()  # shutting down ends the proxy's own session
        (ended,) = [r for r in recorder.catalog if r.method == "DELETE"]
        assert ended.headers["mcp-session-id"] == pages[0][1]
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_resource_lists_show_only_readable_workspaces(mode: str, start_proxy: Any, upstream: Any,
                                                            recorder: Recorder, issue: Any) -> None:
    from tests.conftest import sdk_client

    bound = issue("bound", scopes=["mcp:read"], workspace="acme")
    everyone = issue("everyone", scopes=["mcp:read"])
    url = await start_proxy(upstream.url, pat_file=issue.path)
    async with sdk_client(url, mode, token=bound) as client:
        assert [str(r.uri) for r in (await client.list_resources()).resources] == [ACME]
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["ledger://{workspaceId}/chart-of-accounts"]
        assert "Bank" in (await client.read_resource(ACME)).contents[0].text
    async with sdk_client(url, mode, token=everyone) as client:
        assert sorted(str(r.uri) for r in (await client.list_resources()).resources) == [ACME, GLOBEX]


async def test_listen_with_the_sdk_client(start_proxy: Any, recorder: Recorder, issue: Any,
                                          tmp_path: Path) -> None:
    """2026-07-28 subscriptions/listen from the official client: another workspace's resource is refused; an own
    listen is acknowledged, and the tools/list_changed it carries (a parsed notification) makes the proxy fetch
    its catalog again before the next delegated decision."""
    from mcp.shared.exceptions import MCPError

    from proxy.demo.event_store import MemoryEventStore
    from proxy.demo.ledger import build_server
    from proxy.edge.app import FORWARDER
    from tests.conftest import ThreadedServer, free_port, sdk_client

    port = free_port()
    own = ThreadedServer(build_server().streamable_http_app(event_store=MemoryEventStore()), port)
    own.start()
    try:
        bound = issue("bound", scopes=["mcp:read"], workspace="acme")
        path = tmp_path / "listen.yaml"
        path.write_text(orjson.dumps({"version": 1, "scopes": ["mcp:read"], "tools": [
            {"match": "list_*", "scopes": ["mcp:read"]}, {"match": "enable_payroll_module", "scopes": ["mcp:read"]}],
            "resources": [{"match": "ledger://{workspace}/chart-of-accounts", "scopes": ["mcp:read"]}]}).decode())
        url = await start_proxy(f"http://127.0.0.1:{port}/mcp", policy=str(path), pat_file=issue.path)
        catalog = start_proxy.runners[-1].app[FORWARDER].pipeline.upstream_watches[0].__self__
        async with sdk_client(url, "auto", token=bound) as client:
            with pytest.raises(MCPError):
                async with client.listen(resource_subscriptions=[GLOBEX]):
                    pass
            assert (await client.call_tool("list_accounts", {})).structured_content["workspaceId"] == "acme"
            async with client.listen(tools_list_changed=True, resource_subscriptions=[ACME]) as sub:
                assert sub.honored.resource_subscriptions == [ACME]
                changes = catalog.changes
                await client.call_tool("enable_payroll_module", {})
                event = await asyncio.wait_for(sub.__anext__(), 10)
                assert type(event).__name__ == "ToolsListChanged"
            assert catalog.changes > changes and not catalog.fresh()
            result = await client.call_tool("list_payslips", {"month": "2026-10"})
            assert result.structured_content["workspaceId"] == "acme"
    finally:
        own.stop()


async def test_its_own_listen_stream_hears_a_2026_change(start_proxy: Any, issue: Any, tmp_path: Path) -> None:
    """A 2026-07-28 upstream says its tools changed only on listen streams: no client listens here, and the proxy
    still hears it on its own, and fetches again before the next delegated decision."""
    from proxy.demo.event_store import MemoryEventStore
    from proxy.demo.ledger import build_server
    from proxy.edge.app import FORWARDER
    from tests.conftest import ThreadedServer, free_port, sdk_client, wait_until

    recorder = Recorder(build_server().streamable_http_app(event_store=MemoryEventStore()))
    port = free_port()
    own = ThreadedServer(recorder, port)
    own.start()
    try:
        bound = issue("bound", scopes=["mcp:read"], workspace="acme")
        path = tmp_path / "modern.yaml"
        path.write_text(orjson.dumps({"version": 1, "scopes": ["mcp:read"], "tools": [
            {"match": "list_*", "scopes": ["mcp:read"]}, {"match": "enable_payroll_module", "scopes": ["mcp:read"]}]})
            .decode())
        url = await start_proxy(f"http://127.0.0.1:{port}/mcp", policy=str(path), pat_file=issue.path)
        catalog = start_proxy.runners[-1].app[FORWARDER].pipeline.upstream_watches[0].__self__
        async with sdk_client(url, "auto", token=bound) as client:
            assert (await client.call_tool("list_accounts", {})).structured_content["workspaceId"] == "acme"
            assert await wait_until(lambda: any(r.json().get("method") == "subscriptions/listen"
                                                for r in recorder.catalog if r.method == "POST"), 10)
            assert await wait_until(lambda: catalog.changes == 1)  # opening it counts: a notice may be missed
            await client.call_tool("list_accounts", {})  # fetched again
            await client.call_tool("enable_payroll_module", {})  # a modern call: nothing on its own stream
            assert await wait_until(lambda: catalog.changes == 2)  # heard on the proxy's own listen stream
            result = await client.call_tool("list_payslips", {"month": "2026-10", "workspaceId": "globex"})
            assert result.is_error and "bound to workspace 'acme'" in result.content[0].text
        assert "list_payslips" in catalog.tools
        assert recorder.calls("tools/call")[-1]["params"]["name"] == "enable_payroll_module"
        await start_proxy.runners.pop().cleanup()  # closes its listen stream, so the upstream can stop at once
    finally:
        own.stop()
