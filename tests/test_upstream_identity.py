"""The caller's identity reaches the upstream (policy `upstream_identity:`): a signed assertion on every forwarded
request, verified where it lands.

End to end: the demo ledger (official SDK) behind `verify_identity`, which checks each assertion against scopegate's
JWKS as a real upstream would and records who acted on each entry and vendor; the official Python SDK client in both
protocol modes through scopegate. The recorder keeps what the upstream received, so every claim is checked on the
token that arrived. Unit tests cover the pure parts (claims, reuse, padding, configuration)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import jwt
import mcp_types as types
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Config, ConfigError
from proxy.demo.event_store import resumable_app
from proxy.demo.ledger import IdentityCheck, Ledger, build_server, verify_identity
from proxy.demo.run import free_port
from proxy.edge.app import OPS_PORT, start
from proxy.exchange import Exchange, WorkspaceFact
from proxy.identity.assertion import DEFAULT_HEADER, Assertions, Settings, header_problem
from proxy.identity.loader import load_identity
from proxy.identity.oauth.keys import KeyRing, signing_key
from proxy.identity.principal import Principal
from proxy.policy.decide import Decision
from proxy.policy.model import PolicyError, load_policy
from tests.conftest import MODERN_META, MODES, POLICIES, TOKENS, Recorder, ThreadedServer, modern_headers

HEADER = DEFAULT_HEADER
VENDOR = {"workspaceId": "acme", "name": "Paper Co", "iban": "DE00 1234"}
ENTRY = {"workspaceId": "acme", "date": "2026-10-31", "memo": "supplies",
         "lines": [{"account": "6000", "debit": 120}, {"account": "1000", "credit": 120}]}
READ = Decision(True, "tool", "list_accounts", ("mcp:read",), (), "read", False, "inject", "test")
WRITE = READ._replace(effect="write", confirm=True)


def pem(private: Any) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def key_file(folder: Path, name: str, private: Any) -> str:
    path = folder / name
    path.write_bytes(pem(private))
    return str(path)


def identity_policy(folder: Path, **section: Any) -> str:
    """pat-workspaces with `upstream_identity:` (the journal posting approved by a person, as the demo has it)."""
    policy = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    policy.pop("oauth")
    policy["upstream_identity"] = section
    path = folder / "identity.yaml"
    path.write_text(yaml.safe_dump(policy))
    return str(path)


@dataclass
class Stack:
    url: str  # scopegate's MCP endpoint
    public: str  # its public URL: the assertions' iss
    upstream: str  # the ledger, direct
    recorder: Recorder
    ledger: Ledger
    check: IdentityCheck
    keys: list[Any]  # the private keys, signing one first
    runner: Any

    def received_assertions(self) -> list[str]:
        return [r.headers[HEADER] for r in self.recorder.received if HEADER in r.headers]

    def claims(self, token: str) -> dict[str, Any]:
        """Verified as a server must: JWKS key by kid, algorithm, aud, iss, exp."""
        return self.check.verify(token)


@pytest.fixture
async def stack(tmp_path: Path, pat_file: str) -> Any:
    """The demo ledger behind verify_identity (recorded at its edge) and scopegate in front, with two signing keys
    (an Ed25519 key signing, an ES256 key still published: a rotation under way)."""
    ledger = Ledger()
    up_port, port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    public = f"http://127.0.0.1:{port}/mcp"
    check = IdentityCheck(f"http://127.0.0.1:{port}/.well-known/jwks.json", public, upstream)
    recorder = Recorder(verify_identity(resumable_app(build_server(ledger), retry_interval=100), check))
    server = ThreadedServer(recorder, up_port)
    server.start()
    keys = [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())]
    files = (key_file(tmp_path, "new.pem", keys[0]), key_file(tmp_path, "old.pem", keys[1]))
    config = Config(upstream=URL(upstream), listen=("127.0.0.1", port), public_url=URL(public), pat_file=pat_file,
                    policy=identity_policy(tmp_path), upstream_identity_keys=files,
                    metrics_listen=("127.0.0.1", 0))
    runner, _ = await start(config, load_identity(config, {}))
    try:
        yield Stack(public, public, upstream, recorder, ledger, check, keys, runner)
    finally:
        await runner.cleanup()
        server.stop()


def client(url: str, mode: str, token: str, person: Any = None) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode=mode, elicitation_callback=person)


async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"approve": True})


# -- end to end ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_ledger_attributes_each_write_to_the_person(mode: str, stack: Stack) -> None:
    """The Python SDK through scopegate: every request the ledger got carried an assertion it verified; the vendor
    (token confirmation) and the journal entry (a person's approval) are recorded as the writer's, with the
    approval each was applied under and the request it came in."""
    async with client(stack.url, mode, TOKENS["writer"], approve) as sdk:
        accounts = await sdk.call_tool("list_accounts", {"workspaceId": "acme"})
        assert not accounts.is_error
        preview = await sdk.call_tool("create_vendor", VENDOR)
        held = preview.structured_content
        assert held["status"] == "confirmation_required"
        made = await sdk.call_tool("create_vendor", {**VENDOR, "confirmationToken": held["confirmationToken"]})
        assert not made.is_error
        posted = await sdk.call_tool("create_journal_entry", ENTRY)
        assert not posted.is_error
    books = stack.ledger.books["acme"]
    (vendor,) = books.vendors.values()
    (entry,) = books.entries.values()
    assert vendor["by"]["subject"] == entry["by"]["subject"] == "user-writer"
    assert vendor["by"]["approval"] == held["preview"]["id"] and vendor["by"]["approved_by"] == "user-writer"
    assert entry["by"]["approval"] and entry["by"]["approval"] != vendor["by"]["approval"]
    assert vendor["by"]["request"] and entry["by"]["request"] and vendor["by"]["request"] != entry["by"]["request"]

    posts = stack.recorder.posts()
    assert posts and all(HEADER in r.headers for r in posts)  # every request scopegate forwarded carried one
    claims = [stack.claims(r.headers[HEADER]) for r in posts]
    assert {c["sub"] for c in claims} == {"user-writer"}
    assert {c["cred"]["label"] for c in claims} == {"test writer"} and {c["cred"]["kind"] for c in claims} == {"pat"}
    assert {c["scope"] for c in claims} == {"mcp:read mcp:write"}
    applied = [c for r, c in zip(posts, claims, strict=True) if "approval" in c]
    assert [(c["approval"]["via"], c["ws"]) for c in applied] == [("token", "acme"), ("human", "acme")]
    assert [c["approval"]["id"] for c in applied] == [vendor["by"]["approval"], entry["by"]["approval"]]
    assert jwt.get_unverified_header(posts[0].headers[HEADER])["alg"] == "EdDSA"  # the first key signs


@pytest.mark.parametrize("mode", MODES)
async def test_injected_workspace_and_bound_credential_are_asserted(mode: str, stack: Stack) -> None:
    """A workspace-bound reader names no workspace: the one scopegate injected is the one asserted."""
    async with client(stack.url, mode, TOKENS["reader"]) as sdk:
        listed = await sdk.call_tool("list_accounts", {})
        assert not listed.is_error
    (call,) = [r for r in stack.recorder.posts() if b'"list_accounts"' in r.body]
    assert call.json()["params"]["arguments"]["workspaceId"] == "acme"
    claims = stack.claims(call.headers[HEADER])
    assert claims["sub"] == "user-reader" and claims["ws"] == "acme" and claims["scope"] == "mcp:read"
    assert claims["aud"] == stack.upstream and claims["iss"] == stack.public
    assert 0 < claims["exp"] - claims["iat"] <= 60 and "approval" not in claims and "rid" not in claims


async def test_client_copy_of_the_header_is_refused(stack: Stack, proxy_url: str, recorder: Recorder) -> None:
    """Only scopegate sends the assertion: a client's own, in any spelling an upstream could read as the same
    header, is refused before anything is forwarded; the default name even where the policy asks for none."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "list_accounts", "arguments": {"workspaceId": "acme"}}})
    async with aiohttp.ClientSession() as http:
        for url in (stack.url, proxy_url):
            for name in (HEADER, "X-Scopegate-Identity", "x_scopegate_identity"):
                headers = {**modern_headers("tools/call", "list_accounts"), name: "eyJhbGciOiJub25lIn0.e30."}
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == 400, (url, name)
                    assert "set by the proxy" in (await response.json())["error"]["message"]
    assert stack.recorder.received == [] and recorder.received == []


async def test_ledger_refuses_tampered_expired_and_foreign_assertions(stack: Stack) -> None:
    """Straight to the ledger, as anyone on its network could: only an assertion scopegate signed, for this
    audience, still alive, passes verify_identity."""
    async with client(stack.url, "auto", TOKENS["writer"]) as sdk:
        await sdk.call_tool("list_accounts", {"workspaceId": "acme"})
    good = stack.received_assertions()[-1]
    head, payload, signature = good.split(".")
    claims = orjson.loads(jwt.utils.base64url_decode(payload))
    forged = jwt.utils.base64url_encode(orjson.dumps({**claims, "sub": "user-other"})).decode()
    key = signing_key(pem(stack.keys[0]))

    def made(clock: float = time.time(), audience: str = stack.upstream, issuer: str = stack.public,
             private: Any = stack.keys[0]) -> str:
        settings = Settings(KeyRing((signing_key(pem(private)),)), issuer, audience, HEADER, 60, 0)
        exchange = Exchange("rid", None, None, CIMultiDict())
        exchange.principal = Principal("user-writer", "pat-x", "test writer", "pat", frozenset({"mcp:read"}))
        Assertions(settings, clock=lambda: clock).stamp(exchange)
        return exchange.upstream_headers[HEADER]

    stranger = ed25519.Ed25519PrivateKey.generate()
    refused = {
        "tampered payload": f"{head}.{forged}.{signature}",
        "expired": made(clock=time.time() - 120),
        "wrong audience": made(audience="http://127.0.0.1:1/other"),
        "wrong issuer": made(issuer="http://evil.example/mcp"),
        "unknown key": made(private=stranger),
        "unsigned": jwt.encode(claims, None, algorithm="none"),
        "HS256 with the public key": jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": key.kid}),
    }
    ping = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    plain = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
             "MCP-Protocol-Version": "2025-11-25"}
    async with aiohttp.ClientSession() as http:
        for why, token in refused.items():
            async with http.post(stack.upstream, data=ping, headers={**plain, HEADER: token}) as response:
                assert response.status == 401, why
                assert (await response.json())["error"] == "invalid identity assertion"
        for token in (good, made(private=stack.keys[1])):  # the key still published verifies too (rotation)
            async with http.post(stack.upstream, data=ping, headers={**plain, HEADER: token}) as response:
                assert response.status != 401
    assert stack.ledger.books["acme"].vendors == {}


