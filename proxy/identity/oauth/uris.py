"""URIs a client chooses (redirect URIs, a metadata document's URL), parsed once, strictly, into a typed value.

A redirect URI is read by several parsers that disagree on hostile text: Python's `urlsplit` at registration, the
browser's WHATWG URL parser when it follows the redirect, and a browser's CSP parser when the URI's origin goes
into our `Content-Security-Policy`. `https://host\\ https: ; frame-ancestors *;/cb` was one host to `urlsplit`,
another to a browser, and three CSP directives in our header. So only URIs that every reader parses the same way
are accepted:

- RFC 3986 characters only: no space, backslash, control character (CR/LF), quote, `<>`, non-ASCII, and `%` only
  in a `%XX` escape; no fragment;
- an authority has no userinfo; its host is a DNS name of letter-digit-hyphen labels (A-labels for international
  names) whose last label is not a number (WHATWG reads `127.1` or `0x7f.1` as IPv4), or a dotted-quad IPv4
  address, or a bracketed IPv6 address without zone; a port is decimal, 1-65535, without leading zeros;
- no dot-segments (`.`, `..`, or their `%2e` spellings) that a browser would resolve away.

The text itself is kept only to be compared byte for byte (OAuth 2.1 §4.1.1); everything written elsewhere, such as
a CSP source, is serialised from the parsed parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

MAX_LENGTH = 2000
# RFC 3986 §2: unreserved, reserved (gen-delims and sub-delims) and `%` (checked to start an escape below).
URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = re.compile(rf"{OCTET}(?:\.{OCTET}){{3}}")
NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")  # WHATWG's "ends in a number": the host is then parsed as IPv4
PORT = re.compile(r"[1-9][0-9]{0,4}")
DOT_SEGMENTS = frozenset({".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Schemes that are never a native app's redirect (they run, read or show something instead of opening the app).
NOT_AN_APP = frozenset({"javascript", "data", "file", "vbscript", "blob", "about", "filesystem", "view-source"})


class UriRefused(ValueError):
    """Why a URI is not accepted, as a phrase to follow its name: `a redirect URI {reason}`."""


def _named(character: str) -> str:
    if character == " ":
        return "a space"
    if character == "\\":
        return "a backslash"
    if character in "\r\n":
        return "a line break (CR or LF)"
    if ord(character) < 0x20 or ord(character) == 0x7F:
        return "a control character"
    if ord(character) > 0x7F:
        return "a non-ASCII character (write an international name in its xn-- form)"
    return f"the character {character!r}"


def _host(text: str) -> tuple[str, IPv4Address | IPv6Address | None]:
    """A host as written in an authority, serialised (lower-case name, dotted quad, [compressed IPv6])."""
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else ""
        if not inner or inner[:1] in ("v", "V") or "%" in inner:
            raise UriRefused("must have a plain IPv6 address between [ and ] (no zone, no IPvFuture)")
        try:
            address = IPv6Address(inner)
        except ValueError:
            raise UriRefused(f"has a host [{inner}] that is not an IPv6 address") from None
        return f"[{address.compressed}]", address
    if not text:
        raise UriRefused("must have a host")
    name = text.lower()
    if IPV4.fullmatch(name):
        return name, IPv4Address(name)
    labels = name.split(".")
    if len(name) > 253 or not all(LABEL.fullmatch(label) for label in labels):
        raise UriRefused("must have a host made of letters, digits, hyphens and dots (a DNS name or an IP address)")
    if NUMBER_LABEL.fullmatch(labels[-1]):
        raise UriRefused(f"has a host {name!r} that browsers read as an IPv4 address: write it as a dotted quad")
    for label in labels:
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise UriRefused(f"has a host label {label!r} that is not a valid international name") from None
    return name, None


@dataclass(frozen=True)
class Uri:
    text: str  # exactly as given: what a later `redirect_uri` is compared to, byte for byte
    scheme: str  # lower-case
    host: str | None  # serialised (see _host); None when the URI has no authority (a native app's `app.id:/cb`)
    port: int | None  # None: no port, or the scheme's default (dropped, as an origin is serialised)
    address: IPv4Address | IPv6Address | None  # the host, when it is an IP address
    path: str = ""  # as written (after the authority, before any query)

    def __post_init__(self) -> None:
        # The serialised parts are what headers are built from: hold them to their grammar whoever builds one.
        if not SCHEME.fullmatch(self.scheme):
            raise UriRefused("has a malformed scheme")
        if self.host is not None and _host(self.host)[0] != self.host:
            raise UriRefused("has a host that is not in its serialised form")
        if self.port is not None and not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise UriRefused("has a port outside 1-65535")

    @property
    def origin(self) -> str | None:
        """RFC 6454 serialisation, scheme://host[:port], for http(s); None for other schemes (an opaque origin)."""
        if self.host is None or self.scheme not in DEFAULT_PORTS:
            return None
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port is not None else "")

    @property
    def csp_source(self) -> str:
        """A CSP source expression matching this URI: its origin, or `scheme:` for a native app's own scheme."""
        return self.origin or f"{self.scheme}:"


