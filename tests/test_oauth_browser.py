"""The Done-when of the OAuth server, with a real browser: the official SDK's OAuth client connects through
scopegate; Debian's Chromium (driven by Playwright, JavaScript off) signs in, unticks a scope by its label and
approves with the keyboard; the client works within exactly the consented scopes; then the person revokes the app
on Connected apps and the client's next call is refused."""

from __future__ import annotations

import asyncio
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
