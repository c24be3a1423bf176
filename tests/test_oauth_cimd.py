"""Client ID Metadata Documents: the SSRF guard refuses before connecting, and a real HTTPS document server on
loopback (trustme certificate) drives the happy path, the cache and the revalidation.

The document server is on 127.0.0.1, which the guard refuses; the happy-path tests open it with `cimd.TESTING`,
a module attribute only test code can set (no setting or variable reaches it). The refusal tests run without it."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from ipaddress import ip_network
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import orjson
import pytest
import trustme
from aiohttp import web
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from proxy.demo.run import free_port
from proxy.identity.oauth import cimd
from tests import test_oauth
from tests.conftest import MODES
from tests.test_oauth import REDIRECT, MemoryTokens, Person, authorization_url, pkce

oauth_proxy = test_oauth.oauth_proxy  # the same fixture: a proxy with the OAuth server on


class DocumentServer:
    """HTTPS on 127.0.0.1 with a certificate for `localhost`; counts every request that reached it."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.port = free_port()
        self.base = f"https://localhost:{self.port}"
        self.requests: list[tuple[str, str | None]] = []  # (path, If-None-Match)
        self.runner: web.AppRunner | None = None

    def document(self, path: str = "/client.json", **extra: Any) -> dict[str, Any]:
        return {"client_id": self.base + path, "client_name": "Docs Assistant", "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "token_endpoint_auth_method": "none", **extra}

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.path, request.headers.get("If-None-Match")))
            if request.path == "/client.json":
                if request.headers.get("If-None-Match") == '"v1"':
                    return web.Response(status=304, headers={"ETag": '"v1"'})
                return web.json_response(self.document(), headers={"ETag": '"v1"'})
            if request.path == "/wrong-id.json":
                return web.json_response(self.document(client_id="https://elsewhere.test/client.json"))
            if request.path == "/big.json":
                return web.json_response(self.document("/big.json", padding="x" * (300 * 1024)))
            if request.path == "/slow.json":
                await asyncio.sleep(8)
                return web.json_response(self.document("/slow.json"))
            if request.path == "/to-private":  # loopback, but outside what the test lets through
                raise web.HTTPFound(f"https://127.0.0.2:{self.port}/client.json")
            if request.path == "/to-http":
                raise web.HTTPFound(f"http://localhost:{self.port}/client.json")
            return web.Response(status=404)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost").configure_cert(context)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=context).start()


@pytest.fixture
async def documents() -> AsyncIterator[DocumentServer]:
    server = DocumentServer()
    await server.start()
    yield server
    await server.runner.cleanup()  # type: ignore[union-attr]


@pytest.fixture
def loopback_allowed(documents: DocumentServer) -> Any:
    trusting = ssl.create_default_context()
    documents.ca.configure_trust(trusting)
    cimd.TESTING = cimd.Testing(allowed=(ip_network("127.0.0.1/32"), ip_network("::1/128")), ssl_context=trusting)
    yield
    cimd.TESTING = None


async def refused_page(proxy: Any, client_id: str) -> str:
    _, challenge = pkce()
    async with httpx2.AsyncClient(timeout=30) as http:
        page = await http.get(authorization_url(proxy, client_id, challenge))
    assert page.status_code == 400 and "location" not in page.headers
    return page.text


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_client_with_a_metadata_document_url(mode: str, oauth_proxy: Any, documents: DocumentServer,
                                                       loopback_allowed: Any) -> None:
    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"])
    answer: dict[str, AuthorizationCodeResult] = {}

    async def redirect_handler(url: str) -> None:
        back = await person.authorize(url)
        query = parse_qs(urlsplit(back.headers["location"]).query)
        answer["r"] = AuthorizationCodeResult(code=query["code"][0], state=query["state"][0], iss=query["iss"][0])

    async def callback_handler() -> AuthorizationCodeResult:
        return answer.pop("r")

    storage = MemoryTokens()
    auth = OAuthClientProvider(proxy.url, OAuthClientMetadata(redirect_uris=[REDIRECT]), storage, redirect_handler,
                               callback_handler, client_metadata_url=documents.base + "/client.json")
    async with Client(streamable_http_client(proxy.url, http_client=httpx2.AsyncClient(auth=auth, timeout=30)),
                      mode=mode) as client:
        assert "list_accounts" in {t.name for t in (await client.list_tools()).tools}
    assert storage.client is not None and storage.client.client_id == documents.base + "/client.json"
    assert "Docs Assistant" in person.consent_html
    assert "a metadata document published at localhost" in person.consent_html
    assert documents.requests == [("/client.json", None)]


