"""Identity end to end: real keys and real signed tokens made here, a real JWKS endpoint, real PAT registry files,
a private Redis. Every refusal asserts that nothing reached the upstream and that the client's token never did."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from yarl import URL

from proxy.identity.jwks import StaticKey
from proxy.identity.jwt_auth import JwtVerifier, TokenRejected, TrustedIssuer
from proxy.identity.pats import Registry
from proxy.policy.model import Issuer, Policy
from tests.conftest import MODERN_META, MODES, TOKENS, Recorder, free_port, sdk_client
from tests.rawmcp import LegacySession

ISSUER = "https://issuer.test"
AUDIENCE = "https://mcp.test/mcp"


def new_keys() -> dict[str, Any]:
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


def jwk_of(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    data = json.loads(algorithm.to_jwk(private.public_key()))
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


def sign(private: Any, alg: str, kid: str | None = "k1", **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": now + 300, "iat": now,
               "scope": "journal:read", **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, private, algorithm=alg, headers={"kid": kid} if kid else None)


class JwksServer:
    """The issuer's JWKS endpoint, on a real port; keys can be rotated and fetches are counted."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def jwks(request: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response({"keys": self.keys})

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/jwks.json"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return new_keys()


@pytest.fixture
async def jwks(keys: dict[str, Any]) -> Any:
    server = JwksServer()
    server.keys = [jwk_of(keys[alg], f"k-{alg}", alg) for alg in keys]
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


def write_policy(folder: Path, jwks_url: str, **extra: Any) -> str:
    policy = {
        "version": 1,
        "scopes": ["journal:read", "journal:write", "config:read", "config:write", "admin"],
        "superscope": "admin",
        "oauth_excluded_scopes": ["config:*", "admin"],
        "issuers": [{"issuer": ISSUER, "jwks_url": jwks_url, "audience": AUDIENCE,
                     "jwks_min_refetch_seconds": 0.5}],
        "tools": [{"match": "*", "scopes": ["journal:read"]}],
        "prompts": [{"match": "*", "scopes": ["journal:read"]}],
        **extra,
    }
    path = folder / "policy.yaml"
    path.write_text(json.dumps(policy))  # JSON is YAML
    return str(path)


@pytest.fixture
async def jwt_proxy(start_proxy: Any, upstream: Any, recorder: Recorder, jwks: JwksServer, tmp_path: Path) -> str:
    return await start_proxy(upstream.url, policy=write_policy(tmp_path, jwks.url))


