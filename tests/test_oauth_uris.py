"""Redirect URIs are parsed once into a typed value (proxy/identity/oauth/uris.py), and the consent page's CSP is
built from that value: pure functions fed hostile strings. The browser half (the framing attack in Chromium) is in
tests/test_oauth_browser.py; registration refusing them end to end in tests/test_oauth.py."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address

import pytest

from proxy.identity.oauth.clients import redirect_uri_problem
from proxy.identity.oauth.pages import security_headers
from proxy.identity.oauth.uris import Uri, UriRefused, parse_redirect_uri, parse_uri

# Each of these was registered by main's urlsplit-based check (the first put `frame-ancestors *` into the CSP).
HOSTILE = {
    "https://host\\ https: ; frame-ancestors *;/cb": "a backslash",
    "https://host https: ; frame-ancestors *;/cb": "a space",
    "https://host;frame-ancestors=*/cb": "letters, digits, hyphens",  # `;` is a legal reg-name character
    "https://a.test,b.test/cb": "letters, digits, hyphens",
    "https://a.test/cb\r\nSet-Cookie: x=1": "a line break",
    "https://a.test/c\nb": "a line break",  # urlsplit drops the LF silently
    "https://a.test/c\tb": "a control character",
    "https://a.test/c\x00b": "a control character",
    "https://a.test/c\x7fb": "a control character",
    "https://evil.test\\@good.test/cb": "a backslash",
    "https://good.test@evil.test/cb": "user information",
    "https://user:pw@good.test/cb": "user information",
    "https://a.test/cb#frag": "a fragment",
    "https://a.test\"/cb": "the character '\"'",
    "https://a.test/<script>": "the character '<'",
    "https://bücher.example/cb": "non-ASCII",
    "https://xn--zz.example/cb": "not a valid international name",
    "https://127.1/cb": "browsers read as an IPv4 address",
    "https://2130706433/cb": "browsers read as an IPv4 address",
    "https://0x7f.1/cb": "browsers read as an IPv4 address",
    "https://127.000.000.001/cb": "browsers read as an IPv4 address",
    "https://a.test./cb": "letters, digits, hyphens",
    "https://a.test:/cb": "decimal port",
    "https://a.test:0443/cb": "decimal port",
    "https://a.test:0/cb": "decimal port",
    "https://a.test:70000/cb": "decimal port",
    "https://a.test:443 ;/cb": "a space",
    "https://[::1%25eth0]/cb": "no zone",
    "https://[v1.x]/cb": "IPvFuture",
    "https://[::1/cb": "no zone",
    "https://[not-v6]/cb": "not an IPv6 address",
    "https://a.test/a[b]": "[ or ]",
    "https://a.test/cb/../evil": "path segments",
    "https://a.test/%2e%2E/evil": "path segments",
    "https://a.test/cb%zz": "%XX escape",
    "https:///cb": "must have a host",
    "https:/cb": "must name a host",
    "http://evil.test/cb": "loopback",
    "http://127.0.0.1.evil.test/cb": "loopback",
    "javascript:alert(1)": "scheme 'javascript'",
    "data:text/html,x": "scheme 'data'",
    "view-source:https://a.test/": "scheme 'view-source'",
    "//a.test/cb": "scheme",
    "": "non-empty",
}


@pytest.mark.parametrize("text", list(HOSTILE))
def test_hostile_redirect_uris_are_refused_and_say_why(text: str) -> None:
    with pytest.raises(UriRefused) as refused:
        parse_redirect_uri(text)
    assert HOSTILE[text] in str(refused.value)
    problem = redirect_uri_problem(text)  # what registration (DCR, metadata documents, the policy) answers
    assert problem is not None and problem.startswith("a redirect URI ")


def test_non_strings_and_overlong_are_refused() -> None:
    for value in (None, 7, ["https://a.test/cb"], "https://a.test/" + "a" * 2000):
        with pytest.raises(UriRefused):
            parse_redirect_uri(value)


@pytest.mark.parametrize(("text", "source"), [
    ("https://app.example/cb", "https://app.example"),
    ("HTTPS://App.Example:443/cb?x=1&y=%2F", "https://app.example"),  # default port dropped, case folded
    ("https://app.example:8443/oauth/callback", "https://app.example:8443"),
    ("https://xn--bcher-kva.example/cb", "https://xn--bcher-kva.example"),
    ("https://a-b.c-d.example/c;b=1/x,y!$&'()*+=:@~", "https://a-b.c-d.example"),  # sub-delims in the path only
    ("http://127.0.0.1:33418/callback", "http://127.0.0.1:33418"),
    ("http://127.9.8.7/cb", "http://127.9.8.7"),
    ("http://localhost:8080/cb", "http://localhost:8080"),
    ("http://[::1]:9000/cb", "http://[::1]:9000"),
    ("http://[0:0:0:0:0:0:0:1]/cb", "http://[::1]"),  # serialised compressed
    ("https://[2001:db8::A]/cb", "https://[2001:db8::a]"),
    ("https://93.184.215.14/cb", "https://93.184.215.14"),
    ("com.example.app:/oauth2redirect/example-provider", "com.example.app:"),  # RFC 8252 §7.1
    ("Com.Example.App://callback", "com.example.app:"),  # an opaque origin: the app's whole scheme
])
def test_acceptable_redirect_uris_keep_their_text_and_serialise_their_origin(text: str, source: str) -> None:
    uri = parse_redirect_uri(text)
    assert uri.text == text  # compared byte for byte at /authorize
    assert uri.csp_source == source
    assert redirect_uri_problem(text) is None


def test_typed_parts() -> None:
    uri = parse_uri("http://[::1]:9000/cb?x=1")
    assert (uri.scheme, uri.host, uri.port, uri.address, uri.path) == ("http", "[::1]", 9000, IPv6Address("::1"),
                                                                       "/cb")
    assert parse_uri("https://10.0.0.1/x").address == IPv4Address("10.0.0.1")
    assert parse_uri("https://a.test/x").address is None
    assert parse_uri("com.example.app:/cb").origin is None and parse_uri("com.example.app://x/cb").origin is None


@pytest.mark.parametrize("parts", [
    ("https", "host\\ https: ; frame-ancestors *;", None),
    ("https", "a.test; frame-ancestors *", None),
    ("https", "[::1]:80", None),
    ("https", "A.TEST", None),  # not serialised: an origin is written lower-case
    ("https ; frame-ancestors *", "a.test", None),
    ("https", "a.test", 0),
    ("https", "a.test", 65536),
])
def test_a_uri_cannot_be_built_around_the_parser(parts: tuple[str, str, int | None]) -> None:
    scheme, host, port = parts
    with pytest.raises(UriRefused):
        Uri("x", scheme, host, port, None)


def directives(header: str) -> list[tuple[str, str]]:
    """A CSP header as a browser splits it (CSP3 §2.2.1): on `;`, the name up to the first whitespace."""
    out = []
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        if name:
            out.append((name.lower(), value.strip()))
    return out


def test_consent_csp_names_only_the_serialised_origin() -> None:
    for text, source in [("https://app.example:8443/cb;x", "https://app.example:8443"),
                         ("http://[::1]:9000/cb", "http://[::1]:9000"),
                         ("com.example.app:/cb", "com.example.app:")]:
        csp = security_headers(parse_redirect_uri(text))["Content-Security-Policy"]
        found = directives(csp)
        assert [name for name, _ in found] == ["default-src", "style-src", "img-src", "form-action",
                                               "frame-ancestors", "base-uri"]
        assert dict(found)["form-action"] == f"'self' {source}"
        assert dict(found)["frame-ancestors"] == "'none'"
    assert dict(directives(security_headers()["Content-Security-Policy"]))["form-action"] == "'self'"


def test_the_clickjacking_uri_cannot_reach_the_header() -> None:
    """main wrote `form-action 'self' https://host\\ https: ; frame-ancestors *;` followed by its own
    `frame-ancestors 'none'`: the first directive of a name wins, and `https:` let the form post anywhere."""
    hostile = "https://host\\ https: ; frame-ancestors *;/cb"
    with pytest.raises(UriRefused):
        parse_redirect_uri(hostile)
    with pytest.raises(UriRefused):  # nor can a value be made from its pieces
        Uri(hostile, "https", "host\\ https: ; frame-ancestors *;", None, None)
    # Every value the builder can be given is made of the serialised grammar only.
    for text in ("https://a.test/cb", "http://[::1]:1/x", "com.example.app:/cb", "https://1.2.3.4:5/x"):
        source = parse_redirect_uri(text).csp_source
        assert re.fullmatch(r"[a-z][a-z0-9+.\-]*:(//([a-z0-9.\-]+|\[[0-9a-f:.]+\])(:[0-9]+)?)?", source)