async def test_metadata_document_client_errors_stay_on_our_page(oauth_proxy: Any, documents: DocumentServer,
                                                                loopback_allowed: Any) -> None:
    """A metadata document is the client's own word, not the organisation's: like a self-registered client, its
    /authorize errors are shown on scopegate's page, never redirected to the URI the document names."""
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=30) as http:
        page = await http.get(authorization_url(proxy, documents.base + "/client.json", pkce()[1], response_type="x"))
    assert page.status_code == 400 and "location" not in page.headers
    assert "(unsupported_response_type)" in page.text and "nothing was sent back to it" in page.text


async def test_cached_for_a_day_then_revalidated_with_if_none_match(oauth_proxy: Any, documents: DocumentServer,
                                                                    loopback_allowed: Any, monkeypatch: Any) -> None:
    proxy = await oauth_proxy.start()
    client_id = documents.base + "/client.json"
    async with httpx2.AsyncClient() as http:
        for _ in range(2):
            page = await http.get(authorization_url(proxy, client_id, pkce()[1]))
            assert page.status_code == 200 and 'name="token"' in page.text
        assert documents.requests == [("/client.json", None)]  # the second authorization used the cache
        clock = [time.time() + 86400 + 1]  # a day later: the entry is due for revalidation
        monkeypatch.setattr(cimd, "_now", lambda: clock[0])
        assert (await http.get(authorization_url(proxy, client_id, pkce()[1]))).status_code == 200
        assert (await http.get(authorization_url(proxy, client_id, pkce()[1]))).status_code == 200
        clock[0] += 86400 + 1
        assert (await http.get(authorization_url(proxy, client_id, pkce()[1]))).status_code == 200
    # Conditional, answered 304 and still usable; fresh for another day after it (the middle request used it).
    assert documents.requests[1:] == [("/client.json", '"v1"')] * 2


# Through the proxy only loopback targets: should the guard ever break, the test still sends nothing off this
# machine. Every other non-public range is checked on the pure function below.
@pytest.mark.parametrize(("client_id", "reason"), [
    ("https://127.0.0.1:{port}/client.json", "127.0.0.1 is not a public address"),  # the server is really there
    ("https://localhost:{port}/client.json", "localhost resolves to 127.0.0.1, not a public address"),
    ("https://[::1]:{port}/client.json", "::1 is not a public address"),
    ("https://[::ffff:127.0.0.1]:{port}/client.json", "127.0.0.1 is not a public address"),  # IPv4-mapped
    ("https://user:pw@localhost:{port}/client.json", "must not carry user information"),
    ("https://localhost:{port}/", "a URL without a path"),
])
async def test_ssrf_guard_refuses_before_connecting(client_id: str, reason: str, oauth_proxy: Any,
                                                    documents: DocumentServer) -> None:
    assert cimd.TESTING is None
    proxy = await oauth_proxy.start()
    text = await refused_page(proxy, client_id.format(port=documents.port))
    assert reason in text
    assert documents.requests == []  # nothing reached the server


@pytest.mark.parametrize("address", ["10.0.0.5", "172.16.0.1", "192.168.1.10", "169.254.169.254", "100.64.0.1",
                                     "0.0.0.0", "127.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1",
                                     "224.0.0.1", "240.0.0.1", "fd00:ec2::254"])
def test_non_public_addresses_refused(address: str) -> None:
    assert cimd.address_refused(address) is not None


@pytest.mark.parametrize(("address", "reaches"), [
    # 6to4 (2002::/16) carries its IPv4 address in bits 16-47; `is_global` judges the prefix and said public.
    ("2002:a9fe:a9fe::1", "169.254.169.254"), ("2002:7f00:1::", "127.0.0.1"), ("2002:a00:1::", "10.0.0.1"),
    ("2002:c0a8:101::", "192.168.1.1"), ("2002:6440:1::", "100.64.0.1"), ("2002::", "0.0.0.0"),
    # Teredo (2001::/32): server in bits 32-63, client (inverted) in the last 32.
    ("2001:0:a00:1::", "10.0.0.1"), ("2001:0:5db8:d70e::80ff:fffe", "127.0.0.1"),
    # NAT64, RFC 6052 well-known prefix: the last 32 bits.
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"), ("64:ff9b::7f00:1", "127.0.0.1"), ("64:ff9b::c0a8:1", "192.168.0.1"),
])
def test_ipv6_carrying_a_non_public_ipv4_is_refused_by_what_it_reaches(address: str, reaches: str) -> None:
    assert cimd.address_refused(address) == f"{address} (which reaches {reaches}) is not a public address"