async def call(url: str, token: str | None, extra: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list", **(extra or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}})
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("mode", MODES)
async def test_valid_tokens_pass_and_never_reach_the_upstream(
    alg: str, mode: str, keys: dict, jwt_proxy: str, recorder: Recorder
) -> None:
    token = sign(keys[alg], alg, kid=f"k-{alg}")
    async with sdk_client(jwt_proxy, mode, token=token) as client:
        assert len((await client.list_tools()).tools) == 15  # the test policy allows every tool to journal:read
    assert recorder.received
    for received in recorder.received:
        assert "authorization" not in received.headers and token not in str(received.headers)


def _rsa_public_pem(keys: dict) -> bytes:
    return keys["RS256"].public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _forge_hs256_with_public_key(keys: dict) -> str:
    """Algorithm confusion: an HS256 token whose HMAC key is the RSA public key (pyjwt refuses to make one)."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT","kid":"k-RS256"}').rstrip(b"=")
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300, "scope": "admin"}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    import hashlib
    import hmac

    mac = hmac.new(_rsa_public_pem(keys), header + b"." + payload, hashlib.sha256).digest()
    return (header + b"." + payload + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def _tampered(keys: dict) -> str:
    head, payload, signature = sign(keys["RS256"], "RS256", kid="k-RS256").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "journal:read journal:write admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


BAD_TOKENS = {
    "expired": lambda k: sign(k["RS256"], "RS256", kid="k-RS256", exp=int(time.time()) - 120),
    "not yet valid": lambda k: sign(k["RS256"], "RS256", kid="k-RS256", nbf=int(time.time()) + 600),
    "wrong audience": lambda k: sign(k["RS256"], "RS256", kid="k-RS256", aud="https://elsewhere.test/mcp"),
    "audience list": lambda k: sign(k["RS256"], "RS256", kid="k-RS256", aud=[AUDIENCE, "https://other.test"]),
    "wrong issuer": lambda k: sign(k["RS256"], "RS256", kid="k-RS256", iss="https://evil.test"),
    "no sub": lambda k: sign(k["RS256"], "RS256", kid="k-RS256", sub=None),
    "no exp": lambda k: sign(k["RS256"], "RS256", kid="k-RS256", exp=None),
    "alg none": lambda k: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60},
                                     None, algorithm="none"),
    "hs256 with the rsa public key": _forge_hs256_with_public_key,
    "unknown kid": lambda k: sign(k["RS256"], "RS256", kid="no-such-kid"),
    "signed by another key": lambda k: sign(new_keys()["RS256"], "RS256", kid="k-RS256"),
    "tampered payload": _tampered,
    "key of another algorithm": lambda k: sign(k["ES256"], "ES256", kid="k-RS256"),
    "garbage": lambda k: "not.a.jwt",
    "unknown pat": lambda k: "sgp_0123456789ab_" + "A" * 43,
    "malformed pat": lambda k: "sgp_short",
    "expired pat": lambda k: TOKENS["expired"],
    "revoked pat": lambda k: TOKENS["revoked"],
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_get_401_and_reach_nothing(case: str, keys: dict, jwt_proxy: str,
                                                    recorder: Recorder) -> None:
    if case == "expired pat":  # its lifetime is one second from when the test credentials were made
        from tests.conftest import RECORDS

        expiry = next(r.expires for r in RECORDS if r.label == "test expired")
        await asyncio.sleep(max(0.0, expiry.timestamp() - time.time() + 0.05))
    resp = await call(jwt_proxy, BAD_TOKENS[case](keys))
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer resource_metadata="http://127.0.0.1:') and 'error="invalid_token"' in challenge
    assert 'scope="journal:read journal:write config:read config:write admin"' in challenge
    assert recorder.received == []


async def test_missing_token_challenge_and_metadata(jwt_proxy: str, recorder: Recorder) -> None:
    resp = await call(jwt_proxy, None)
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert "invalid_token" not in challenge
    metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
    assert metadata_url.endswith("/.well-known/oauth-protected-resource/mcp")
    async with aiohttp.ClientSession() as http:
        for url in (metadata_url, metadata_url.removesuffix("/mcp")):
            async with http.get(url) as meta:
                doc = await meta.json()
            assert doc["authorization_servers"] == [ISSUER]
            assert doc["bearer_methods_supported"] == ["header"]
            assert "journal:write" in doc["scopes_supported"] and doc["resource"].endswith("/mcp")
    assert recorder.received == []


async def test_jwks_rotation_and_refetch_rate_limit(keys: dict, jwks: JwksServer, jwt_proxy: str,
                                                    recorder: Recorder) -> None:
    assert (await call(jwt_proxy, sign(keys["RS256"], "RS256", kid="k-RS256"))).status == 200
    fetches = jwks.fetches
    rotated = new_keys()["ES256"]
    early = sign(rotated, "ES256", kid="k-new")
    # A burst of unknown kids within the interval costs at most one fetch.
    results = await asyncio.gather(*(call(jwt_proxy, sign(rotated, "ES256", kid=f"junk-{i}")) for i in range(10)))
    assert all(r.status == 401 for r in results)
    assert jwks.fetches - fetches <= 1
    assert (await call(jwt_proxy, early)).status == 401  # not published yet
    jwks.keys.append(jwk_of(rotated, "k-new", "ES256"))  # the issuer rotates in a new key
    await asyncio.sleep(0.6)
    assert (await call(jwt_proxy, early)).status == 200
    jwks.keys = [k for k in jwks.keys if k["kid"] != "k-RS256"]  # and retires the old one, after the TTL passes


def verifier(keys: dict, policy: Policy, kind: str = "oauth") -> JwtVerifier:
    issuer = Issuer(issuer=ISSUER, kind=kind, public_key_file="unused.pem")
    return JwtVerifier([TrustedIssuer(issuer, StaticKey(keys["RS256"].public_key()), AUDIENCE)], policy)


async def test_oauth_tokens_never_hold_excluded_scopes(keys: dict) -> None:
    policy = Policy(version=1, superscope="admin", oauth_excluded_scopes=("config:*", "admin"))
    token = sign(keys["RS256"], "RS256", scope="journal:read config:write config:read admin")
    principal = await verifier(keys, policy).verify(token)
    assert principal.kind == "oauth" and principal.scopes == {"journal:read"}
    # The same claims from a non-OAuth issuer (kind jwt) are not cut by the OAuth exclusion.
    assert "admin" in (await verifier(keys, policy, kind="jwt").verify(token)).scopes


async def test_ceiling_narrows_and_admin_is_cut_too(keys: dict) -> None:
    policy = Policy(version=1, superscope="admin",
                    roles={"viewer": ("journal:read",), "owner": ("journal:*", "admin")})
    grant = "journal:read journal:write admin"
    viewer = await verifier(keys, policy, kind="jwt").verify(sign(keys["RS256"], "RS256", scope=grant, role="viewer"))
    assert viewer.scopes == {"journal:read"}  # the credential claims more than the user has: cut to the role
    owner = await verifier(keys, policy, kind="jwt").verify(sign(keys["RS256"], "RS256", scope=grant, role="owner"))
    assert owner.scopes == {"journal:read", "journal:write", "admin"}
    nobody = await verifier(keys, policy, kind="jwt").verify(sign(keys["RS256"], "RS256", scope=grant))
    assert nobody.scopes == frozenset()  # roles exist, the token names none: it holds nothing
    with pytest.raises(TokenRejected):
        await verifier(keys, policy).verify(sign(keys["RS256"], "RS256", permissions={"ws-1": "root"}))


def test_ceiling_style_registry_record_normalised(tmp_path: Path) -> None:
    from proxy.identity.pats import create_record, write_records

    record, token = create_record(
        kind="pat", label="KG sync", subject="u-7", scopes=[], workspace=None, workspaces=["ws-1", "ws-2"],
        role="member", expires_in=3600,
        extra={"projects": ["p-1"], "permissions": {"ws-1": "write", "ws-2": "read", "p-9": "none"},
               "org_capabilities": {"can_manage_kg": True, "can_manage_billing": False, "can_admin_org": True}},
    )
    write_records(tmp_path / "pats.yaml", [record])
    policy = Policy(version=1, roles={"member": ("perm:*", "can_manage_kg")})
    principal, reason = Registry(tmp_path / "pats.yaml", policy).lookup(token)
    assert reason == "" and principal is not None
    # write implies read; can_admin_org is granted by the credential but the member role lacks it.
    assert principal.scopes == {"perm:read", "perm:write", "can_manage_kg"}
    assert principal.permissions["p-9"] == "none" and principal.workspaces == {"ws-1", "ws-2"}


async def test_pat_revoked_in_the_file_takes_effect_on_the_next_request(
    proxy_url: str, pat_file: str, recorder: Recorder
) -> None:
    assert (await call(proxy_url, TOKENS["other"])).status == 200
    other_id = TOKENS["other"].split("_")[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    done = subprocess.run([sys.executable, "-m", "proxy", "pat", "revoke", other_id, "--file", pat_file],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (await call(proxy_url, TOKENS["other"])).status == 401
    assert (await call(proxy_url, TOKENS["writer"])).status == 200


async def test_pat_revoked_in_redis_with_a_read_only_registry(
    start_proxy: Any, upstream: Any, recorder: Recorder, pat_file: str, redis_server: Any
) -> None:
    """The proxies read a mounted Secret nobody edits: revocation goes through Redis, to every replica at once."""
    first = await start_proxy(upstream.url, redis_url=redis_server.url)
    second = await start_proxy(upstream.url, redis_url=redis_server.url)
    operators_copy = Path(pat_file).with_name("operators-copy.yaml")
    operators_copy.write_bytes(Path(pat_file).read_bytes())
    mounted = Path(pat_file).read_bytes()
    assert (await call(first, TOKENS["other"])).status == 200
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")},
           "SCOPEGATE_REDIS_URL": redis_server.url}
    other_id = TOKENS["other"].split("_")[1]
    done = subprocess.run([sys.executable, "-m", "proxy", "pat", "revoke", other_id, "--file", str(operators_copy)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "revoked in Redis" in done.stdout, done.stderr
    assert Path(pat_file).read_bytes() == mounted  # only Redis carries the news
    assert (await call(first, TOKENS["other"])).status == 401
    assert (await call(second, TOKENS["other"])).status == 401
    assert (await call(second, TOKENS["writer"])).status == 200
    listing = subprocess.run([sys.executable, "-m", "proxy", "pat", "list", "--file", pat_file],
                             env=env, capture_output=True, text=True, timeout=30)
    assert TOKENS["writer"] not in listing.stdout and "sha256" not in listing.stdout
    # Last use comes from Redis: the writer was just used through the second proxy.
    writer_id = TOKENS["writer"].split("_")[1]
    (row,) = [line for line in listing.stdout.splitlines() if line.startswith(writer_id)]
    assert row.split()[5].startswith("20")
    # The revocation lives in Redis only, and the listing says so: by whom, not "active".
    lines = listing.stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith(other_id))
    revoked, by = lines[at], lines[at + 1]
    assert revoked.split()[2] == "revoked" and "by cli:" in by and "scopegate pat revoke" in by


async def test_redis_down_reads_flow_for_confirmed_pats_others_fail_closed(
    start_proxy: Any, upstream: Any, recorder: Recorder, redis_server: Any
) -> None:
    url = await start_proxy(upstream.url, redis_url=redis_server.url)
    assert (await call(url, TOKENS["writer"])).status == 200  # Redis confirms: not revoked
    redis_server.stop()
    started = time.monotonic()
    assert (await call(url, TOKENS["writer"])).status == 200  # confirmed moments ago: keeps working
    resp = await call(url, TOKENS["other"])  # never confirmed: revocation status unknown
    assert resp.status == 503 and time.monotonic() - started < 2  # a quick, clear refusal, not a hang
    recorder.received.clear()
    redis_server.start()
    deadline = time.monotonic() + 10  # it recovers by itself, once the circuit breaker's window has passed
    while (status := (await call(url, TOKENS["other"])).status) == 503 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert status == 200


@pytest.mark.parametrize("shared_redis", [False, True])
async def test_session_belongs_to_the_credential_that_opened_it(
    shared_redis: bool, start_proxy: Any, upstream: Any, recorder: Recorder, tmp_path_factory: Any
) -> None:
    settings: dict[str, Any] = {}
    server = None
    if shared_redis:
        from tests.conftest import RedisServer

        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        settings["redis_url"] = server.url
    try:
        opener = await start_proxy(upstream.url, **settings)
        # With a shared Redis, the hijacker may even come through another replica.
        thief_url = await start_proxy(upstream.url, **settings) if shared_redis else opener
        async with aiohttp.ClientSession() as http:
            owner = LegacySession(http, opener)
            await owner.open()
            thief = LegacySession(http, thief_url, token=TOKENS["other"])
            thief.session_id = owner.session_id
            before = len(recorder.received)
            async with thief.post({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}) as resp:
                assert resp.status == 404
            async with http.delete(thief_url, headers=thief.headers()) as resp:
                assert resp.status == 404
            assert len(recorder.received) == before  # neither reached the upstream
            owner.url = thief_url  # the owner itself may use any replica
            async with owner.post({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}) as resp:
                assert resp.status == 200
    finally:
        if server is not None:
            server.stop()


async def test_x_app_token_stays_server_side(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    secret = "app-token-0f9e8d7c"
    url = await start_proxy(upstream.url, env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": secret})
    recorder.extra_response_headers.extend([(b"x-app-token", secret.encode()),
                                            (b"x-debug", f"token={secret}".encode()), (b"x-fine", b"kept")])
    smuggled = await call(url, TOKENS["writer"], {"X-App-Token": "attacker-chosen"})
    assert smuggled.status == 400
    assert recorder.received == []
    resp = await call(url, TOKENS["writer"])
    assert resp.status == 200
    assert "X-App-Token" not in resp.headers and "X-Debug" not in resp.headers and resp.headers["X-Fine"] == "kept"
    (received,) = recorder.received
    assert received.headers["x-app-token"] == secret
    assert "authorization" not in received.headers


def test_bad_policy_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nissuers:\n  - issuer: x\n    jwks_url: ftp://nope\nrules: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    done = subprocess.run([sys.executable, "-m", "proxy", "serve", "--upstream", "http://127.0.0.1:1/mcp",
                           "--policy", str(bad)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"{bad}:3:5: issuers.0: jwks_url must be an http(s) URL" in done.stderr
    assert f"{bad}:5:1: rules: unknown key `rules` (did you mean `roles`?)" in done.stderr


async def test_hs256_only_with_an_explicit_development_secret(start_proxy: Any, upstream: Any,
                                                              recorder: Recorder) -> None:
    secret = "dev-only-secret-0123456789abcdef0123"
    url = await start_proxy(upstream.url, jwt_issuer=ISSUER, jwt_dev_hs256_secret=secret,
                            public_url=URL(AUDIENCE))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "dev", "exp": now + 60, "scp": ["journal:read"]}
    assert (await call(url, jwt.encode(claims, secret, algorithm="HS256"))).status == 200
    assert (await call(url, jwt.encode(claims, "another-secret-0123456789abcdef01", algorithm="HS256"))).status == 401


async def test_scp_list_claim(keys: dict) -> None:
    policy = Policy(version=1)
    principal = await verifier(keys, policy, kind="jwt").verify(
        sign(keys["RS256"], "RS256", scope=None, scp=["journal:read", "bank:read"], workspace="acme"))
    assert principal.scopes == {"journal:read", "bank:read"}
    assert principal.bound_workspace == "acme" and principal.workspaces == {"acme"}


async def test_upstream_headers_from_a_file(start_proxy: Any, upstream: Any, recorder: Recorder,
                                            tmp_path: Path) -> None:
    path = tmp_path / "upstream-headers.yaml"
    path.write_text("x-app-token: from-file-1234\nX-Tenant: t-42\n")
    url = await start_proxy(upstream.url, upstream_headers_file=str(path))
    assert (await call(url, TOKENS["writer"], {"X-Tenant": "t-evil"})).status == 400
    assert (await call(url, TOKENS["writer"])).status == 200
    (received,) = recorder.received
    assert received.headers["x-app-token"] == "from-file-1234" and received.headers["x-tenant"] == "t-42"


def test_an_upstream_header_name_with_a_line_end_is_a_configuration_error(tmp_path: Path) -> None:
    """A name is a whole token: one ending in LF (a YAML key, an environment variable's name) is refused when the
    proxy starts, not on every request once it listens. Red with the name matched by `^...$` (a final LF passes)."""
    from proxy.config import ConfigError
    from proxy.identity.upstream_secrets import load_secret_headers

    path = tmp_path / "upstream-headers.yaml"
    path.write_text('"x-app-token\\n": from-file-1234\n')
    for source, env in ((str(path), {}), (None, {"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN\n": "v"})):
        with pytest.raises(ConfigError, match="expected a header name"):
            load_secret_headers(source, env)
    assert load_secret_headers(None, {"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN": "v"}) == {"x-app-token": "v"}
