"""Pure checks of what a client sends to /authorize and /token, and of what a user may grant on the consent page.

Before the client and its redirect URI are known to be right, an error is shown on our own page and never sent to
the redirect URI (OAuth 2.1 §4.1.2.1: no open redirector). After that, errors go back by redirect only to a client
the organisation pre-registered; a client that registered itself (RFC 7591 or a metadata document) chose its own
redirect URI, so its errors are shown on our page too (RFC 9700 §4.11.2).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.identity.oauth.clients import Client
from proxy.identity.oauth.uris import UriRefused, parse_redirect_uri
from proxy.identity.principal import matches_any

VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")  # BASE64URL(SHA-256) without padding is always 43 characters
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 §3.3 scope-token


class ShowError(Exception):
    """An error for our own page: the redirect URI cannot be trusted (yet)."""


class RedirectError(Exception):
    """An error sent back to the client's (verified) redirect URI, RFC 6749 §4.1.2.1."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.error, self.description, self.redirect_uri, self.state = error, description, redirect_uri, state


@dataclass(frozen=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    state: str | None
    code_challenge: str
    scopes: tuple[str, ...]  # as requested; the consent page decides which may be granted


def single(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise ShowError(f"parameter {name} given more than once")
    return values[0] if values else None


def check_authorization(params: Mapping[str, list[str]], client: Client | None, resource: str,
                        default_scopes: tuple[str, ...]) -> AuthorizationRequest:
    """`params` maps each parameter to all its values (a repeated parameter is an error, RFC 6749 §3.1)."""
    if client is None:
        raise ShowError("unknown client_id: register the client first (RFC 7591) or use a pre-registered one")
    redirect_uri = single(params, "redirect_uri")
    if redirect_uri is None:
        if len(client.redirect_uris) != 1:
            raise ShowError("redirect_uri is required")
        redirect_uri = client.redirect_uris[0]
    if redirect_uri not in client.redirect_uris:  # exact string match, no normalisation (OAuth 2.1 §4.1.1)
        raise ShowError("redirect_uri does not match any URI registered for this client")
    try:
        parse_redirect_uri(redirect_uri)  # registered before today's rules (a store outlives an upgrade)
    except UriRefused as exc:
        raise ShowError(f"this client's redirect URI is no longer accepted (a redirect URI {exc}): "
                        "the client must register again") from None
    state: str | None = None
    trusted = client.preregistered

    def fail(error: str, description: str) -> RedirectError | ShowError:
        if trusted:
            return RedirectError(error, description, redirect_uri, state)
        # Anyone can register a client with anyone's site as its redirect URI: an automatic redirect there would
        # make scopegate's origin an open redirector (RFC 9700 §4.11.2). The person reads the error here instead.
        return ShowError(f"{description} ({error}). The app that sent you here asked for something this server "
                         "does not allow; nothing was sent back to it.")

    try:
        state = single(params, "state")
        checked = {name: single(params, name) for name in
                   ("response_type", "code_challenge", "code_challenge_method", "resource", "scope")}
    except ShowError as exc:
        raise fail("invalid_request", str(exc)) from None

    if checked["response_type"] != "code":
        raise fail("unsupported_response_type", "only response_type=code is supported")
    if checked["code_challenge"] is None:
        raise fail("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    if checked["code_challenge_method"] != "S256":
        raise fail("invalid_request", "code_challenge_method must be S256 (plain is not accepted)")
    if not CHALLENGE.match(checked["code_challenge"]):
        raise fail("invalid_request", "code_challenge is not a BASE64URL SHA-256 digest")
    if checked["resource"] is not None and checked["resource"] != resource:
        raise fail("invalid_target", f"resource must be {resource}")
    scopes = tuple(dict.fromkeys((checked["scope"] or "").split())) or default_scopes
    if any(not SCOPE_TOKEN.match(s) for s in scopes) or len(scopes) > 100:
        raise fail("invalid_scope", "malformed scope")
    return AuthorizationRequest(client, redirect_uri, state, checked["code_challenge"], scopes)


def pkce_matches(verifier: str | None, challenge: str) -> bool:
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    if verifier is None or not VERIFIER.match(verifier):
        return False
    return hmac.compare_digest(create_s256_code_challenge(verifier), challenge)


@dataclass(frozen=True)
class Toggle:
    scope: str
    grantable: bool
    reason: str = ""  # why it cannot be granted
    title: str | None = None  # the policy's words for it (`scopes:` entries with a title and description)
    description: str | None = None
    tools: tuple[str, ...] = ()  # what it lets a client use (the policy's tool rules that need it)


def toggles(requested: Iterable[str], *, known: tuple[str, ...], excluded: tuple[str, ...],
            held: frozenset[str]) -> tuple[Toggle, ...]:
    """Which requested scopes the signed-in user may grant this client, and why not the others.

    `held` is what the credential the user signed in with holds, already cut by its role's ceiling: a grant can
    only narrow it. Scopes the policy withholds from OAuth are never grantable, whoever asks."""
    out = []
    for scope in requested:
        if matches_any(scope, excluded):
            out.append(Toggle(scope, False, "withheld from OAuth clients by this server's policy"))
        elif known and scope not in known:
            out.append(Toggle(scope, False, "not a scope of this server"))
        elif scope not in held:
            out.append(Toggle(scope, False, "your credential does not hold it"))
        else:
            out.append(Toggle(scope, True))
    return tuple(out)


def granted(chosen: Iterable[str], offered: tuple[Toggle, ...]) -> tuple[str, ...]:
    """What the user ticked, less anything that was not grantable: a forged form cannot add a scope."""
    allowed = {t.scope for t in offered if t.grantable}
    return tuple(s for s in dict.fromkeys(chosen) if s in allowed)