async def test_jwks_published_on_proxy_and_ops_listener_with_both_keys(stack: Stack) -> None:
    """Rotation: both keys are published (the signing one first), at the well-known URL on the proxy (for the
    Hosts it serves only) and on the ops listener."""
    ops = f"http://127.0.0.1:{stack.runner.app[OPS_PORT]}/.well-known/jwks.json"
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.check.jwks_url) as response:
            assert response.status == 200 and response.content_type == "application/json"
            published = await response.json()
        async with http.get(ops) as response:
            assert await response.json() == published
        async with http.get(stack.check.jwks_url, headers={"Host": "evil.example"}) as response:
            assert response.status == 403
    kids = [signing_key(pem(k)).kid for k in stack.keys]
    assert [k["kid"] for k in published["keys"]] == kids
    assert [k["alg"] for k in published["keys"]] == ["EdDSA", "ES256"]
    assert all("d" not in k for k in published["keys"])  # public halves only


# -- pure parts ----------------------------------------------------------------------------------------------------


def ring(*privates: Any) -> KeyRing:
    return KeyRing(tuple(signing_key(pem(p)) for p in privates))


def exchange_for(principal: Principal, decision: Decision = READ, workspace: str | None = "acme",
                 rid: str = "r-1") -> Exchange:
    exchange = Exchange(rid, None, None, CIMultiDict())
    exchange.principal, exchange.decision = principal, decision
    if workspace is not None:
        exchange.workspaces.append(WorkspaceFact("t", "inject", "injected", workspace))
    return exchange


