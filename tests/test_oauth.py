"""scopegate's own OAuth 2.1 server, end to end: the official SDK's OAuth client discovers it from the 401, registers
(RFC 7591), goes through sign-in and consent (a person simulated over HTTP with a cookie jar), exchanges the code
with PKCE, calls tools through the proxy within exactly the consented scopes, refreshes (rotation), and is cut off
when a replayed refresh token kills the family. Then each attack an authorization server must refuse."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from yarl import URL

from proxy.config import Config
from proxy.demo.run import free_port
from proxy.edge.app import start
from proxy.identity.loader import load_identity
from tests.conftest import MODERN_META, MODES, POLICIES, Recorder, Upstream, modern_headers, sdk_client

REDIRECT = "http://127.0.0.1:1/callback"  # never contacted: the test reads the Location header


def pem(private: Any) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def oauth_policy(tmp_path: Path, base: str = "pat-workspaces.yaml", **oauth: Any) -> str:
    policy = yaml.safe_load((POLICIES / base).read_text())
    policy["oauth"] = {**policy.get("oauth", {}), **oauth}
    path = tmp_path / f"oauth-{base}"
    path.write_text(yaml.safe_dump(policy))
    return str(path)


@dataclass
class OAuthProxy:
    url: str  # the MCP endpoint = the tokens' audience
    issuer: str
    signing_key: Any
    runners: list[Any] = field(default_factory=list)

    def endpoint(self, name: str) -> str:
        return f"{self.issuer}/{name}"


@pytest.fixture
async def oauth_proxy(tmp_path: Path, upstream: Upstream, recorder: Recorder, issue: Any) -> Any:
    """A proxy with the OAuth server on (ES256 key made here), a registry with a writer and a reader PAT."""
    issue.tokens = {  # type: ignore[attr-defined]
        "writer": issue("writer", scopes=["mcp:read", "mcp:write"]),
        "reader": issue("reader", scopes=["mcp:read"], workspace="acme"),
    }
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(pem(key))
    started = OAuthProxy("", "", key)

    async def _start(policy: str | None = None, public: str | None = None, port: int | None = None,
                     **settings: Any) -> OAuthProxy:
        """`public`: another replica's public URL (replicas share it; each listens on its own port here). `port`:
        listen there (a restart on the same address)."""
        port = port or free_port()
        started.local = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        public = public or f"http://127.0.0.1:{port}/mcp"
        settings.setdefault("oauth_signing_keys", (str(key_file),))
        config = Config(upstream=URL(upstream.url), listen=("127.0.0.1", port), public_url=URL(public),
                        policy=policy or oauth_policy(tmp_path), pat_file=issue.path,
                        metrics_listen=("127.0.0.1", 0), **settings)
        runner, _ = await start(config, load_identity(config, {}))
        started.runners.append(runner)
        started.app = runner.app  # type: ignore[attr-defined]
        started.url, started.issuer = public, public.removesuffix("/mcp") + "/oauth"
        return started

    started.start = _start  # type: ignore[attr-defined]
    started.tokens = issue.tokens  # type: ignore[attr-defined]
    yield started
    for runner in started.runners:
        await runner.cleanup()


def fields(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Form data with repeated names (httpx takes a dict of lists)."""
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field on the page"
    return found.group(1)


class Person:
    """A person at a browser, over plain HTTP with a cookie jar: signs in with a PAT, ticks, approves."""

    def __init__(self, token: str, untick: tuple[str, ...] = (), workspace: str = "", decision: str = "allow"):
        self.http = httpx2.AsyncClient(follow_redirects=False, timeout=10)
        self.token, self.untick, self.workspace, self.decision = token, untick, workspace, decision
        self.consent_html = ""
        self.origin: str | None = None  # the Origin the browser shows (the public one, behind a load balancer)
        self.then_untick = untick

    async def authorize(self, url: str) -> httpx2.Response:
        """From the authorization URL to the redirect back to the client (returned, not followed)."""
        page = await self.http.get(url)
        if page.status_code == 303:
            return page  # an error redirect straight from /authorize
        assert page.status_code == 200, page.text
        origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        shown = {"Origin": self.origin or origin}
        if 'name="token"' in page.text:
            signed_in = await self.http.post(f"{origin}/oauth/signin", headers=shown, data={
                "request": hidden(page.text, "request"), "token": self.token})
            assert signed_in.status_code == 303, signed_in.text
            page = await self.http.get(origin + signed_in.headers["location"])
        assert page.status_code == 200 and "Allow" in page.text, page.text
        self.consent_html = page.text
        ticked = re.findall(r'name="scope" value="([^"]+)" checked', page.text)
        form = [("request", hidden(page.text, "request")), ("csrf", hidden(page.text, "csrf")),
                ("decision", self.decision), ("workspace", self.workspace)]
        form += [("scope", s) for s in ticked if s not in self.untick]
        form += [("project", p) for p in re.findall(r'name="project" value="([^"]+)" checked', page.text)
                 if p not in self.untick]
        self.untick = self.then_untick  # a second consent (a step-up) may be answered differently
        return await self.http.post(f"{origin}/oauth/consent", headers=shown, data=fields(form))


