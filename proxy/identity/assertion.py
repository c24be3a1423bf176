"""Who is calling, told to the upstream: a short-lived JWT scopegate signs for the requests it forwards.

The upstream sees one identity of its own (an app token, a network path), so without this it can neither attribute
nor authorise by person. With the policy's `upstream_identity:` section every forwarded request carries, in one
header, a JWT (ES256 or EdDSA; `kid` names the key in the JWKS scopegate publishes at /.well-known/jwks.json, on the
proxy and on the ops listener) whose claims say:

    iss, aud, iat, exp     scopegate's public URL, the upstream (configurable), a lifetime of ttl_seconds
    sub                    the person (the Principal's subject)
    cred {id, kind, label} the credential they called with (PAT, admin key, JWT, OAuth grant)
    client_id              the OAuth client, where there is one
    parent                 the credential it was derived from, where the Principal names one
    scope                  the effective scopes, space-separated (sorted)
    ws, project            the workspace (and project) the request acts in: a string, or a sorted list for a
                           batch acting in several
    rid, jti               the request id (scopegate's X-Request-Id, as in its audit trail) and a unique id: only
                           in an assertion made for one request (below)
    approval {id, by, via} a confirmed or approved write: the preview's id, who approved it, and how (`token`: the
                           caller brought back the preview's token; `human`: the person approved it at the client);
                           a list for a batch confirming several

Cost. A signature (ES256 or Ed25519) takes more CPU than the rest of a small call's pipeline, so nothing is signed
that need not be: the credential's claims are serialised and base64-encoded once per credential (JSON allows the
padding spaces that make them end on a 3-byte boundary, so their encoding is a prefix of any payload's), and a
read's whole assertion is reused by the same credential's reads in the same workspace for `reuse_seconds` (at most
half its life; it carries no rid). Writes, confirmed or approved calls and batches always get one of their own.
`reuse_seconds: 0` signs one per request.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from aiohttp import web

from proxy.jsonrpc import INVALID_REQUEST, rpc_error
from proxy.memo import remember

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.identity import token_exchange
    from proxy.identity.oauth.keys import KeyRing
    from proxy.identity.principal import Principal

DEFAULT_HEADER = "x-scopegate-identity"
JWKS_PATH = "/.well-known/jwks.json"
TYPE = "scopegate-id+jwt"
# Headers the proxy frames or the protocol needs as the client sent them: an assertion may not take their place.
RESERVED = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection", "accept",
                      "accept-encoding", "mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name",
                      "last-event-id", "x-request-id", "traceparent", "tracestate"})
_MEMO = 4096  # credentials (and credential x workspace) remembered per process; started over past it


@dataclass(frozen=True)
class Settings:
    keys: KeyRing  # the first signs; every key is published
    issuer: str
    audience: str
    header: str  # lower case
    ttl: int
    reuse: int
    exchange: token_exchange.Settings | None = None  # RFC 8693: also a token of the upstream's own provider

    @property
    def bearer(self) -> bool:
        return self.header == "authorization"


def header_problem(name: str, secret_headers: Iterable[str]) -> str | None:
    """Why `name` cannot carry the assertion, or None. Pure."""
    lower = name.lower()
    if lower in RESERVED or lower.startswith(("mcp-param-", "proxy-", "x-forwarded-")):
        return f"{name} is a header the proxy or the protocol needs for itself"
    if lower in {s.lower() for s in secret_headers}:
        return f"{name} is already one of the upstream's server-side headers"
    return None


def client_of(principal: Principal) -> str | None:
    """The OAuth client a Principal acts through: its own field where it has one, else the label an OAuth token's
    Principal carries (the client id, or the subject when the token names no client)."""
    client = getattr(principal, "client_id", None)
    if isinstance(client, str) and client:
        return client
    if principal.kind == "oauth" and principal.label != principal.subject:
        return principal.label
    return None


def credential_claims(principal: Principal, issuer: str, audience: str) -> dict[str, Any]:
    """What an assertion says of the caller, the same for every request of this credential. Pure."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": principal.subject,
        "cred": {"id": principal.credential_id, "kind": principal.kind, "label": principal.label},
        "scope": " ".join(sorted(principal.scopes)),
    }
    client = client_of(principal)
    if client is not None:
        claims["client_id"] = client
    parent = getattr(principal, "parent", None)  # a derived credential names the one it came from
    if parent is not None:
        claims["parent"] = parent if isinstance(parent, str) else str(getattr(parent, "credential_id", parent))
    return claims


def acts_in(exchange: Exchange) -> tuple[str | list[str] | None, str | list[str] | None]:
    """The workspace and project the request acts in, from the workspace guard's facts: a workspace it injected or
    verified, a project named by a call it let through. Pure."""
    facts = exchange.workspaces
    if not facts:
        return None, None
    if len(facts) == 1:
        fact = facts[0]
        if fact.action == "refused":
            return None, None
        return (fact.workspace if fact.action in ("injected", "verified") else None), fact.project
    spaces = sorted({f.workspace for f in facts if f.action in ("injected", "verified") and f.workspace})
    projects = sorted({f.project for f in facts if f.action != "refused" and f.project})
    return _one_or_all(spaces), _one_or_all(projects)


def _one_or_all(values: list[str]) -> str | list[str] | None:
    return None if not values else values[0] if len(values) == 1 else values