def decoded(keys: KeyRing, token: str, audience: str = "http://up/mcp") -> dict[str, Any]:
    found = {k.key_id: k for k in jwt.PyJWKSet.from_dict(keys.jwks()).keys}
    key = found[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key.key, algorithms=["ES256", "EdDSA"], audience=audience)


PERSON = Principal("alice", "pat_1", "Month-end", "pat", frozenset({"mcp:write", "mcp:read"}))


@pytest.mark.parametrize("private", [ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()])
@pytest.mark.parametrize("label", ["", "a", "ab", "abc", "é€", "x" * 77])
def test_assertion_claims_for_every_padding(private: Any, label: str) -> None:
    """The cached credential part is padded to a base64 boundary: whatever its length, the token is one JWT whose
    claims are the credential's and the call's."""
    keys = ring(private)
    made = Assertions(Settings(keys, "https://gate/mcp", "http://up/mcp", HEADER, 60, 30))
    principal = Principal("alice", "sgo_1", label, "oauth", frozenset({"mcp:read"}))
    exchange = exchange_for(principal, WRITE)
    exchange.confirmed["7"] = "p-1"
    exchange.approved_by_person = {"7"}
    made.stamp(exchange)
    claims = decoded(keys, exchange.upstream_headers[HEADER])
    assert claims["sub"] == "alice" and claims["cred"] == {"id": "sgo_1", "kind": "oauth", "label": label}
    assert claims.get("client_id") == (label or None) or label == ""
    assert claims["ws"] == "acme" and claims["rid"] == "r-1" and claims["scope"] == "mcp:read"
    assert claims["approval"] == {"id": "p-1", "by": "alice", "via": "human"}


