"""CORS for browser-based MCP clients, driven by the Origin allow-list: preflights answered for allowed origins,
the headers a client must read exposed, and nothing at all for an origin that is not allowed. Checked with plain
HTTP requests and with Debian's Chromium running a page on another origin."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.demo.run import free_port
from proxy.origin import OriginPolicy
from tests.conftest import TOKENS, Recorder
from tests.test_identity import call

GOOD = "http://localhost:6274"  # the Inspector's web UI: loopback, allowed by default
EVIL = "https://evil.example"
ASKED = "authorization, content-type, mcp-protocol-version, mcp-method, mcp-session-id, mcp-param-workspace"


async def preflight(url: str, origin: str, method: str = "POST", headers: str = ASKED) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as http, http.options(url, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers,
    }) as resp:
        await resp.read()
        return resp


async def test_preflight_from_an_allowed_origin(proxy_url: str, recorder: Recorder) -> None:
    resp = await preflight(proxy_url, GOOD)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == GOOD
    assert set(resp.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST", "DELETE"}
    assert resp.headers["Access-Control-Allow-Headers"] == ASKED
    assert "Access-Control-Allow-Credentials" not in resp.headers and resp.headers["Vary"] == "Origin"
    bare = await preflight(proxy_url, GOOD, "GET", headers="")
    listed = {h.strip().lower() for h in bare.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id",
            "mcp-method", "mcp-name"} <= listed
    metadata = proxy_url.rsplit("/", 1)[0] + "/.well-known/oauth-protected-resource/mcp"
    assert (await preflight(metadata, GOOD, "GET", headers="")).status == 204  # discovery from a browser too
    assert recorder.received == []  # preflights never reach the upstream


@pytest.mark.parametrize(("origin", "method", "headers"), [
    (EVIL, "POST", ASKED),  # not on the allow-list
    ("null", "POST", ASKED),  # sandboxed frames, file:// pages
    (GOOD, "PUT", ASKED),  # a method MCP does not use
    (GOOD, "POST", "authorization, x-app-token"),  # a header MCP does not use (here: the upstream's secret)
])
async def test_preflight_refused_without_cors_headers(proxy_url: str, origin: str, method: str,
                                                      headers: str) -> None:
    resp = await preflight(proxy_url, origin, method, headers)
    assert resp.status == 403
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_answers_expose_what_clients_read(proxy_url: str, recorder: Recorder) -> None:
    ok = await call(proxy_url, TOKENS["writer"], {"Origin": GOOD})
    assert ok.status == 200 and ok.headers["Access-Control-Allow-Origin"] == GOOD
    exposed = {h.strip().lower() for h in ok.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"mcp-session-id", "www-authenticate", "mcp-protocol-version"} <= exposed
    unauthenticated = await call(proxy_url, None, {"Origin": GOOD})
    assert unauthenticated.status == 401 and unauthenticated.headers["Access-Control-Allow-Origin"] == GOOD
    evil = await call(proxy_url, TOKENS["writer"], {"Origin": EVIL})
    assert evil.status == 403 and not [h for h in evil.headers if h.lower().startswith("access-control-")]
    plain = await call(proxy_url, TOKENS["writer"])  # not a browser: no CORS headers
    assert plain.status == 200 and "Access-Control-Allow-Origin" not in plain.headers


CHROMIUM = "/usr/bin/chromium"
PAGE = """<!doctype html><script>
fetch(%(url)r, {method: "POST", headers: {"Authorization": "Bearer %(token)s", "Content-Type": "application/json",
  "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"},
  body: JSON.stringify({jsonrpc: "2.0", id: 1, method: "initialize", params: {protocolVersion: "2025-11-25",
    capabilities: {}, clientInfo: {name: "browser", version: "1"}}})})
 .then(r => { document.title = "status " + r.status + " session " + (r.headers.get("Mcp-Session-Id") ? "yes" : "no"); })
 .catch(e => { document.title = "blocked " + e.name; });
</script>"""


async def test_a_real_browser_on_another_origin(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    """Chromium runs the page on one origin and calls scopegate on another: allowed origin works end to end and
    reads the session id; an origin off the list is blocked by the browser itself."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        raise RuntimeError("Debian's chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    from playwright.async_api import async_playwright

    page_port = free_port()
    good, bad = f"http://localhost:{page_port}", f"http://127.0.0.1:{page_port}"
    proxy = await start_proxy(upstream.url, origin_policy=OriginPolicy(
        hosts=("127.0.0.1", "localhost"), origins=(good,)))

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE % {"url": proxy, "token": TOKENS["writer"]}, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", page_port).start()
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                tab = await browser.new_page()
                for origin, expected in ((good, "status 200 session yes"), (bad, "blocked TypeError")):
                    await tab.goto(origin + "/")
                    await tab.wait_for_function("document.title !== ''", timeout=20_000)
                    assert await tab.title() == expected, origin
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
