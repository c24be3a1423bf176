"""Signing in through the organisation's OpenID Connect provider: a real one (npm oidc-provider, a certified
implementation, installed by this test into .cache/ and run with Node on loopback), its development login and
consent forms driven over HTTP with a cookie jar. The person's role comes from the `groups` claim, mapped to the
policy's roles, and caps what they may grant."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import jwt
import pytest
import yaml

from proxy.demo.run import free_port
from tests import test_oauth
from tests.conftest import POLICIES, npm_installed
from tests.test_oauth import LIST, authorization_url, exchange, hidden, mcp_headers, pkce, register

oauth_proxy = test_oauth.oauth_proxy  # the same fixture: a proxy with the OAuth server on

PACKAGE = "oidc-provider@9.13.3"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "oidc-provider"
SCRIPT = Path(__file__).resolve().parent / "oidc" / "provider.mjs"
SECRET = "test-client-secret-made-for-this-run"


@pytest.fixture(scope="session")
def oidc_package() -> Path:
    return npm_installed(PACKAGE, CACHE)


@pytest.fixture
async def sso(oidc_package: Path, oauth_proxy: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """The provider on a port of its own, and scopegate (org-ceiling policy) signing people in through it."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    policy = yaml.safe_load((POLICIES / "org-ceiling.yaml").read_text())
    policy["oauth"] = {**policy["oauth"], "sign_in": ["oidc"], "oidc": {
        "issuer": issuer, "client_id": "scopegate", "name": "Example SSO", "scopes": ["openid", "email", "groups"],
        "subject_claim": "email", "role_claim": "groups", "roles": {"accountants": "member", "viewers": "viewer"}}}
    policy_file = tmp_path / "org-ceiling-oidc.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    secret_file = tmp_path / "oidc-secret"
    secret_file.write_text(SECRET + "\n")
    proxy = await oauth_proxy.start(str(policy_file), oidc_client_secret_file=str(secret_file))
    script = oidc_package / SCRIPT.name
    shutil.copyfile(SCRIPT, script)  # beside its node_modules, where Node resolves the package from
    process = await asyncio.create_subprocess_exec("node", str(script), str(port), proxy.issuer + "/oidc/callback",
                                                   SECRET, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)  # type: ignore[union-attr]
        assert line.strip() == b"ready", (line, await process.stderr.read(2000))  # type: ignore[union-attr]
        yield proxy
    finally:
        process.terminate()
        await process.wait()


async def through_provider(http: httpx2.AsyncClient, url: str, login: str) -> httpx2.Response:
    """Follow redirects and fill the provider's login and consent forms until back on scopegate's pages."""
    ours = urlsplit(url).netloc
    response = await http.get(url)
    for _ in range(20):
        if response.is_redirect:
            url = urljoin(url, response.headers["location"])
            response = await http.get(url)
            continue
        if urlsplit(url).netloc == ours:
            return response
        action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
        assert action, response.text[:2000]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text))
        if 'name="login"' in response.text:
            fields.update(login=login, password="anything")
        url = urljoin(url, unescape(action.group(1)))
        response = await http.post(url, data=fields)
    raise AssertionError("too many steps at the provider")


async def sign_in_and_consent(proxy: Any, login: str) -> tuple[httpx2.AsyncClient, httpx2.Response, str, str]:
    """(the browser, scopegate's page after the provider, the client id, the PKCE verifier)."""
    browser = httpx2.AsyncClient(follow_redirects=False, timeout=20)
    client_id = await register(browser, proxy)
    verifier, challenge = pkce()
    page = await browser.get(authorization_url(proxy, client_id, challenge,
                                               scope="perm:read perm:write can_manage_kg can_manage_billing"))
    assert page.status_code == 200 and 'name="token"' not in page.text  # OIDC only: no token form
    start = re.search(r'href="([^"]*/oidc/start[^"]*)"', page.text)
    assert start and "Sign in with Example SSO" in page.text
    origin = proxy.issuer.removesuffix("/oauth")
    return browser, await through_provider(browser, origin + unescape(start.group(1)), login), client_id, verifier


async def test_oidc_sign_in_maps_groups_to_a_role_that_caps_the_grant(sso: Any) -> None:
    browser, consent, client_id, verifier = await sign_in_and_consent(sso, "alice")
    try:
        assert consent.status_code == 200
        assert "Signed in as <strong><bdi>alice@example.test</bdi></strong>" in consent.text
        assert re.search(r"can_manage_billing</code></label>\s*<span[^>]*>unavailable: your credential does not",
                         consent.text)  # a member may not grant billing, whatever the app asks
        origin = sso.issuer.removesuffix("/oauth")
        ticked = re.findall(r'name="scope" value="([^"]+)" checked', consent.text)
        back = await browser.post(f"{origin}/oauth/consent", headers={"Origin": origin}, data={
            "request": hidden(consent.text, "request"), "csrf": hidden(consent.text, "csrf"), "decision": "allow",
            "scope": ticked})
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        tokens = (await exchange(browser, sso, client_id, code, verifier)).json()
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert set(tokens["scope"].split()) == {"perm:read", "perm:write", "can_manage_kg"}
        assert claims["role"] == "member" and claims["sub"] == "alice@example.test"
        assert (await browser.post(sso.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 200
    finally:
        await browser.aclose()


async def test_oidc_account_without_a_mapped_role_cannot_sign_in(sso: Any) -> None:
    browser, page, _, _ = await sign_in_and_consent(sso, "nobody")
    await browser.aclose()
    assert page.status_code == 403 and "your account has no role here" in page.text
    assert "scopegate_session" not in page.headers.get("set-cookie", "")


async def test_oidc_an_unverified_email_is_not_a_person(sso: Any) -> None:
    """mallory's provider account carries alice's address, unverified: taking it as the person would hand her
    alice's grants and Connected apps. The sign-in is refused and no session starts."""
    browser, page, _, _ = await sign_in_and_consent(sso, "mallory")
    await browser.aclose()
    assert page.status_code == 403 and "has not verified this e-mail address" in page.text
    assert "scopegate_session" not in page.headers.get("set-cookie", "")


async def test_oidc_callback_only_in_the_browser_that_started_it(sso: Any) -> None:
    """Login CSRF: an attacker's own provider answer (code + state) opened in the victim's browser is refused."""
    attacker = httpx2.AsyncClient(follow_redirects=False, timeout=20)
    async with attacker:
        client_id = await register(attacker, sso)
        page = await attacker.get(authorization_url(sso, client_id, pkce()[1]))
        start = re.search(r'href="([^"]*/oidc/start[^"]*)"', page.text)
        origin = sso.issuer.removesuffix("/oauth")
        url = origin + unescape(start.group(1))  # type: ignore[union-attr]
        response = await attacker.get(url)
        while response.is_redirect and "/oidc/callback" not in response.headers["location"]:
            url = urljoin(url, response.headers["location"])
            response = await attacker.get(url)
            if not response.is_redirect:  # a provider form: fill it as the attacker
                action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
                fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text))
                if 'name="login"' in response.text:
                    fields.update(login="alice", password="x")
                url = urljoin(url, unescape(action.group(1)))  # type: ignore[union-attr]
                response = await attacker.post(url, data=fields)
        callback = urljoin(url, response.headers["location"])
    async with httpx2.AsyncClient(follow_redirects=False) as victim:
        refused = await victim.get(callback)
    assert refused.status_code == 403 and "started in another browser" in refused.text
    assert "scopegate_session" not in refused.headers.get("set-cookie", "")