class MemoryTokens:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def sdk_oauth(url: str, person: Person, storage: MemoryTokens) -> OAuthClientProvider:
    answer: dict[str, AuthorizationCodeResult] = {}

    async def redirect_handler(authorization_url: str) -> None:
        back = await person.authorize(authorization_url)
        assert back.status_code == 303, back.text
        query = parse_qs(urlsplit(back.headers["location"]).query)
        assert "code" in query, query
        answer["result"] = AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0],
                                                   iss=query.get("iss", [None])[0])

    async def callback_handler() -> AuthorizationCodeResult:
        return answer.pop("result")

    metadata = OAuthClientMetadata(client_name="Test Assistant", redirect_uris=[REDIRECT],
                                   grant_types=["authorization_code", "refresh_token"], response_types=["code"])
    return OAuthClientProvider(url, metadata, storage, redirect_handler, callback_handler)


def claims_of(access_token: str) -> dict[str, Any]:
    return jwt.decode(access_token, options={"verify_signature": False})


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_oauth_client_discovers_registers_consents_refreshes_and_replay_kills_family(
        mode: str, oauth_proxy: Any, recorder: Recorder) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"], untick=("mcp:write",))  # the person grants read only
    storage = MemoryTokens()
    auth = sdk_oauth(proxy.url, person, storage)
    async with Client(streamable_http_client(proxy.url, http_client=httpx2.AsyncClient(auth=auth, timeout=30)),
                      mode=mode) as client:
        tools = await client.list_tools()
        assert "list_accounts" in {t.name for t in tools.tools}
        assert "create_journal_entry" not in {t.name for t in tools.tools}  # mcp:write was not consented
        result = await client.call_tool("list_accounts", {"workspaceId": "acme"})
        assert not result.is_error

        first = storage.tokens
        assert first is not None and first.refresh_token and first.refresh_token.startswith("sgr_")
        claims = claims_of(first.access_token)
        assert claims["aud"] == proxy.url and claims["iss"] == proxy.issuer and claims["scope"] == "mcp:read"
        assert claims["exp"] - claims["iat"] == 1800 and first.expires_in == 1800
        assert storage.client is not None and storage.client.client_id.startswith("sgc_")
        assert "Test Assistant" in person.consent_html and "registered itself (RFC 7591)" in person.consent_html

        auth.context.token_expiry_time = time.time() - 1  # the access token is due: the next call refreshes
        assert not (await client.call_tool("list_accounts", {"workspaceId": "acme"})).is_error
        second = storage.tokens
        assert second is not None and second.refresh_token != first.refresh_token  # rotated
        assert second.access_token != first.access_token and claims_of(second.access_token)["gid"] == claims["gid"]

    for received in recorder.received:  # no token passthrough
        assert "authorization" not in received.headers

    # The first refresh token was consumed; presenting it again is a replay: the whole family dies.
    async with httpx2.AsyncClient() as http:
        replay = await http.post(proxy.endpoint("token"), data={
            "grant_type": "refresh_token", "refresh_token": first.refresh_token,
            "client_id": storage.client.client_id})
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        current = await http.post(proxy.url, headers=mcp_headers(second.access_token), json=LIST)
        assert current.status_code == 401  # the live access token of that family is refused on its next request
        renewed = await http.post(proxy.endpoint("token"), data={
            "grant_type": "refresh_token", "refresh_token": second.refresh_token,
            "client_id": storage.client.client_id})
        assert renewed.status_code == 400  # and so is its live refresh token


LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}}


def mcp_headers(token: str) -> dict[str, str]:
    return {**modern_headers("tools/list"), "Authorization": f"Bearer {token}"}


# --- the flow by hand, for the attacks --------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def register(http: httpx2.AsyncClient, proxy: Any, redirect: str = REDIRECT) -> str:
    answer = await http.post(proxy.endpoint("register"), json={"client_name": "Attack Test",
                                                               "redirect_uris": [redirect]})
    assert answer.status_code == 201, answer.text
    assert answer.json()["token_endpoint_auth_method"] == "none"
    return answer.json()["client_id"]


def authorization_url(proxy: Any, client_id: str, challenge: str | None, **extra: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "st-1",
              "code_challenge_method": "S256", "resource": proxy.url, "scope": "mcp:read mcp:write"}
    if challenge is not None:
        params["code_challenge"] = challenge
    params.update(extra)
    return f"{proxy.endpoint('authorize')}?{urlencode({k: v for k, v in params.items() if v != '-'})}"


async def code_for(proxy: Any, person: Person, client_id: str, challenge: str, **extra: str) -> str:
    back = await person.authorize(authorization_url(proxy, client_id, challenge, **extra))
    assert back.status_code == 303, back.text
    query = parse_qs(urlsplit(back.headers["location"]).query)
    assert query["state"] == ["st-1"] and query["iss"] == [proxy.issuer]
    return query["code"][0]


async def exchange(http: httpx2.AsyncClient, proxy: Any, client_id: str, code: str, verifier: str | None,
                   redirect: str = REDIRECT) -> httpx2.Response:
    data = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": redirect}
    if verifier is not None:
        data["code_verifier"] = verifier
    return await http.post(proxy.endpoint("token"), data=data)