def test_reads_reuse_one_assertion_writes_get_their_own() -> None:
    now = [time.time() - 40]  # real tokens: iat in the past, exp still ahead after the clock moves on
    keys = ring(ec.generate_private_key(ec.SECP256R1()))
    made = Assertions(Settings(keys, "https://gate/mcp", "http://up/mcp", HEADER, 60, 30), clock=lambda: now[0])
    first = made.value(exchange_for(PERSON), PERSON)
    assert made.value(exchange_for(PERSON, rid="r-2"), PERSON) == first  # a read in the same workspace: reused
    assert made.value(exchange_for(PERSON, workspace="globex"), PERSON) != first  # another workspace: its own
    other = Principal("alice", "pat_1", "Month-end", "pat", frozenset({"mcp:read"}))
    assert made.value(exchange_for(other), other) != first  # other scopes: its own
    writes = {made.value(exchange_for(PERSON, WRITE, rid=f"w-{n}"), PERSON) for n in range(3)}
    assert len(writes) == 3 and first not in writes
    assert [decoded(keys, w)["rid"] for w in sorted(writes, key=lambda w: decoded(keys, w)["rid"])] == \
        ["w-0", "w-1", "w-2"]
    now[0] += 29
    assert made.value(exchange_for(PERSON), PERSON) == first
    now[0] += 2  # past reuse_seconds: a fresh one, with half its life or more left
    fresh = made.value(exchange_for(PERSON), PERSON)
    assert fresh != first and decoded(keys, fresh)["iat"] == int(now[0])

    every = Assertions(Settings(keys, "https://gate/mcp", "http://up/mcp", HEADER, 60, 0), clock=lambda: now[0])
    one, two = every.value(exchange_for(PERSON, rid="a"), PERSON), every.value(exchange_for(PERSON, rid="b"), PERSON)
    assert one != two and decoded(keys, one)["rid"] == "a" and decoded(keys, two)["rid"] == "b"


