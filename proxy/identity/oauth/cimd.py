"""Client ID Metadata Documents: a `client_id` that is an HTTPS URL names the JSON document describing the client.

Fetching a URL an anonymous client chose is a server-side request forgery waiting to happen, so:
- only `https://` URLs with a host and a path, no credentials, no fragment, parsed strictly (uris.py: one reading,
  the same as aiohttp's); the same for every redirect (at most 3);
- every address the host resolves to must be globally routable: no private, loopback, link-local (cloud metadata
  lives there), shared, multicast, reserved or site-local address, nor an IPv6 address that carries such an IPv4
  address to a translator or tunnel (IPv4-mapped, 6to4, Teredo, NAT64; the local-use NAT64 prefix entirely). An
  IP-literal host, also one only `inet_aton` reads as an address (`127.1`), is checked before anything else; a name
  is checked inside the connector's resolver, so the address checked is the address connected to (no DNS rebinding
  between check and use), and no DNS cache is kept;
- 5 s for the whole fetch, 256 KiB at most, `application/json`, no cookies, no proxy from the environment;
- the document must be an object whose `client_id` is exactly the URL, with valid RFC 7591 metadata, redirect URIs
  we accept, and no client secret (CIMD clients are public);
- kept 24 h in the shared store, then revalidated with `If-None-Match` (a 304 keeps it another 24 h).

`TESTING` is the only way to let the fetcher reach loopback or trust a test CA: a module attribute set by test code
in-process. No setting, variable or file can change it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any
from urllib.parse import urljoin

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from proxy.identity.oauth.clients import Client, RegistrationRefused, check_metadata
from proxy.identity.oauth.uris import UriRefused, parse_uri
from proxy.store import Store

log = logging.getLogger("scopegate.oauth")

TIMEOUT_SECONDS = 5.0
MAX_BYTES = 256 * 1024
FRESH_SECONDS = 24 * 3600
KEEP_SECONDS = 7 * 24 * 3600  # an entry past its 24 h is kept for revalidation, not used unchecked
MAX_REDIRECTS = 3
CACHE_KEY = "scopegate:oauth-cimd:"
CACHE_GROUP = "scopegate:anonymous-documents"
MAX_DOCUMENTS = 5_000


class DocumentRefused(Exception):
    """Why a client's metadata document cannot be used, in one line (shown on our error page, logged)."""


@dataclass(frozen=True)
class Testing:
    """Test-only: networks the SSRF guard lets through and a TLS context trusting a test CA."""

    allowed: tuple[IPv4Network | IPv6Network, ...] = ()
    ssl_context: ssl.SSLContext | None = None


TESTING: Testing | None = None
_now = time.time  # the cache's clock (tests move it forward)