def parse_uri(text: object) -> Uri:
    """The URI, or UriRefused saying why its parse could be read two ways (see the module's docstring)."""
    if not isinstance(text, str) or not text:
        raise UriRefused("must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise UriRefused(f"must be at most {MAX_LENGTH} characters")
    if not URI_CHARACTERS.fullmatch(text):
        bad = next(c for c in text if not URI_CHARACTERS.fullmatch(c))
        raise UriRefused(f"must not contain {_named(bad)}")
    if BAD_PERCENT.search(text):
        raise UriRefused("must use % only to start a %XX escape")
    if "#" in text:
        raise UriRefused("must not have a fragment")
    scheme, colon, rest = text.partition(":")
    if not colon or not SCHEME.fullmatch(scheme.lower()):
        raise UriRefused("must start with a scheme (such as https:)")
    scheme = scheme.lower()
    host = address = port = None
    if rest.startswith("//"):
        end = next((i for i, c in enumerate(rest[2:], 2) if c in "/?"), len(rest))
        authority, rest = rest[2:end], rest[end:]
        if "@" in authority:
            raise UriRefused("must not carry user information (user:password@)")
        if authority.startswith("["):
            closing = authority.find("]")
            host_text, after = (authority[:closing + 1], authority[closing + 1:]) if closing > 0 else (authority, "")
        else:
            host_text, colon, port_text = authority.partition(":")
            after = colon + port_text
        if after:
            if not after.startswith(":") or not PORT.fullmatch(after[1:]) or int(after[1:]) > 65535:
                raise UriRefused("must have a decimal port from 1 to 65535, without leading zeros")
            port = int(after[1:])
        host, address = _host(host_text)
        if port == DEFAULT_PORTS.get(scheme):
            port = None
    if "[" in rest or "]" in rest:
        raise UriRefused("must not have [ or ] outside an IPv6 host")
    path = rest.partition("?")[0]
    if any(segment.lower() in DOT_SEGMENTS for segment in path.split("/")):
        raise UriRefused("must not have . or .. path segments (a browser would resolve them away)")
    return Uri(text, scheme, host, port, address, path)


def _loopback(uri: Uri) -> bool:
    return uri.host == "localhost" or (uri.address is not None and uri.address.is_loopback)


def parse_redirect_uri(text: object) -> Uri:
    """A redirect URI we accept (OAuth 2.1 §2.3.1, RFC 8252 for native apps), or UriRefused."""
    uri = parse_uri(text)
    if uri.scheme == "https":
        if uri.host is None:
            raise UriRefused("must name a host (https://host/...)")
        return uri
    if uri.scheme == "http":
        if uri.host is None or not _loopback(uri):
            raise UriRefused("must be https, or http on a loopback address (127.0.0.1, [::1], localhost)")
        return uri
    if "." in uri.scheme and uri.scheme not in NOT_AN_APP:
        return uri  # a native app's private-use scheme, reverse-DNS style (RFC 8252 §7.1)
    raise UriRefused(f"must not use the scheme {uri.scheme!r} (https, loopback http, or an app's com.example.app:)")