async def test_metadata_documents_and_jwks(oauth_proxy: Any) -> None:
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

    proxy = await oauth_proxy.start()
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient() as http:
        prm = (await http.get(f"{origin}/.well-known/oauth-protected-resource/mcp")).json()
        assert prm["authorization_servers"][0] == proxy.issuer and prm["resource"] == proxy.url
        meta = (await http.get(f"{origin}/.well-known/oauth-authorization-server/oauth")).json()
        jwks = (await http.get(meta["jwks_uri"])).json()
        unauthenticated = await http.post(proxy.url, json=LIST, headers={"Accept": "application/json"})
    assert meta["issuer"] == proxy.issuer and meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert meta["scopes_supported"] == ["mcp:read", "mcp:write"]
    # Authlib's RFC 8414 validation (it insists on https, so check the same document under an https issuer).
    https = {k: v.replace("http://", "https://") if isinstance(v, str) else v for k, v in meta.items()}
    AuthorizationServerMetadata(https).validate()
    public = serialization.load_pem_public_key(
        oauth_proxy.signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    assert [k["alg"] for k in jwks["keys"]] == ["ES256"] and "d" not in jwks["keys"][0]
    assert jwt.PyJWK.from_dict(jwks["keys"][0]).key.public_numbers() == public.public_numbers()
    assert 'resource_metadata="' in unauthenticated.headers["www-authenticate"]


async def test_two_keys_published_first_signs(oauth_proxy: Any, tmp_path: Path) -> None:
    second = tmp_path / "next.pem"
    second.write_bytes(pem(ed25519.Ed25519PrivateKey.generate()))
    proxy = await oauth_proxy.start(oauth_signing_keys=(str(second), str(tmp_path / "signing.pem")))
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(proxy.endpoint("jwks.json"))).json()
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, Person(oauth_proxy.tokens["writer"]), client_id, challenge)
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
        ok = await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)
    assert [k["alg"] for k in jwks["keys"]] == ["EdDSA", "ES256"]
    assert jwt.get_unverified_header(tokens["access_token"])["kid"] == jwks["keys"][0]["kid"]
    assert ok.status_code == 200