def literal_address(host: str) -> IPv4Address | IPv6Address | None:
    """The address a host names literally, read as leniently as anything that might connect to it does, or None
    for a name. `socket.inet_aton` (and so getaddrinfo, and browsers) read `127.1`, `2130706433`, `0x7f.1` and
    `0177.0.0.1` as IPv4 addresses that `ip_address` does not: each is an address here, so it is checked."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ip_address(text)
    except ValueError:
        pass
    if not text or ":" in text:
        return None
    try:
        return IPv4Address(socket.inet_aton(text.removesuffix(".")))
    except (OSError, ValueError):
        return None


NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
NAT64_LOCAL_USE = IPv6Network("64:ff9b:1::/48")  # RFC 8215: where the IPv4 address sits is the operator's choice
SITE_LOCAL = IPv6Network("fec0::/10")  # deprecated (RFC 3879), still routed inside some networks


def embedded_ipv4(address: IPv6Address) -> tuple[IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries to a translator or tunnel, which may deliver to them."""
    found: list[IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:  # 2002::/16
        found.append(address.sixtofour)
    if address.teredo is not None:  # 2001::/32: (server, client)
        found.extend(address.teredo)
    if address in NAT64_WELL_KNOWN:
        found.append(IPv4Address(int(address) & 0xFFFFFFFF))
    return tuple(found)


def _not_public(address: IPv4Address | IPv6Address) -> bool:
    return not address.is_global or address.is_multicast or address.is_reserved


def address_refused(host: str) -> str | None:
    """None when `host` (an IP address, also as inet_aton reads one) is one we may connect to, else why not.
    ValueError when `host` is a name (checked where it resolves)."""
    address = literal_address(host)
    if address is None:
        raise ValueError(f"{host!r} is not an IP address")
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if TESTING is not None and any(address in net for net in TESTING.allowed):
        return None
    if isinstance(address, IPv6Address):
        # `is_global` judges the IPv6 prefix, not the IPv4 address a 6to4 relay, a Teredo server or a NAT64
        # gateway delivers to: 2002:a9fe:a9fe:: is "global" and reaches 169.254.169.254.
        for inner in embedded_ipv4(address):
            if _not_public(inner):
                return f"{address} (which reaches {inner}) is not a public address"
        if address in NAT64_LOCAL_USE or address in SITE_LOCAL:
            return f"{address} is not a public address"
    if _not_public(address):
        return f"{address} is not a public address"
    return None


def url_refused(url: str, *, need_path: bool = True) -> str | None:
    """None for a URL we may fetch a document from (its host is checked again where it resolves), else why not.
    Parsed strictly (uris.py), so the host checked here is the host aiohttp connects to."""
    try:
        uri = parse_uri(url)
    except UriRefused as exc:
        return f"not a URL with one reading: it {exc}"
    if uri.scheme != "https" or uri.host is None:
        return "not an https:// URL"
    if need_path and uri.path in ("", "/"):
        return "a URL without a path"
    if uri.address is None:
        return None  # a name: checked when it resolves
    return address_refused(str(uri.address))


class GuardedResolver(AbstractResolver):
    """Resolves, then refuses the whole name if any of its addresses is not public."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            problem = address_refused(result["host"])
            if problem:
                raise OSError(f"{host} resolves to {problem.split(' is ')[0]}, not a public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Cached:
    client: Client
    etag: str | None
    fresh_until: float

    def to_json(self) -> str:
        return orjson.dumps({"client": orjson.loads(self.client.to_json()), "etag": self.etag,
                             "fresh_until": self.fresh_until}).decode()

    @classmethod
    def from_json(cls, raw: str) -> Cached:
        data = orjson.loads(raw)
        return cls(Client.from_json(orjson.dumps(data["client"])), data["etag"], data["fresh_until"])


def client_from_document(url: str, body: bytes, server_metadata: dict[str, Any]) -> Client:
    """Pure: the fetched bytes in, a Client out, or DocumentRefused."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DocumentRefused("the client's metadata document is not JSON") from None
    if not isinstance(document, dict):
        raise DocumentRefused("the client's metadata document is not a JSON object")
    if document.get("client_id") != url:
        raise DocumentRefused("the client's metadata document names another client_id")
    if document.get("token_endpoint_auth_method", "none") != "none" or "client_secret" in document:
        raise DocumentRefused("a client described by a metadata document is public: token_endpoint_auth_method none")
    try:
        name, uris = check_metadata(document, server_metadata)
    except RegistrationRefused as exc:
        raise DocumentRefused(f"the client's metadata document: {exc.description}") from None
    return Client(url, name, uris, f"a metadata document published at {parse_uri(url).host} ({url})")


class MetadataDocuments:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            testing = TESTING
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(), use_dns_cache=False, limit=20,
                                             ssl=testing.ssl_context if testing and testing.ssl_context else True)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS), auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def client(self, url: str, server_metadata: dict[str, Any]) -> Client:
        problem = url_refused(url)
        if problem:
            raise DocumentRefused(f"the client_id is {problem}")
        key = CACHE_KEY + url
        raw = await self.store.get(key)
        cached = Cached.from_json(raw) if raw else None
        if cached is not None and cached.fresh_until > _now():
            return cached.client
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                status, etag, body = await self._fetch(url, cached.etag if cached else None)
        except TimeoutError:
            raise DocumentRefused("the client's metadata document did not arrive within 5 s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DocumentRefused(f"the client's metadata document could not be fetched ({_reason(exc)})") from None
        if status == 304 and cached is not None:
            client = cached.client
        else:
            client = client_from_document(url, body, server_metadata)
        fresh = Cached(client, etag or (cached.etag if status == 304 and cached else None), _now() + FRESH_SECONDS)
        # Anyone may name a document: the cache is a bounded group of its own, least recently used first out.
        await self.store.set_capped(key, fresh.to_json(), ttl=KEEP_SECONDS, group=CACHE_GROUP, limit=MAX_DOCUMENTS)
        log.info("client metadata document %s", "revalidated" if status == 304 else "fetched",
                 extra={"client_id": url})
        return client

    async def _fetch(self, url: str, etag: str | None) -> tuple[int, str | None, bytes]:
        headers = {"Accept": "application/json"}
        if etag:
            headers["If-None-Match"] = etag
        for _ in range(MAX_REDIRECTS + 1):
            async with self._client().get(url, headers=headers, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308):
                    target = urljoin(url, response.headers.get("Location", ""))
                    problem = url_refused(target, need_path=False)
                    if problem:
                        raise DocumentRefused(f"the client's metadata document redirected to {problem}")
                    url = target
                    continue
                if response.status == 304:
                    return 304, response.headers.get("ETag"), b""
                if response.status != 200:
                    raise DocumentRefused(f"the client's metadata document answered {response.status}")
                if response.content_type != "application/json":
                    raise DocumentRefused("the client's metadata document is not application/json")
                if (response.content_length or 0) > MAX_BYTES:
                    raise DocumentRefused("the client's metadata document is larger than 256 KiB")
                body = await response.content.read(MAX_BYTES + 1)
                if len(body) > MAX_BYTES:
                    raise DocumentRefused("the client's metadata document is larger than 256 KiB")
                return 200, response.headers.get("ETag"), body
        raise DocumentRefused("the client's metadata document redirected too often")


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    text = str(os_error or exc)
    return text if "public address" in text else type(exc).__name__