def test_assertion_never_outlives_its_credential_nor_is_reused_past_half_life() -> None:
    now = 1_000_000.0
    keys = ring(ed25519.Ed25519PrivateKey.generate())
    made = Assertions(Settings(keys, "https://gate/mcp", "http://up/mcp", HEADER, 60, 30), clock=lambda: now)
    short = Principal("bob", "pat_2", "x", "pat", frozenset(), expires_at=now + 20)
    token = made.value(exchange_for(short), short)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] == int(now + 20)
    (refresh,) = [until for _, until in made._reusable.values()]
    assert refresh <= now  # never reused: under half its life left


def test_bearer_header_and_batches() -> None:
    keys = ring(ec.generate_private_key(ec.SECP256R1()))
    made = Assertions(Settings(keys, "https://gate/mcp", "http://up/mcp", "authorization", 60, 30))
    exchange = exchange_for(PERSON)
    exchange.workspaces.append(WorkspaceFact("u", "verify", "verified", "globex", project="p9"))
    exchange.outcomes.extend([None, None])  # type: ignore[list-item]  # a batch of two: its own assertion
    exchange.confirmed.update({"1": "p-1", "2": "p-2"})
    made.stamp(exchange)
    scheme, token = exchange.upstream_headers["Authorization"].split(" ")
    claims = decoded(keys, token)
    assert scheme == "Bearer" and claims["ws"] == ["acme", "globex"] and claims["project"] == "p9"
    assert claims["approval"] == [{"id": "p-1", "by": "alice", "via": "token", "call": "1"},
                                  {"id": "p-2", "by": "alice", "via": "token", "call": "2"}]


def test_header_names_and_configuration(tmp_path: Path, pat_file: str) -> None:
    assert header_problem("x-scopegate-identity", {"x-app-token": "s"}) is None
    assert header_problem("Authorization", {}) is None
    for name in ("Host", "mcp-session-id", "Mcp-Param-Workspace", "X-Forwarded-User", "x-request-id"):
        assert header_problem(name, {}), name
    assert header_problem("X-App-Token", {"x-app-token": "s"})
    key = key_file(tmp_path, "k.pem", ec.generate_private_key(ec.SECP256R1()))
    base = {"upstream": URL("http://127.0.0.1:1/mcp"), "pat_file": pat_file, "policy": identity_policy(tmp_path)}
    for settings, problem in (
        ({"upstream_identity_keys": (key,)}, "SCOPEGATE_PUBLIC_URL"),
        ({"public_url": URL("http://127.0.0.1:2/mcp")}, "signing key"),
        ({"public_url": URL("http://127.0.0.1:2/mcp"), "upstream_identity_keys": (str(tmp_path / "none.pem"),)},
         "cannot read"),
        ({"public_url": URL("http://127.0.0.1:2/mcp"), "upstream_identity_keys": (key,),
          "policy": str(POLICIES / "pat-workspaces.yaml")}, "no `upstream_identity:`"),
    ):
        with pytest.raises(ConfigError, match=problem):
            load_identity(Config(**{**base, **settings}), {})
    with pytest.raises(ConfigError, match="server-side headers"):
        load_identity(Config(**{**base, "policy": identity_policy(tmp_path, header="x-app-token")},
                             public_url=URL("http://127.0.0.1:2/mcp"), upstream_identity_keys=(key,)),
                      {"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": "s"})
    made = load_identity(Config(**base, public_url=URL("http://127.0.0.1:2/mcp"), upstream_identity_keys=(key,)), {})
    asserted = made.upstream_identity
    assert asserted is not None and asserted.audience == "http://127.0.0.1:1/mcp"
    assert asserted.issuer == "http://127.0.0.1:2/mcp" and (asserted.ttl, asserted.reuse) == (60, 30)
    with pytest.raises(PolicyError, match="at most half"):
        load_policy(identity_policy(tmp_path, ttl_seconds=60, reuse_seconds=31))
    with pytest.raises(PolicyError, match="header"):
        load_policy(identity_policy(tmp_path, header="x bad"))