@pytest.mark.parametrize("attack", ["missing", "plain", "wrong verifier", "no verifier"])
async def test_pkce_is_required_and_checked(attack: str, oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"])
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        if attack in ("missing", "plain"):
            extra = {"code_challenge_method": "plain"} if attack == "plain" else {}
            page = await http.get(authorization_url(proxy, client_id, None if attack == "missing" else verifier,
                                                    **extra))
            # A client that registered itself gets its error on our page, not by redirect (RFC 9700 §4.11.2).
            assert page.status_code == 400 and "location" not in page.headers
            assert "(invalid_request)" in page.text
            return
        code = await code_for(proxy, person, client_id, challenge)
        wrong = pkce()[0] if attack == "wrong verifier" else None
        refused = await exchange(http, proxy, client_id, code, wrong)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        # The code is burnt by the failed attempt: the right verifier no longer helps an attacker who guesses.
        late = await exchange(http, proxy, client_id, code, verifier)
        assert late.status_code == 400


async def test_redirect_uri_must_match_exactly_and_errors_never_redirect_there(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"])
    _, challenge = pkce()
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        for evil in ("http://127.0.0.1:1/callback/../evil", "http://127.0.0.1:1/callback?x=1", "https://evil.test/cb",
                     "http://127.0.0.1:1/Callback"):
            page = await http.get(authorization_url(proxy, client_id, challenge, redirect_uri=evil))
            assert page.status_code == 400 and "location" not in page.headers
            assert "redirect_uri does not match" in page.text
        unknown = await http.get(authorization_url(proxy, "sgc_" + "0" * 32, challenge))
        assert unknown.status_code == 400 and "location" not in unknown.headers
        # Exchange with another redirect_uri than the one authorized: refused.
        verifier, challenge = pkce()
        code = await code_for(proxy, person, client_id, challenge)
        refused = await exchange(http, proxy, client_id, code, verifier, redirect="http://127.0.0.1:1/other")
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        # Registration refuses redirect URIs that are not https or loopback, and fragments.
        for bad in ("http://evil.test/cb", "https://ok.test/cb#frag", "javascript:alert(1)"):
            answer = await http.post(proxy.endpoint("register"), json={"redirect_uris": [bad]})
            assert answer.status_code == 400 and answer.json()["error"] == "invalid_redirect_uri"


CLICKJACK = "https://host\\ https: ; frame-ancestors *;/cb"  # main registered it and wrote it into the CSP


async def test_registration_refuses_redirect_uris_with_more_than_one_reading(oauth_proxy: Any, issue: Any,
                                                                             tmp_path: Path) -> None:
    """RFC 7591 end to end: each is refused with invalid_redirect_uri and nothing is registered. main registered
    the first ones (and the CSP of their consent page carried `frame-ancestors *`), registered the CR/LF one (the
    303 after Allow then could not be written and the code was lost), and answered 500 to the unclosed `[`."""
    from proxy.config import ConfigError

    proxy = await oauth_proxy.start()
    hostile = [CLICKJACK, "https://host https: ; frame-ancestors *;/cb", "https://a.test;frame-ancestors=*/cb",
               "https://a.test/cb\r\nSet-Cookie: x=1", "https://a.test/c\nb", "https://evil.test\\@good.test/cb",
               "https://good.test@evil.test/cb", "https://a.test/c\x00b", "https://[::1/cb", "https://127.1/cb",
               "http://0x7f.1/cb"]
    async with httpx2.AsyncClient() as http:
        for bad in hostile:
            answer = await http.post(proxy.endpoint("register"), json={"client_name": "X", "redirect_uris": [bad]})
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["error"] == "invalid_redirect_uri"
            assert answer.json()["error_description"].startswith("a redirect URI ")
            both = await http.post(proxy.endpoint("register"), json={"redirect_uris": [REDIRECT, bad]})
            assert both.status_code == 400  # one bad URI refuses the whole registration
    # A pre-registered client's redirect URI goes through the same rules when the policy is loaded.
    policy = oauth_policy(tmp_path, clients=[{"client_id": "desk", "client_name": "Desk",
                                              "redirect_uris": [CLICKJACK]}])
    config = Config(upstream=URL("http://127.0.0.1:9/mcp"), policy=policy, pat_file=issue.path,
                    public_url=URL("http://127.0.0.1:9/mcp"), oauth_signing_keys=(str(tmp_path / "signing.pem"),))
    with pytest.raises(ConfigError, match=r"oauth.clients.0.redirect_uris: a redirect URI must not contain a "
                                          r"backslash"):
        load_identity(config, {})


async def test_stale_registration_with_a_hostile_redirect_uri_is_refused_at_authorize(oauth_proxy: Any,
                                                                                      redis_server: Any) -> None:
    """Registrations live in the store for 30 days and outlive an upgrade: one made under the old rules is not
    served a consent page (whose CSP would be built from it), nor redirected to."""
    from redis.asyncio import Redis

    from proxy.identity.oauth.clients import CLIENT_KEY, Client

    proxy = await oauth_proxy.start(redis_url=redis_server.url)
    client_id = "sgc_" + secrets.token_hex(16)
    redis = Redis.from_url(redis_server.url)
    await redis.set(CLIENT_KEY + client_id, Client(client_id, "Framer", (CLICKJACK,), "registered itself (RFC 7591)")
                    .to_json(), ex=600)
    await redis.aclose()
    _, challenge = pkce()
    async with httpx2.AsyncClient() as http:
        for extra in ({}, {"response_type": "x"}):
            page = await http.get(authorization_url(proxy, client_id, challenge, redirect_uri=CLICKJACK, **extra))
            assert page.status_code == 400 and "location" not in page.headers
            assert "no longer accepted" in page.text and "must register again" in page.text
            csp = page.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "form-action 'self';" in csp and "*" not in csp


async def test_self_registered_clients_get_errors_on_our_page_preregistered_by_redirect(oauth_proxy: Any,
                                                                                       tmp_path: Path) -> None:
    """RFC 9700 §4.11.2: anyone can register `https://evil.example/...`; main then sent
    /authorize?client_id=...&response_type=x there from scopegate's origin (an open redirector). A client the
    organisation pre-registered keeps RFC 6749 §4.1.2.1 error redirects."""
    policy = oauth_policy(tmp_path, clients=[{"client_id": "desk-assistant", "client_name": "Desk Assistant",
                                              "redirect_uris": [REDIRECT]}])
    proxy = await oauth_proxy.start(policy=policy)
    evil = "https://evil.example/landing"  # never contacted: nothing follows the answers
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy, evil)
        for extra in ({"response_type": "x"}, {"code_challenge": "-"}, {"code_challenge_method": "plain"},
                      {"resource": "https://other.test/mcp"}, {"scope": "bad\\scope"}):
            page = await http.get(authorization_url(proxy, client_id, pkce()[1], redirect_uri=evil, **extra))
            assert page.status_code == 400 and "location" not in page.headers, (extra, page.headers)
            assert "nothing was sent back to it" in page.text and "evil.example" not in page.text
        repeated = f"{authorization_url(proxy, client_id, pkce()[1], redirect_uri=evil)}&state=again"
        page = await http.get(repeated)
        assert page.status_code == 400 and "location" not in page.headers and "more than once" in page.text

        # The pre-registered client: the same mistake is sent back to it, with state and iss (RFC 9207).
        back = await http.get(authorization_url(proxy, "desk-assistant", pkce()[1], response_type="x"))
        assert back.status_code == 303 and back.headers["location"].startswith(REDIRECT + "?")
        query = parse_qs(urlsplit(back.headers["location"]).query)
        assert query["error"] == ["unsupported_response_type"] and query["state"] == ["st-1"]
        assert query["iss"] == [proxy.issuer]
        # And its happy path still ends at its redirect URI with a code.
        code = await code_for(proxy, Person(oauth_proxy.tokens["writer"]), "desk-assistant", pkce()[1])
        assert code


async def test_code_is_single_use_and_replay_revokes_its_grant(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, Person(oauth_proxy.tokens["writer"]), client_id, challenge)
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
        assert (await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 200
        replay = await exchange(http, proxy, client_id, code, verifier)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        after = await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)
        assert after.status_code == 401  # RFC 6749 §4.1.2: what the twice-used code gave is revoked


async def test_code_of_another_client_and_resource_of_another_server_refused(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"])
    async with httpx2.AsyncClient() as http:
        client_id, thief = await register(http, proxy), await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, person, client_id, challenge)
        stolen = await exchange(http, proxy, thief, code, verifier)
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
        page = await http.get(authorization_url(proxy, client_id, challenge, resource="https://other.test/mcp"))
        assert page.status_code == 400 and "location" not in page.headers and "(invalid_target)" in page.text


async def test_token_for_another_audience_or_issuer_key_is_refused(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, Person(oauth_proxy.tokens["writer"]), client_id, challenge)
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
        claims = claims_of(tokens["access_token"])
        kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
        key = oauth_proxy.signing_key
        other_audience = jwt.encode({**claims, "aud": "https://other.test/mcp"}, key, algorithm="ES256",
                                    headers={"kid": kid})
        forged = jwt.encode({**claims, "scope": "mcp:read mcp:write"}, ec.generate_private_key(ec.SECP256R1()),
                            algorithm="ES256", headers={"kid": kid})
        no_grant = jwt.encode({k: v for k, v in claims.items() if k != "gid"}, key, algorithm="ES256",
                              headers={"kid": kid})
        for bad in (other_audience, forged, no_grant):
            answer = await http.post(proxy.url, headers=mcp_headers(bad), json=LIST)
            assert answer.status_code == 401
        assert (await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 200


async def test_excluded_scopes_are_never_granted_and_ceiling_holds(oauth_proxy: Any, issue: Any,
                                                                   tmp_path: Path) -> None:
    admin = issue("tenant admin", kind="admin_key", scopes=["admin", "config:read", "journal:read", "bank:read"])
    proxy = await oauth_proxy.start(oauth_policy(tmp_path, "ledger-scopes.yaml"))
    person = Person(admin)
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, person, client_id, challenge,
                              scope="admin config:read journal:read journal:write bank:read")
        # The consent page shows what cannot be granted, and why, without a checkbox that could submit it.
        assert "withheld from OAuth clients" in person.consent_html
        assert "your credential does not hold it" in person.consent_html  # journal:write
        assert 'value="admin"' not in person.consent_html and 'value="config:read"' not in person.consent_html
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
    assert set(tokens["scope"].split()) == {"journal:read", "bank:read"}


async def test_forged_consent_form_cannot_add_scopes_or_widen_workspace(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    reader = Person(oauth_proxy.tokens["reader"])  # mcp:read, bound to workspace acme
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        page = await reader.http.get(authorization_url(proxy, client_id, challenge))
        origin = proxy.issuer.removesuffix("/oauth")
        signed = await reader.http.post(f"{origin}/oauth/signin", headers={"Origin": origin}, data={
            "request": hidden(page.text, "request"), "token": reader.token})
        consent = await reader.http.get(origin + signed.headers["location"])
        back = await reader.http.post(f"{origin}/oauth/consent", headers={"Origin": origin}, data=fields([
            ("request", hidden(consent.text, "request")), ("csrf", hidden(consent.text, "csrf")),
            ("decision", "allow"), ("scope", "mcp:read"), ("scope", "mcp:write"), ("workspace", "globex")]))
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
    claims = claims_of(tokens["access_token"])
    assert claims["scope"] == "mcp:read" and claims["workspace"] == "acme"


async def test_consent_csrf_and_cross_origin_posts_refused(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"])
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        _, challenge = pkce()
        page = await person.http.get(authorization_url(proxy, client_id, challenge))
        assert page.headers["x-frame-options"] == "DENY"
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src" not in csp
        signed = await person.http.post(f"{origin}/oauth/signin", headers={"Origin": origin}, data={
            "request": hidden(page.text, "request"), "token": person.token})
        consent = await person.http.get(origin + signed.headers["location"])
        request_id = hidden(consent.text, "request")
        base = [("request", request_id), ("decision", "allow"), ("scope", "mcp:read")]
        no_token = await person.http.post(f"{origin}/oauth/consent", headers={"Origin": origin}, data=fields(base))
        wrong = await person.http.post(f"{origin}/oauth/consent", headers={"Origin": origin},
                                       data=fields([*base, ("csrf", "x" * 43)]))
        cross = await person.http.post(f"{origin}/oauth/consent", headers={"Origin": "https://evil.test"},
                                       data=fields([*base, ("csrf", hidden(consent.text, "csrf"))]))
        # Another browser (no session cookie) with the right CSRF token is refused too: the token is the session's.
        stranger = await http.post(f"{origin}/oauth/consent", headers={"Origin": origin},
                                   data=fields([*base, ("csrf", hidden(consent.text, "csrf"))]))
        for answer in (no_token, wrong, cross, stranger):
            assert answer.status_code == 403 and "location" not in answer.headers
        bad_signin = await person.http.post(f"{origin}/oauth/signin", headers={"Origin": origin}, data={
            "request": request_id, "token": "sgp_000000000000_" + "A" * 43})
        assert bad_signin.status_code == 401 and "set-cookie" not in bad_signin.headers


async def test_revoke_endpoint_ends_the_family(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, Person(oauth_proxy.tokens["writer"]), client_id, challenge)
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
        unknown = await http.post(proxy.endpoint("revoke"), data={"token": "sgr_nothing", "client_id": client_id})
        assert unknown.status_code == 200
        assert (await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 200
        revoked = await http.post(proxy.endpoint("revoke"), data={"token": tokens["refresh_token"],
                                                                  "client_id": client_id})
        assert revoked.status_code == 200
        assert (await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 401
        refresh = await http.post(proxy.endpoint("token"), data={"grant_type": "refresh_token",
                                                                 "refresh_token": tokens["refresh_token"],
                                                                 "client_id": client_id})
        assert refresh.status_code == 400


async def test_revocation_reaches_every_replica_through_redis(oauth_proxy: Any, redis_server: Any) -> None:
    one = await oauth_proxy.start(redis_url=redis_server.url)
    one_local = one.local
    await oauth_proxy.start(public=one.url, redis_url=redis_server.url)
    # Replica two, reached on its own port, serving the same public URL and issuer as replica one.
    two = OAuthProxy(one.url, one.issuer.replace(one_local, oauth_proxy.local), one.signing_key)
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, two)  # registered on replica two, known to replica one through Redis
        verifier, challenge = pkce()
        person = Person(oauth_proxy.tokens["writer"])
        person.origin = one_local
        back = await person.authorize(authorization_url(two, client_id, challenge))
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        tokens = (await exchange(http, one, client_id, code, verifier)).json()  # redeemed on replica one
        on_two = f"{oauth_proxy.local}/mcp"
        assert (await http.post(on_two, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 200
        revoke = await http.post(f"{one_local}/oauth/revoke", data={"token": tokens["access_token"]})
        assert revoke.status_code == 200
        refused = await http.post(on_two, headers=mcp_headers(tokens["access_token"]), json=LIST)
    assert refused.status_code == 401


async def test_on_only_with_section_and_key_and_every_half_setup_is_refused_or_off(tmp_path: Path, issue: Any,
                                                                                    caplog: Any) -> None:
    from proxy.config import ConfigError

    issue("someone", scopes=["mcp:read"])
    key = tmp_path / "key.pem"
    key.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    not_a_key = tmp_path / "bad.pem"
    not_a_key.write_text("not a key")
    rsa_key = tmp_path / "rsa.pem"
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    public = {"public_url": URL("http://127.0.0.1:9/mcp")}
    with_section, without = oauth_policy(tmp_path), tmp_path / "no-oauth.yaml"
    plain = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    plain.pop("oauth", None)
    without.write_text(yaml.safe_dump(plain))
    cases = [
        (with_section, {"oauth_signing_keys": (str(key),)}, "SCOPEGATE_PUBLIC_URL"),
        (with_section, {**public, "oauth_signing_keys": (str(not_a_key),)}, "PEM"),
        (with_section, {**public, "oauth_signing_keys": (str(rsa_key),)}, "P-256"),
        (with_section, {**public, "oauth_signing_keys": (str(key), str(key))}, "twice"),
        (str(without), {**public, "oauth_signing_keys": (str(key),)}, "no `oauth:` section"),
        (with_section, {**public, "oauth_signing_keys": (str(key),), "oidc_client_secret_file": str(key)},
         "no oauth.oidc section"),
    ]
    for policy, settings, expected in cases:
        config = Config(upstream=URL("http://127.0.0.1:9/mcp"), policy=policy, pat_file=issue.path, **settings)
        with pytest.raises(ConfigError, match=expected):
            load_identity(config, {})
    # The section without a key: off (nothing more is let in), and the log says so.
    config = Config(upstream=URL("http://127.0.0.1:9/mcp"), policy=with_section, pat_file=issue.path, **public)
    assert load_identity(config, {}).oauth is None
    assert "OAuth server is off" in caplog.text


async def test_connected_apps_lists_pats_and_grants_and_revoking_cuts_the_client_off(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"], untick=("mcp:write",))
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, person, client_id, challenge)
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
        assert (await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 200

        apps = await person.http.get(f"{origin}/oauth/apps")  # the same browser session
        assert apps.status_code == 200 and "Attack Test" in apps.text and "Revoke <bdi>writer</bdi>" in apps.text
        assert "frame-ancestors 'none'" in apps.headers["content-security-policy"]
        assert "last used 20" in apps.text  # the OAuth grant was just used; stamped like a PAT
        grant_id = "sgo_" + claims_of(tokens["access_token"])["gid"]
        stranger = await http.get(f"{origin}/oauth/apps")  # no session: the sign-in form, no one's apps
        assert "Attack Test" not in stranger.text and 'name="token"' in stranger.text

        forged = await person.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                        data={"id": grant_id, "csrf": "nope"})
        assert forged.status_code == 403
        assert (await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 200
        revoked = await person.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                         data={"id": grant_id, "csrf": hidden(apps.text, "csrf")})
        assert revoked.status_code == 303
        cut = await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)
        assert cut.status_code == 401
        refresh = await http.post(proxy.endpoint("token"), data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id})
        assert refresh.status_code == 400
        after = await person.http.get(f"{origin}/oauth/apps")
        assert "Attack Test" not in after.text and "Revoke <bdi>writer</bdi>" in after.text


async def test_revoking_the_sign_in_pat_ends_its_oauth_grants_at_refresh(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"])
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        tokens = (await exchange(http, proxy, client_id, await code_for(proxy, person, client_id, challenge),
                                 verifier)).json()
        apps = await person.http.get(f"{origin}/oauth/apps")
        pat_id = oauth_proxy.tokens["writer"].split("_")[1]
        revoked = await person.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                         data={"id": pat_id, "csrf": hidden(apps.text, "csrf")})
        assert revoked.status_code == 303
        pat_call = await http.post(proxy.url, headers=mcp_headers(oauth_proxy.tokens["writer"]), json=LIST)
        assert pat_call.status_code == 401
        refresh = await http.post(proxy.endpoint("token"), data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id})
        assert refresh.status_code == 400  # the grant the PAT capped dies with it
        # ... and the browser session that PAT opened is over.
        assert 'name="token"' in (await person.http.get(f"{origin}/oauth/apps")).text


@pytest.mark.parametrize("mode", MODES)
async def test_org_ceiling_oauth_scopes_are_the_capability_flags_capped_by_the_role(
        mode: str, oauth_proxy: Any, issue: Any) -> None:
    member = issue("kg member", scopes=[], role="member", permissions={"acme": "write"},
                   org_capabilities={"can_manage_kg": True, "can_manage_billing": True})
    proxy = await oauth_proxy.start(str(POLICIES / "org-ceiling.yaml"))
    person = Person(member)
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, person, client_id, challenge,
                              scope="perm:read perm:write perm:admin can_manage_kg can_manage_billing")
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
    # The flag the PAT claims but the member role does not allow is shown unavailable, and not granted.
    assert re.search(r"can_manage_billing</code></label>\s*<span[^>]*>unavailable: your credential does not hold",
                     person.consent_html)
    assert set(tokens["scope"].split()) == {"perm:read", "perm:write", "can_manage_kg"}
    assert claims_of(tokens["access_token"])["role"] == "member"
    async with sdk_client(proxy.url, mode, token=tokens["access_token"]) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert "rebuild_knowledge_graph" in names and "list_accounts" in names
    assert "change_billing_plan" not in names and "delete_journal_entry" not in names  # no flag, no perm:admin


async def test_oauth_routes_answer_only_for_allowed_hosts(oauth_proxy: Any) -> None:
    """DNS rebinding: a page on another name that resolves here gets nothing from the OAuth server either."""
    proxy = await oauth_proxy.start()
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient() as http:
        for method, path in (("GET", "/.well-known/oauth-authorization-server/oauth"), ("GET", "/oauth/jwks.json"),
                             ("GET", "/oauth/authorize"), ("GET", "/oauth/apps"), ("POST", "/oauth/register"),
                             ("POST", "/oauth/token"), ("POST", "/oauth/revoke"), ("POST", "/oauth/consent")):
            answer = await http.request(method, origin + path, headers={"Host": "rebound.evil.test"})
            assert answer.status_code == 403, (method, path)
        assert (await http.get(origin + "/oauth/jwks.json")).status_code == 200


@pytest.mark.parametrize("mode", MODES)
async def test_step_up_reconsent_keeps_the_grant_and_the_session(mode: str, oauth_proxy: Any,
                                                                  recorder: Recorder) -> None:
    """A call needing mcp:write answers 403 insufficient_scope; the SDK re-authorizes, the person now grants
    write, and the retried call goes through on the same MCP session (the grant, and so the credential, is the
    same one)."""
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"], untick=("mcp:write",))
    person.then_untick = ()
    storage = MemoryTokens()
    auth = sdk_oauth(proxy.url, person, storage)
    async with Client(streamable_http_client(proxy.url, http_client=httpx2.AsyncClient(auth=auth, timeout=30)),
                      mode=mode) as client:
        assert not (await client.call_tool("list_accounts", {"workspaceId": "acme"})).is_error
        first = claims_of(storage.tokens.access_token)
        held = await client.call_tool("lock_period", {"workspaceId": "acme", "period": "2026-10"})
        assert not held.is_error and held.structured_content["status"] == "confirmation_required"
        second = claims_of(storage.tokens.access_token)
    assert first["scope"] == "mcp:read" and set(second["scope"].split()) == {"mcp:read", "mcp:write"}
    assert first["gid"] == second["gid"]
    apps = await person.http.get(proxy.issuer + "/apps")
    assert apps.text.count("Test Assistant</bdi></h2>") == 1


async def test_anonymous_flood_cannot_evict_a_revocation_in_memory_mode(oauth_proxy: Any) -> None:
    """The in-process store evicts its oldest entries when full; what anyone may create without signing in lives
    in a store of its own, so filling it never brings a revoked grant back."""
    from proxy.durable import SqliteState
    from proxy.identity.lifecycle import Tree
    from proxy.identity.oauth.server import OAuthServer
    from proxy.store import MemoryStore

    store, tree = MemoryStore(limit=50), Tree(SqliteState(None))
    server = OAuthServer(small_settings(oauth_proxy), None)
    server.attach(store, tree)
    await server.grants.revoke("a" * 24, by="test", reason="a test")
    for index in range(200):  # registrations and parked requests: all anonymous
        await server.clients.register({"redirect_uris": [REDIRECT], "client_name": f"flood {index}"},
                                      server.settings.metadata())
        await server.sessions.park(b"{}", signed_in=False)
    assert await tree.revoked_any(("sgo_" + "a" * 24,))


def small_settings(oauth_proxy: Any) -> Any:
    from proxy.identity.oauth.keys import KeyRing, signing_key
    from proxy.identity.oauth.server import Settings

    key = signing_key(pem(oauth_proxy.signing_key))
    return Settings(issuer="http://127.0.0.1:9/oauth", resource="http://127.0.0.1:9/mcp", keys=KeyRing((key,)),
                    offered=("mcp:read",), known=("mcp:read",), excluded=(), clients=(), dynamic_registration=True,
                    sign_in=("pat",))


def test_chart_mounts_the_signing_keys_and_needs_the_public_url() -> None:
    from tests.test_packaging import FULL, kinds, render

    values = {**FULL, "oauth": {"existingSecret": "scopegate-oauth", "keys": ["current.pem", "next.pem"],
                                "oidcClientSecret": "oidc-secret"}}
    (deployment,) = kinds(render(values), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SCOPEGATE_OAUTH_SIGNING_KEYS"] == "/etc/scopegate/oauth/current.pem,/etc/scopegate/oauth/next.pem"
    assert env["SCOPEGATE_OIDC_CLIENT_SECRET_FILE"] == "/etc/scopegate/oauth/oidc-secret"
    assert {"name": "oauth", "mountPath": "/etc/scopegate/oauth", "readOnly": True} in container["volumeMounts"]
    with pytest.raises(Exception, match="needs publicUrl"):
        render({**values, "publicUrl": ""})


async def test_project_choice_narrows_and_connected_apps_shows_it(oauth_proxy: Any, issue: Any) -> None:
    member = issue("project member", scopes=["mcp:read"], workspaces=["acme"], projects=["alpha", "beta"])
    proxy = await oauth_proxy.start()
    person = Person(member, untick=("beta",))
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, person, client_id, challenge, scope="mcp:read")
        assert 'value="alpha" checked' in person.consent_html and 'value="beta" checked' in person.consent_html
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
        claims = claims_of(tokens["access_token"])
        assert claims["projects"] == ["alpha"] and claims["workspaces"] == ["acme"]
        apps = await person.http.get(proxy.issuer + "/apps")
    assert "Projects: alpha" in apps.text


async def test_oauth_events_join_the_audit_trail_without_secrets(oauth_proxy: Any, tmp_path: Path) -> None:
    from tests.conftest import wait_until

    trail = tmp_path / "audit.jsonl"
    proxy = await oauth_proxy.start(audit_sink=f"file:{trail}")
    async with httpx2.AsyncClient() as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, Person(oauth_proxy.tokens["writer"], untick=("mcp:write",)), client_id,
                              challenge)
        tokens = (await exchange(http, proxy, client_id, code, verifier)).json()
        await exchange(http, proxy, client_id, code, verifier)  # a replay: the grant is revoked

    def events() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in trail.read_text().splitlines()] if trail.exists() else []
        return [r for r in lines if str(r.get("method", "")).startswith("oauth/")]

    assert await wait_until(lambda: len(events()) >= 5)
    seen = [(r["method"], r["decision"], r["reason"]) for r in events()]
    assert seen == [("oauth/register", "allow", "RFC 7591"), ("oauth/signin", "allow", "pat"),
                    ("oauth/consent", "allow", "mcp:read"), ("oauth/token", "allow", "authorization_code"),
                    ("oauth/token", "deny", "authorization code replayed: grant revoked")]
    consent = events()[2]
    assert consent["target"] == client_id and consent["subject"] == "user-writer"
    assert consent["credential_id"] == "sgo_" + claims_of(tokens["access_token"])["gid"]
    text = trail.read_text()
    for secret in (code, tokens["access_token"], tokens["refresh_token"], verifier, oauth_proxy.tokens["writer"]):
        assert secret not in text


