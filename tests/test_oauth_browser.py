"""The Done-when of the OAuth server, with a real browser: the official SDK's OAuth client connects through
scopegate; Debian's Chromium (driven by Playwright, JavaScript off) signs in, unticks a scope by its label and
approves with the keyboard; the client works within exactly the consented scopes; then the person revokes the app
on Connected apps and the client's next call is refused."""

from __future__ import annotations

import asyncio
import html
import shutil
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from proxy.demo.run import free_port
from tests import test_oauth
from tests.conftest import MODES, Recorder
from tests.test_oauth import LIST, MemoryTokens, mcp_headers

oauth_proxy = test_oauth.oauth_proxy  # the same fixture: a proxy with the OAuth server on

CHROMIUM = "/usr/bin/chromium"


class Callback:
    """The client's loopback redirect URI, as desktop MCP clients run one: it records what the browser brings."""

    def __init__(self) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}/callback"
        self.results: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def callback(request: web.Request) -> web.Response:
            await self.results.put(dict(request.query))
            return web.Response(text="You can close this window.")

        app = web.Application()
        app.router.add_get("/callback", callback)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


@pytest.fixture
async def browser() -> Any:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        raise RuntimeError("Debian's chromium is not installed: apt-get install -y chromium chromium-driver "
                           "(.ci/run does it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # No JavaScript: the pages must work without it (and the CSP allows none anyway).
        context = await launched.new_context(java_script_enabled=False)
        yield context
        await context.close()
        await launched.close()


@pytest.mark.parametrize("mode", MODES)
async def test_real_browser_consent_then_revoke_on_connected_apps(mode: str, oauth_proxy: Any, browser: Any,
                                                                   recorder: Recorder, tmp_path: Path) -> None:
    proxy = await oauth_proxy.start()
    callback = Callback()
    await callback.start()
    page = await browser.new_page()
    asked = []

    async def redirect_handler(authorization_url: str) -> None:
        asked.append(authorization_url)
        if len(asked) > 1:
            raise CutOff  # after the revocation: the client's call was refused and it must ask again
        await page.goto(authorization_url)
        await page.get_by_label("Your personal access token or admin key").fill(oauth_proxy.tokens["writer"])
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("heading", name="Allow Browser Assistant").wait_for()
        assert await page.get_by_label("mcp:read").is_checked()
        await page.get_by_label("mcp:write").uncheck()  # the person grants read only
        await page.get_by_label("Or only this workspace").fill("acme")
        await page.screenshot(path=str(tmp_path / "consent.png"), full_page=True)
        await page.get_by_role("button", name="Allow").focus()
        await page.keyboard.press("Enter")  # keyboard, not a mouse click
        await page.wait_for_url(lambda url: url.startswith(callback.uri), wait_until="load")

    async def callback_handler() -> AuthorizationCodeResult:
        query = await asyncio.wait_for(callback.results.get(), 20)
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

    storage = MemoryTokens()
    auth = OAuthClientProvider(proxy.url, OAuthClientMetadata(client_name="Browser Assistant",
                                                              redirect_uris=[callback.uri]),
                               storage, redirect_handler, callback_handler)
    try:
        await use_then_revoke(proxy, auth, mode, page, recorder, tmp_path)
    except BaseException as exc:  # the SDK surfaces it from its transport's task group
        found = leaves(exc)
        if not any(isinstance(leaf, CutOff) for leaf in found) or any(isinstance(leaf, AssertionError)
                                                                     for leaf in found):
            raise
    finally:
        await callback.runner.cleanup()  # type: ignore[union-attr]
    assert len(asked) == 2  # the call after the revocation was refused (401) and the client had to ask again
    async with httpx2.AsyncClient() as http:
        refused = await http.post(proxy.url, headers=mcp_headers(storage.tokens.access_token), json=LIST)
    assert refused.status_code == 401


class CutOff(Exception):
    pass


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


async def use_then_revoke(proxy: Any, auth: Any, mode: str, page: Any, recorder: Recorder, tmp_path: Path) -> None:
    async with Client(streamable_http_client(proxy.url, http_client=httpx2.AsyncClient(auth=auth, timeout=30)),
                      mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "list_accounts" in names and "create_journal_entry" not in names  # exactly what was consented
        assert not (await client.call_tool("list_accounts", {})).is_error  # the grant's workspace: injected
        assert recorder.calls("tools/call")[-1]["params"]["arguments"]["workspaceId"] == "acme"

        # The person opens Connected apps in the same browser and revokes the app.
        await page.goto(proxy.issuer + "/apps")
        await page.get_by_role("heading", name="Browser Assistant").wait_for()
        await page.screenshot(path=str(tmp_path / "apps.png"), full_page=True)
        await page.get_by_role("button", name="Revoke Browser Assistant").click()
        await page.get_by_text("Revoked.").wait_for()
        assert await page.get_by_role("heading", name="Browser Assistant").count() == 0

        await client.call_tool("list_accounts", {})  # refused: the redirect handler raises CutOff
        raise AssertionError("the call after the revocation went through")


class Framer:
    """Someone else's page on loopback: another port, so another origin but the same site, and the person's
    `SameSite=Lax` session cookie goes along into its frames. It frames what it is given, invisibly in a real
    attack (opacity 0 over a button of its own); visibly here."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.runner: web.AppRunner | None = None

    async def start(self, targets: dict[str, str]) -> None:
        """`targets`: frame name -> URL; the frame named `control` shows the framer's own page."""
        targets = {"control": self.url + "own", **targets}
        frames = "".join(f'<iframe name="{name}" src="{html.escape(url)}" width="900" height="700"></iframe>'
                         for name, url in targets.items())

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=f"<!doctype html><title>Win a prize</title>{frames}", content_type="text/html")

        async def own(request: web.Request) -> web.Response:
            return web.Response(text="<!doctype html><p>the framer's own page</p>", content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/own", own)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


async def test_consent_page_cannot_be_framed_through_a_hostile_redirect_uri(oauth_proxy: Any, browser: Any,
                                                                             redis_server: Any) -> None:
    """Issue 24 item 1, in Chromium. main registered this redirect URI and wrote its netloc raw into the consent
    page's CSP: `form-action 'self' https://localhost\\ https: ; frame-ancestors *;` before its own
    `frame-ancestors 'none'`. The first directive of a name wins (and then X-Frame-Options is ignored), so another
    site framed the consent and one click on Allow sent the code away. Now the registration is refused; a record
    made under the old rules (the store keeps it 30 days, across an upgrade) gets an error page that cannot be
    framed; and an honest client's consent page cannot be framed either."""
    from redis.asyncio import Redis

    from proxy.identity.oauth.clients import CLIENT_KEY, Client

    hostile = "https://localhost\\ https: ; frame-ancestors *;/cb"
    proxy = await oauth_proxy.start(redis_url=redis_server.url)
    callback = Callback()
    await callback.start()
    _, challenge = test_oauth.pkce()
    async with httpx2.AsyncClient() as http:
        refused = await http.post(proxy.endpoint("register"), json={"client_name": "Framer",
                                                                    "redirect_uris": [hostile]})
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_redirect_uri"
        honest = await test_oauth.register(http, proxy, callback.uri)
    stale = "sgc_" + "f" * 32
    redis = Redis.from_url(redis_server.url)
    await redis.set(CLIENT_KEY + stale, Client(stale, "Framer", (hostile,), "registered itself (RFC 7591)")
                    .to_json(), ex=600)
    await redis.aclose()

    def authorize(client_id: str, redirect_uri: str) -> str:
        return test_oauth.authorization_url(proxy, client_id, challenge, redirect_uri=redirect_uri)

    page = await browser.new_page()
    try:
        # The person is signed in to scopegate in this browser: the honest client's consent page shows.
        await page.goto(authorize(honest, callback.uri))
        await page.get_by_label("Your personal access token or admin key").fill(oauth_proxy.tokens["writer"])
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Allow").wait_for()

        framer = Framer()
        await framer.start({"stale": authorize(stale, hostile), "honest": authorize(honest, callback.uri)})
        try:
            await page.goto(framer.url, wait_until="load")
            control = page.frame(name="control")  # a frame that may load does load: the check below can see one
            assert control is not None and await control.get_by_text("the framer's own page").count() == 1
            for name in ("stale", "honest"):
                frame = page.frame(name=name)
                assert frame is not None
                # Chromium replaces a frame its CSP forbids with its own error page: nothing of ours renders.
                assert frame.url.startswith("chrome-error://"), (name, frame.url)
                assert await frame.get_by_role("button", name="Allow").count() == 0
        finally:
            await framer.runner.cleanup()  # type: ignore[union-attr]
        # What the frame would have shown: our error page for the stale record, refused before any consent.
        shown = await page.goto(authorize(stale, hostile))
        assert shown is not None and shown.status == 400
        assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
        assert "*" not in shown.headers["content-security-policy"]
        assert await page.get_by_text("no longer accepted").count() == 1
    finally:
        await page.close()
        await callback.runner.cleanup()  # type: ignore[union-attr]