async def test_assertion_is_not_echoed_back(stack: Stack) -> None:
    """An upstream that echoes the header does not hand the client an assertion (its other headers come through)."""
    stack.recorder.extra_response_headers.extend([(HEADER.encode(), b"echoed"), (b"x-control", b"kept")])
    async with aiohttp.ClientSession() as http:
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": MODERN_META}})
        headers = {**modern_headers("ping"), "Authorization": f"Bearer {TOKENS['writer']}"}
        async with http.post(stack.url, data=body, headers=headers) as response:
            assert response.headers["x-control"] == "kept" and HEADER not in response.headers
    assert stack.received_assertions()


def test_demo_policy_asserts_identity_with_the_oauth_key(tmp_path: Path, pat_file: str) -> None:
    """`make run`: the demo policy has upstream_identity on, signed with the demo's OAuth key (no key of its own)."""
    from proxy.demo.run import _demo_policy, _demo_signing_key

    key = _demo_signing_key(tmp_path)
    config = Config(upstream=URL("http://127.0.0.1:8080/mcp"), public_url=URL("http://127.0.0.1:8000/mcp"),
                    pat_file=pat_file, policy=str(_demo_policy(tmp_path)), oauth_signing_keys=(str(key),))
    made = load_identity(config, {})
    assert made.upstream_identity is not None and made.oauth is not None
    assert made.upstream_identity.keys is made.oauth.keys
    assert made.upstream_identity.audience == "http://127.0.0.1:8080/mcp"


def readme_snippet(language: str) -> str:
    """The README's verification example in `language`, as printed (section "The caller's identity")."""
    readme = (POLICIES.parent / "README.md").read_text()
    section = readme.split("## The caller's identity, for the upstream", 1)[1].split("\n## ", 1)[0]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def for_stack(snippet: str, stack: Stack) -> str:
    return (snippet.replace("https://mcp.example.com/.well-known/jwks.json", stack.check.jwks_url)
            .replace("http://ledger.internal:8080/mcp", stack.upstream)
            .replace("https://mcp.example.com/mcp", stack.public))