async def test_every_route_answers_an_unexpected_failure_itself(oauth_proxy: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge's last line of defence (catch_all) wraps each handler as it is added, not as a middleware: no route
    is left out (OAuth pages and endpoints, metadata, CORS preflights, the MCP endpoint), and a handler that fails
    unexpectedly is answered with a JSON-RPC 500 naming the request, never aiohttp's own page or a traceback."""
    from proxy.identity.oauth.server import OAuthServer

    async def explode(self: Any, request: Any) -> Any:
        raise RuntimeError(f"jwks exploded on {request.headers.get('Authorization')}")

    monkeypatch.setattr(OAuthServer, "jwks", explode)
    proxy = await oauth_proxy.start()
    routes = list(oauth_proxy.runners[-1].app.router.routes())
    assert len(routes) > 20 and {r.method for r in routes} >= {"GET", "POST", "DELETE", "OPTIONS"}
    assert [f"{r.method} {r.resource.canonical}" for r in routes if not getattr(r.handler, "catches_all", False)] == []
    async with httpx2.AsyncClient() as http:
        failed = await http.get(f"{proxy.issuer}/jwks.json", headers={"Authorization": "Bearer secret-xyz"})
    assert failed.status_code == 500 and failed.json()["error"]["code"] == -32603
    assert "Traceback" not in failed.text and "secret-xyz" not in failed.text and "exploded" not in failed.text