@pytest.mark.parametrize("address", [
    "fec0::1", "fec0:0:0:ffff::1", "feff::1",  # deprecated site-local fec0::/10: `is_global` said public
    "64:ff9b:1::a00:1", "64:ff9b:1:ffff::5db8:d822",  # local-use NAT64 (RFC 8215): where IPv4 sits is local choice
    "::7f00:1", "::a9fe:a9fe",  # deprecated IPv4-compatible
])
def test_site_local_and_local_use_translation_prefixes_refused(address: str) -> None:
    assert cimd.address_refused(address) == f"{address} is not a public address"


@pytest.mark.parametrize(("host", "reads"), [
    ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"), ("017700000001", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("10.1", "10.0.0.1"),
    ("169.254.43518", "169.254.169.254"), ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"), ("0", "0.0.0.0"),
    ("[::1]", "::1"), ("fe80::1%eth0", "fe80::1"),
])
def test_hosts_inet_aton_reads_as_addresses_are_checked_as_addresses(host: str, reads: str) -> None:
    """main's `ip_address` took these for names; getaddrinfo and browsers read them as addresses."""
    assert str(cimd.literal_address(host)) == reads
    assert cimd.address_refused(host) == f"{reads} is not a public address"
    assert cimd.url_refused(f"https://{host}/client.json") is not None  # and never fetched


def test_names_stay_names_for_the_resolver() -> None:
    for name in ("example.com", "app.example", "localhost", "xn--bcher-kva.example", "1.2.3.example"):
        assert cimd.literal_address(name) is None
        with pytest.raises(ValueError):
            cimd.address_refused(name)
        assert cimd.url_refused(f"https://{name}/client.json") is None  # checked when it resolves


def test_public_addresses_allowed() -> None:
    for address in ("93.184.215.14", "2606:4700::1111", "2002:5db8:d70e::1", "::ffff:93.184.215.14",
                    "1.1.1.1", "2a00:1450:4001::1"):
        assert cimd.address_refused(address) is None, address


@pytest.mark.parametrize(("path", "reason"), [
    ("/to-private", "redirected to 127.0.0.2 is not a public address"),
    ("/to-http", "redirected to not an https:// URL"),
    ("/big.json", "larger than 256 KiB"),
    ("/wrong-id.json", "names another client_id"),
    ("/missing.json", "answered 404"),
])
async def test_bad_documents_and_redirects_refused(path: str, reason: str, oauth_proxy: Any,
                                                   documents: DocumentServer, loopback_allowed: Any) -> None:
    proxy = await oauth_proxy.start()
    text = await refused_page(proxy, documents.base + path)
    assert reason in text.replace("&#39;", "'")


async def test_slow_document_refused_after_five_seconds(oauth_proxy: Any, documents: DocumentServer,
                                                        loopback_allowed: Any) -> None:
    proxy = await oauth_proxy.start()
    text = await refused_page(proxy, documents.base + "/slow.json")
    assert "did not arrive within 5 s" in text


def test_document_rules_pure() -> None:
    url = "https://app.example/oauth/client.json"
    meta = {"scopes_supported": ["mcp:read"], "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"]}
    good = {"client_id": url, "client_name": "X", "redirect_uris": ["http://127.0.0.1:9/cb"]}
    assert cimd.client_from_document(url, orjson.dumps(good), meta).redirect_uris == ("http://127.0.0.1:9/cb",)
    for bad in ({**good, "client_id": url + "?"}, {**good, "token_endpoint_auth_method": "client_secret_basic"},
                {**good, "redirect_uris": ["http://evil.example/cb"]}, {**good, "grant_types": ["password"]},
                [good]):
        with pytest.raises(cimd.DocumentRefused):
            cimd.client_from_document(url, orjson.dumps(bad), meta)