async def test_readme_verification_snippets_work(stack: Stack) -> None:
    """The README's pyjwt and jose examples, as printed, verify a real assertion and refuse a tampered one."""
    from tests.conftest import npm_installed

    async with client(stack.url, "auto", TOKENS["reader"]) as sdk:
        await sdk.call_tool("list_accounts", {})
    (call,) = [r for r in stack.recorder.posts() if b'"list_accounts"' in r.body]
    good = call.headers[HEADER]
    head, payload, signature = good.split(".")
    claims = orjson.loads(jwt.utils.base64url_decode(payload))
    tampered = f"{head}.{jwt.utils.base64url_encode(orjson.dumps({**claims, 'ws': 'globex'})).decode()}.{signature}"

    python: dict[str, Any] = {}
    exec(for_stack(readme_snippet("python"), stack), python)  # the README's own code
    assert (await asyncio.to_thread(python["caller"], good))["ws"] == "acme"
    with pytest.raises(jwt.InvalidSignatureError):
        await asyncio.to_thread(python["caller"], tampered)

    folder = await asyncio.to_thread(npm_installed, "jose@6.2.19", POLICIES.parent / ".cache" / "jose")
    script = folder / "verify.mjs"
    script.write_text(for_stack(readme_snippet("js"), stack) + """
for (const token of process.argv.slice(2)) {
  try { console.log(JSON.stringify(await caller(token))); } catch (e) { console.log(JSON.stringify({error: e.code})); }
}
""")
    node = await asyncio.create_subprocess_exec("node", str(script), good, tampered, cwd=folder,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, err.decode()
    verified, refused = (orjson.loads(line) for line in out.decode().splitlines())
    assert verified["sub"] == "user-reader" and verified["ws"] == "acme" and verified["aud"] == stack.upstream
    assert refused == {"error": "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"}


async def test_reload_keeps_the_identity_assertion_as_started(stack: Stack, tmp_path: Path) -> None:
    """The assertion's settings are read at start: a reload that changes them is refused (the policy in force
    stays); one that changes only rules goes through."""
    from proxy.edge.app import RELOADER

    reloader = stack.runner.app[RELOADER]
    path = Path(reloader.path)
    original = path.read_text()
    path.write_text(original.replace("upstream_identity: {}", "upstream_identity: {reuse_seconds: 0}"))
    assert not reloader.reload()
    path.write_text(original.replace("upstream_identity: {}", ""))
    assert not reloader.reload()
    path.write_text(original.replace("default: deny", "default: deny\nconfirm_ttl_seconds: 120"))
    assert reloader.reload()


# -- RFC 8693 token exchange ---------------------------------------------------------------------------------------


@dataclass
class Exchanging:
    url: str
    recorder: Recorder
    provider: Any  # tests/token_exchange_server.py:Provider
    start: Any  # start another scopegate in front of the same upstream and provider: (secret) -> url


@pytest.fixture
async def exchanging(tmp_path: Path, pat_file: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo ledger (recorded at its edge), an Authlib RFC 8693 provider that trusts scopegate's JWKS for subject
    tokens, and scopegate exchanging each caller's assertion there."""
    from tests.token_exchange_server import Client as ProviderClient
    from tests.token_exchange_server import Provider, TokenService

    up_port, idp_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    token_endpoint = f"http://127.0.0.1:{idp_port}/token"
    recorder = Recorder(resumable_app(build_server(Ledger()), retry_interval=100))
    servers = [ThreadedServer(recorder, up_port)]
    secret = "provider-secret-made-for-this-run"
    trust = IdentityCheck("", "", token_endpoint)  # set for each scopegate below
    provider = Provider(trust, ProviderClient("scopegate", secret), expires_in=300)
    servers.append(ThreadedServer(TokenService(provider).app, idp_port))
    for server in servers:
        server.start()
    key = key_file(tmp_path, "k.pem", ec.generate_private_key(ec.SECP256R1()))
    policy = identity_policy(tmp_path, token_exchange={"token_endpoint": token_endpoint, "client_id": "scopegate",
                                                       "audience": "ledger"})
    runners = []

    async def start_one(given_secret: str = secret) -> str:
        port = free_port()
        public = f"http://127.0.0.1:{port}/mcp"
        secret_file = tmp_path / f"secret-{port}"
        secret_file.write_text(given_secret + "\n")
        trust.jwks_url, trust.issuer, trust._keys = f"http://127.0.0.1:{port}/.well-known/jwks.json", public, None
        config = Config(upstream=URL(upstream), listen=("127.0.0.1", port), public_url=URL(public),
                        pat_file=pat_file, policy=policy, upstream_identity_keys=(key,),
                        token_exchange_client_secret_file=str(secret_file), metrics_listen=("127.0.0.1", 0))
        runner, _ = await start(config, load_identity(config, {}))
        runners.append(runner)
        return public

    try:
        url = await start_one()
        yield Exchanging(url, recorder, provider, start_one)
    finally:
        for runner in runners:
            await runner.cleanup()
        for server in servers:
            server.stop()


@pytest.mark.parametrize("mode", MODES)
async def test_token_exchange_puts_the_providers_token_upstream(mode: str, exchanging: Exchanging) -> None:
    """Each request reaches the upstream with the provider's token for its caller (never the caller's own), one
    exchange per person and scope set, reused while it lives; the assertion travels beside it."""
    for name in ("writer", "writer", "reader"):
        async with client(exchanging.url, mode, TOKENS[name]) as sdk:
            assert not (await sdk.call_tool("list_accounts", {"workspaceId": "acme"})).is_error
    issued = {(i.subject, i.scope): i for i in exchanging.provider.issued}
    assert sorted(issued) == [("user-reader", "mcp:read"), ("user-writer", "mcp:read mcp:write")]
    assert len(exchanging.provider.issued) == 2 and {i.audience for i in issued.values()} == {"ledger"}
    posts = exchanging.recorder.posts()
    assert posts
    for post in posts:
        scheme, token = post.headers["authorization"].split(" ")
        who = jwt.decode(post.headers[HEADER], options={"verify_signature": False})
        assert scheme == "Bearer" and token == issued[(who["sub"], who["scope"])].access_token
        assert token not in TOKENS.values()


async def test_one_exchange_for_concurrent_requests_and_none_forwarded_without_it(exchanging: Exchanging) -> None:
    """Concurrent first requests of one person wait for the one exchange; a provider that refuses, or refuses
    scopegate's client secret, fails the request (502) and nothing is forwarded."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "list_accounts", "arguments": {"workspaceId": "acme"}, "_meta": MODERN_META}})
    headers = {**modern_headers("tools/call", "list_accounts"), "Authorization": f"Bearer {TOKENS['other']}"}
    async with aiohttp.ClientSession() as http:

        async def call(url: str) -> int:
            async with http.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        assert await asyncio.gather(*(call(exchanging.url) for _ in range(5))) == [200] * 5
        assert [i.subject for i in exchanging.provider.issued] == ["user-other"]

        exchanging.recorder.received.clear()
        exchanging.provider.refuse = True
        fresh = await exchanging.start()
        assert await call(fresh) == 502
        exchanging.provider.refuse = False
        wrong = await exchanging.start("not-the-secret")
        async with http.post(wrong, data=body, headers=headers) as response:
            assert response.status == 502
            assert "identity for the upstream is unavailable" in (await response.json())["error"]["message"]
    assert exchanging.recorder.calls("tools/call") == []
    assert [i.subject for i in exchanging.provider.issued] == ["user-other"]


def test_token_exchange_request_and_response_rules(tmp_path: Path) -> None:
    from proxy.identity.token_exchange import ExchangeFailed, Settings, form, issued

    settings = Settings("https://idp/token", "scopegate", "s3cret", audience="ledger", resource="https://ledger/")
    sent = form(settings, "eyJ.subject.token", frozenset({"b", "a"}))
    assert sent == {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token":
                    "eyJ.subject.token", "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token", "audience": "ledger",
                    "resource": "https://ledger/", "scope": "a b"}
    public = form(Settings("https://idp/token", "scopegate", send_scopes=False), "t", frozenset({"a"}))
    assert public["client_id"] == "scopegate" and "scope" not in public and "audience" not in public
    assert issued({"access_token": "abc.DEF-_~+/=", "token_type": "bearer", "expires_in": 120}) == (
        "abc.DEF-_~+/=", 120.0)
    assert issued({"access_token": "abc", "token_type": "N_A"}) == ("abc", 60.0)
    for answer in ([], {"token_type": "Bearer"}, {"access_token": "a\r\nX-Evil: 1", "token_type": "Bearer"},
                   {"access_token": "a b", "token_type": "Bearer"}, {"access_token": "a", "token_type": "mac"},
                   {"access_token": "a", "token_type": "Bearer", "expires_in": 0},
                   {"access_token": "a", "token_type": "Bearer", "expires_in": True}):
        with pytest.raises(ExchangeFailed):
            issued(answer)
    with pytest.raises(PolicyError, match="takes the Authorization header"):
        load_policy(identity_policy(tmp_path, header="authorization",
                                    token_exchange={"token_endpoint": "https://idp/token", "client_id": "s"}))