def approvals(exchange: Exchange) -> dict[str, str] | list[dict[str, str]] | None:
    """The confirmed or approved writes of this request: preview id, approver, how. Pure."""
    confirmed = exchange.confirmed
    if not confirmed:
        return None
    principal = exchange.principal
    by = principal.subject if principal is not None else ""
    by_person = exchange.approved_by_person or ()
    made = [{"id": preview, "by": by, "via": "human" if call in by_person else "token"}
            for call, preview in confirmed.items()]
    if len(made) == 1:
        return made[0]
    for (call, _), one in zip(confirmed.items(), made, strict=True):
        one["call"] = call
    return made


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclass
class Assertions:
    """Makes the header value for one forwarded request; remembers what can be reused (see the module's words)."""

    settings: Settings
    clock: Callable[[], float] = time.time
    _credentials: dict[tuple[Any, ...], bytes] = field(default_factory=dict, repr=False)
    _reusable: dict[tuple[Any, ...], tuple[str, float]] = field(default_factory=dict, repr=False)
    _heads: dict[str, bytes] = field(default_factory=dict, repr=False)

    def stamp(self, exchange: Exchange) -> None:
        """Put the assertion on the request about to go upstream (replacing any an earlier stamp put there)."""
        principal = exchange.principal
        if principal is None:  # nothing unauthenticated is forwarded; should it ever be, nobody is asserted
            return
        value = self.value(exchange, principal)
        exchange.upstream_headers[self.settings.header] = value

    def value(self, exchange: Exchange, principal: Principal) -> str:
        s = self.settings
        who = (principal.kind, principal.credential_id, principal.subject, principal.label, principal.scopes,
               principal.expires_at)
        workspace, project = acts_in(exchange)
        decision = exchange.decision
        own = (not s.reuse or bool(exchange.confirmed) or len(exchange.outcomes) > 1
               or (decision is not None and decision.effect == "write"))
        now = self.clock()
        if not own:
            key = (who, workspace if not isinstance(workspace, list) else tuple(workspace),
                   project if not isinstance(project, list) else tuple(project))
            found = self._reusable.get(key)
            if found is not None and found[1] > now:
                return found[0]
        prefix = self._credentials.get(who)
        if prefix is None:
            prefix = remember(self._credentials, who, self._prefix(principal), _MEMO)
        issued = int(now)
        expires = issued + s.ttl
        if principal.expires_at is not None:  # never outlives the credential it speaks for
            expires = min(expires, int(principal.expires_at))
        call: dict[str, Any] = {"iat": issued, "exp": expires}
        if workspace is not None:
            call["ws"] = workspace
        if project is not None:
            call["project"] = project
        if own:
            call["rid"] = exchange.request_id
            call["jti"] = _b64(os.urandom(12)).decode()
            approval = approvals(exchange)
            if approval is not None:
                call["approval"] = approval
        token = self._signed(prefix, orjson.dumps(call))
        value = f"Bearer {token}" if s.bearer else token
        if not own:
            remember(self._reusable, key, (value, min(now + s.reuse, expires - s.ttl / 2)), _MEMO)
        return value

    def subject_token(self, principal: Principal, audience: str, ttl: int) -> str:
        """An assertion of the caller alone (no request, no workspace) for another audience: the subject token of a
        token exchange (identity/token_exchange.py). Made only when no exchanged token is at hand."""
        now = int(self.clock())
        expires = now + ttl if principal.expires_at is None else min(now + ttl, int(principal.expires_at))
        call = {"iat": now, "exp": expires, "jti": _b64(os.urandom(12)).decode()}
        return self._signed(self._prefix(principal, audience), orjson.dumps(call))

    def _prefix(self, principal: Principal, audience: str | None = None) -> bytes:
        """The credential's claims as the start of a payload, base64url-encoded: `{...,` padded with spaces to a
        multiple of 3 bytes, so that its encoding followed by the encoding of the rest is the payload's."""
        s = self.settings
        raw = orjson.dumps(credential_claims(principal, s.issuer, audience or s.audience))[:-1] + b","
        raw += b" " * (-len(raw) % 3)
        return base64.urlsafe_b64encode(raw)

    def _signed(self, prefix: bytes, call: bytes) -> str:
        key = self.settings.keys.current
        head = self._heads.get(key.kid)
        if head is None:
            head = self._heads[key.kid] = _b64(orjson.dumps({"alg": key.alg, "kid": key.kid, "typ": TYPE}))
        signing_input = b"%s.%s%s" % (head, prefix, _b64(call[1:]))  # call[1:]: the rest, after its own "{"
        signature = _algorithm(key.alg).sign(signing_input, key.private)
        return (signing_input + b"." + _b64(signature)).decode()


_ALGORITHMS: dict[str, Any] = {}


def _algorithm(name: str) -> Any:
    found = _ALGORITHMS.get(name)
    if found is None:
        found = _ALGORITHMS[name] = jwt.get_algorithm_by_name(name)
    return found


def jwks(settings: Settings) -> bytes:
    """The published keys: every key of the ring, the signing one first (a rotation publishes both)."""
    return orjson.dumps(settings.keys.jwks())


def add_routes(app: web.Application, settings: Settings, host_allowed: Callable[[str | None], bool],
               wrap: Callable[[Any], Any] = lambda handler: handler) -> None:
    """The JWKS at /.well-known/jwks.json, for a Host the proxy serves (as every route: DNS rebinding)."""
    body = jwks(settings)

    async def serve(request: web.Request) -> web.Response:
        if not host_allowed(request.headers.get("Host")):
            return rpc_error(403, INVALID_REQUEST, "Host not allowed")
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "max-age=300"})

    app.router.add_get(JWKS_PATH, wrap(serve))
