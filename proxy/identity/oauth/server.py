"""The authorization server's machine endpoints: RFC 8414 metadata, JWKS, /token, /register (RFC 7591), /revoke.

Thin aiohttp handlers over the pure checks in `authorization` and the store-backed `grants` and `clients`.
Authlib has no aiohttp integration and its AuthorizationServer calls its storage hooks synchronously, which does not
fit an async Redis store; so the flows are these small handlers, and Authlib supplies the RFC pieces that are easy
to get subtly wrong (RFC 7591 metadata validation, RFC 7636 S256, RFC 8414 metadata validation in the tests).
Every answer carries `Cache-Control: no-store`; errors are RFC 6749 §5.2 JSON and say nothing about other clients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from proxy import ratelimit
from proxy.identity.approvals import Approvals
from proxy.identity.lifecycle import Tree
from proxy.identity.oauth.authorization import granted, pkce_matches, toggles
from proxy.identity.oauth.cimd import MetadataDocuments
from proxy.identity.oauth.clients import Client, Clients, RegistrationRefused
from proxy.identity.oauth.evidence import Evidence
from proxy.identity.oauth.grants import Grant, Grants, Replayed, TooManyGrants, access_claims, now
from proxy.identity.oauth.keys import KeyRing
from proxy.identity.oauth.oidc import OidcSettings, OidcSignIn, held_scopes
from proxy.identity.oauth.sessions import Sessions
from proxy.identity.pats import Registry
from proxy.ratelimit import Check
from proxy.store import MemoryStore, Store, StoreUnavailable

log = logging.getLogger("scopegate.oauth")

BASE = "/oauth"
METADATA_PATH = "/.well-known/oauth-authorization-server" + BASE  # RFC 8414 §3.1: well-known before the issuer's path
MAX_FORM = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class Settings:
    issuer: str  # <public origin>/oauth: a path, so no client argues about a root issuer's trailing slash
    resource: str  # the proxy's public URL: the only audience and the only `resource` accepted
    keys: KeyRing
    offered: tuple[str, ...]  # scopes a client may be granted (the policy's, less those withheld from OAuth)
    known: tuple[str, ...]
    excluded: tuple[str, ...]
    clients: tuple[Client, ...]
    dynamic_registration: bool
    sign_in: tuple[str, ...]
    metadata_documents: bool = True  # client_id may be an https URL naming a Client ID Metadata Document
    oidc: OidcSettings | None = None  # sign-in through the organisation's OpenID Connect provider
    roles: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the policy's role ceilings, for OIDC sign-in

    def ceiling(self, role: str | None) -> tuple[str, ...] | None:
        return dict(self.roles).get(role or "")
    access_ttl: int = 1800
    refresh_ttl: int = 30 * 86400
    grant_lifetime: int = 90 * 86400  # absolute: a grant ends then, however often it was refreshed
    grants_per_person: int = 50
    service_name: str = "this service"  # the policy's `title` (or `name`): what the consent page names
    # the words the consent page shows per scope: (scope, title, description, the tool rules that need it)
    scope_words: tuple[tuple[str, str | None, str | None, tuple[str, ...]], ...] = ()

    @property
    def secure(self) -> bool:
        return self.issuer.startswith("https://")

    def metadata(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "revocation_endpoint": self.issuer + "/revoke",
            "jwks_uri": self.issuer + "/jwks.json",
            "scopes_supported": list(self.offered),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "client_id_metadata_document_supported": self.metadata_documents,
        }
        if self.dynamic_registration:
            doc["registration_endpoint"] = self.issuer + "/register"
        return doc


def oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return web.Response(body=orjson.dumps({"error": error, "error_description": description}), status=status,
                        content_type="application/json", headers=NO_STORE)


async def form(request: web.Request) -> dict[str, str] | None:
    """The urlencoded body as single values; None when a parameter repeats (RFC 6749 §3.2) or the body is odd."""
    if request.content_type != "application/x-www-form-urlencoded" or (request.content_length or 0) > MAX_FORM:
        return None
    data = await request.post()
    out: dict[str, str] = {}
    for key in data:
        values = data.getall(key)
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        out[key] = values[0]
    return out


class OAuthServer:
    def __init__(self, settings: Settings, registry: Registry | None) -> None:
        self.settings = settings
        self.registry = registry
        self.store: Store | None = None
        self.evidence = Evidence()  # the edge connects it to the audit trail
        self.approvals: Approvals | None = None  # the approval page's records (the edge sets them)
        # Requests per client address to what anyone may reach (register, authorize, token): (N, per S seconds),
        # N at once; None: off. The edge sets it (SCOPEGATE_OAUTH_RATE_LIMIT) and what counts a refusal.
        self.address_limit: tuple[int, float] | None = None
        self.on_limited: Callable[[], None] | None = None

    def attach(self, store: Store, tree: Tree) -> None:
        """Bind to the shared store and the durable credential state once the app has opened them.

        What anyone may create without signing in (registrations, pending requests, metadata documents, OIDC
        states) lives briefly, each kind in a bounded group of its own whose oldest entries go first when it is
        full (`Store.set_capped`), and in memory mode in a store of its own: a flood of anonymous requests pushes
        out only other anonymous entries, never a pre-registered client (in the policy), a signed-in person's
        pending request, a grant or a revocation (durable, apart)."""
        s = self.settings
        self.store = store
        self.tree = tree
        anonymous = MemoryStore(limit=100_000) if isinstance(store, MemoryStore) else store
        self.grants = Grants(store, tree, refresh_ttl=s.refresh_ttl, access_ttl=s.access_ttl,
                             lifetime=s.grant_lifetime, per_person=s.grants_per_person)
        self.documents = MetadataDocuments(anonymous) if s.metadata_documents else None
        self.clients = Clients(anonymous, tree.state, s.clients, s.grant_lifetime, self.documents)
        self.oidc = OidcSignIn(s.oidc, anonymous, s.issuer + "/oidc/callback") if s.oidc is not None else None
        self.sessions = Sessions(store, s.secure, BASE, self.parent_scopes, pending=anonymous)

    async def parent_scopes(self, parent: str, role: str | None) -> frozenset[str] | None:
        """What the credential a person signed in with holds now, or None when it is revoked, expired, gone or no
        longer a way to sign in here: the cap on every grant and browser session made with it."""
        if await self.tree.revoked_any((parent,)):
            return None
        if parent.startswith("oidc-"):
            return held_scopes(self.settings.offered, self.settings.ceiling(role)) if self.oidc else None
        if self.registry is not None:
            await self.registry.recheck(parent)  # made at run time, perhaps on another replica
        live = self.registry.live(parent) if self.registry is not None else None
        if live is None or live.kind not in self.settings.sign_in:
            return None
        return live.scopes

    async def close(self) -> None:
        if self.store is not None and self.documents is not None:
            await self.documents.close()
        if self.store is not None and self.oidc is not None:
            await self.oidc.close()

    def add_routes(self, app: web.Application, host_allowed: Callable[[str | None], bool],
                   wrap: Callable[[Any], Any] = lambda handler: handler) -> None:
        """Every route answers only for Hosts the proxy serves (DNS rebinding), like the MCP endpoint. `wrap`: what
        the edge puts around every handler (its last line of defence)."""
        from proxy.identity.oauth import browser

        self.host_allowed = host_allowed
        app.router.add_get(METADATA_PATH, wrap(self.guarded(self.metadata)))
        app.router.add_get(BASE + "/jwks.json", wrap(self.guarded(self.jwks)))
        app.router.add_post(BASE + "/token", wrap(self.guarded(self.token, limited=True)))
        app.router.add_post(BASE + "/revoke", wrap(self.guarded(self.revoke)))
        if self.settings.dynamic_registration:
            app.router.add_post(BASE + "/register", wrap(self.guarded(self.register, limited=True)))
        browser.add_routes(app, self, wrap)

    def admitted(self, request: web.Request) -> bool:
        return self.host_allowed(request.headers.get("Host"))

    async def too_many(self, request: web.Request) -> int | None:
        """Seconds this client address must wait before its next request to an open endpoint; None: go on.
        Raises StoreUnavailable (the caller refuses: 503). The address is the peer the proxy sees."""
        if self.address_limit is None or self.store is None:
            return None
        requests, period = self.address_limit
        check = Check(ratelimit.key("oauth", (request.remote or "",)), period / requests, requests)
        refused, wait = await self.store.rate((check,))
        if refused < 0:
            return None
        if self.on_limited is not None:
            self.on_limited()
        return max(1, math.ceil(wait))

    def guarded(self, handler: Any, limited: bool = False) -> Any:
        """The store is where codes and grants live: when it cannot answer, refuse (503), never guess. `limited`:
        an endpoint anyone may reach, limited per client address (429 with Retry-After)."""

        async def run(request: web.Request) -> web.StreamResponse:
            if not self.admitted(request):
                return oauth_error("invalid_request", "Host not allowed", 403)
            try:
                if limited and (wait := await self.too_many(request)) is not None:
                    refused = oauth_error("temporarily_unavailable", f"too many requests from this address: retry "
                                          f"in {wait} s", 429)
                    refused.headers["Retry-After"] = str(wait)
                    return refused
                return await handler(request)
            except StoreUnavailable:
                log.warning("OAuth request refused: store unavailable")
                return oauth_error("temporarily_unavailable", "try again shortly", 503)

        return run

    async def metadata(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.settings.metadata()), content_type="application/json",
                            headers={"Cache-Control": "max-age=300"})

    async def jwks(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.settings.keys.jwks()), content_type="application/json",
                            headers={"Cache-Control": "max-age=300"})

    def _tokens(self, grant: Grant, scopes: tuple[str, ...], refresh_token: str) -> web.Response:
        s = self.settings
        claims = access_claims(grant, scopes, issuer=s.issuer, audience=s.resource, now=now(), ttl=s.access_ttl)
        body = {"access_token": s.keys.sign(claims), "token_type": "Bearer",
                "expires_in": claims["exp"] - claims["iat"],
                "refresh_token": refresh_token, "scope": " ".join(scopes)}
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=NO_STORE)

    async def token(self, request: web.Request) -> web.Response:
        params = await form(request)
        if params is None:
            return oauth_error("invalid_request", "expected one application/x-www-form-urlencoded value per name")
        client_id = params.get("client_id")
        if not client_id:
            return oauth_error("invalid_client", "client_id is required (public clients)", 401)
        if params.get("resource") not in (None, self.settings.resource):
            return oauth_error("invalid_target", f"resource must be {self.settings.resource}")
        grant_type = params.get("grant_type")
        if grant_type == "authorization_code":
            return await self._code(params, client_id)
        if grant_type == "refresh_token":
            return await self._refresh(params, client_id)
        return oauth_error("unsupported_grant_type", "authorization_code or refresh_token")

    async def _code(self, params: dict[str, str], client_id: str) -> web.Response:
        code = params.get("code")
        if not code or len(code) > 100:
            return oauth_error("invalid_request", "code is required")
        try:
            pending = await self.grants.take_code(code)
        except Replayed as exc:
            return self._replayed("authorization code", client_id, str(exc))
        if pending is None:
            return oauth_error("invalid_grant", "unknown or expired code")
        # The code is consumed whatever happens next: a wrong verifier burns it, so it cannot be guessed at.
        if pending.grant.client_id != client_id:
            return oauth_error("invalid_grant", "code was issued to another client")
        if params.get("redirect_uri") != pending.redirect_uri:
            return oauth_error("invalid_grant", "redirect_uri differs from the authorization request")
        if not pkce_matches(params.get("code_verifier"), pending.code_challenge):
            self.evidence.record("token", "deny", "PKCE verification failed", client_id=client_id)
            return oauth_error("invalid_grant", "PKCE verification failed")
        grant = pending.grant
        held = await self.parent_scopes(grant.parent, grant.role)
        if held is None:
            return oauth_error("invalid_grant", "the credential this was consented with is no longer valid")
        try:
            refresh_token = await self.grants.start(grant)
        except Replayed as exc:
            return self._replayed("authorization code", client_id, str(exc))
        except TooManyGrants:
            return oauth_error("invalid_grant", "this person holds as many app grants as allowed; revoke one first")
        client = await self.clients.find(client_id, self.settings.metadata())
        if client is not None:
            await self.clients.keep(client)  # a registration that became a grant outlives the anonymous space
        log.info("OAuth grant issued", extra={"credential_id": grant.credential_id, "client_id": client_id})
        self.evidence.record("token", "allow", "authorization_code", client_id=client_id, subject=grant.subject,
                             credential_id=grant.credential_id, label=grant.client_name)
        return self._tokens(grant, tuple(s for s in grant.scopes if s in held), refresh_token)

    def _replayed(self, what: str, client_id: str, grant_id: str) -> web.Response:
        log.warning("%s replayed; its grant is revoked", what,
                    extra={"credential_id": "sgo_" + grant_id, "client_id": client_id})
        self.evidence.record("token", "deny", f"{what} replayed: grant revoked", client_id=client_id,
                             credential_id="sgo_" + grant_id)
        return oauth_error("invalid_grant", f"{what} already used")

    async def _refresh(self, params: dict[str, str], client_id: str) -> web.Response:
        """Everything is checked before the refresh token is consumed (a refused request leaves it usable); then it
        is replaced in one atomic step, so of two presenters of the same token one wins and the other is a replay."""
        token = params.get("refresh_token")
        if not token or len(token) > 100:
            return oauth_error("invalid_request", "refresh_token is required")
        found = await self.grants.presented(token)
        if found is None:
            return oauth_error("invalid_grant", "unknown, expired or revoked refresh token")
        grant, which = found
        if which == "previous":
            await self.grants.revoke(grant.grant_id, by="token endpoint", reason="refresh token replayed")
            return self._replayed("refresh token", client_id, grant.grant_id)
        if grant.client_id != client_id:
            # a stolen refresh token in the wrong hands: end the family
            await self.grants.revoke(grant.grant_id, by="token endpoint", reason="refresh token of another client")
            self.evidence.record("token", "deny", "refresh token of another client: grant revoked",
                                 client_id=client_id, credential_id=grant.credential_id)
            return oauth_error("invalid_grant", "refresh token was issued to another client")
        held = await self.parent_scopes(grant.parent, grant.role)
        if held is None or await self.tree.revoked_any((grant.credential_id,)) or grant.expires <= now():
            self.evidence.record("token", "deny", "refresh: grant or its parent ended", client_id=client_id,
                                 subject=grant.subject, credential_id=grant.credential_id, label=grant.client_name)
            return oauth_error("invalid_grant", "unknown, expired or revoked refresh token")
        scopes = grant.scopes
        if params.get("scope") is not None:
            asked = tuple(dict.fromkeys(params["scope"].split()))
            if not set(asked) <= set(grant.scopes):
                return oauth_error("invalid_scope", "a refresh can only narrow the granted scopes")
            scopes = asked
        try:
            next_token = await self.grants.rotate(grant, token)
        except Replayed:
            return self._replayed("refresh token", client_id, grant.grant_id)
        self.evidence.record("token", "allow", "refresh_token", client_id=client_id, subject=grant.subject,
                             credential_id=grant.credential_id, label=grant.client_name)
        return self._tokens(grant, tuple(s for s in scopes if s in held), next_token)

    async def register(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json" or (request.content_length or 0) > MAX_FORM:
            return oauth_error("invalid_client_metadata", "expected a JSON body")
        try:
            body = orjson.loads(await request.read())
            client = await self.clients.register(body, self.settings.metadata())
        except orjson.JSONDecodeError:
            return oauth_error("invalid_client_metadata", "not JSON")
        except RegistrationRefused as exc:
            return oauth_error(exc.error, exc.description)
        log.info("OAuth client registered", extra={"client_id": client.client_id})
        self.evidence.record("register", "allow", "RFC 7591", client_id=client.client_id, label=client.name)
        answer = {"client_id": client.client_id, "client_id_issued_at": now(), "client_name": client.name,
                  "redirect_uris": list(client.redirect_uris), "token_endpoint_auth_method": "none",
                  "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}
        if isinstance(body.get("scope"), str):
            answer["scope"] = body["scope"]
        return web.Response(body=orjson.dumps(answer), status=201, content_type="application/json",
                            headers=NO_STORE)

    async def revoke(self, request: web.Request) -> web.Response:
        """RFC 7009: a refresh token or an access token ends its grant (the whole family). Unknown tokens get 200
        too, so the endpoint does not tell an attacker which tokens exist."""
        params = await form(request)
        if params is None or not params.get("token"):
            return oauth_error("invalid_request", "token is required")
        token, client_id = params["token"], params.get("client_id")
        grant_id = await self._grant_of(token)
        if grant_id is not None:
            grant = await self.grants.find(grant_id)
            if grant is not None and (client_id is None or client_id == grant.client_id):
                await self.grants.revoke(grant_id, by=f"client {grant.client_id} (RFC 7009)", reason="app signed out")
                self.evidence.record("revoke", "allow", "RFC 7009: grant revoked", client_id=grant.client_id,
                                     subject=grant.subject, credential_id=grant.credential_id,
                                     label=grant.client_name)
        return web.Response(status=200, headers=NO_STORE)

    async def _grant_of(self, token: str) -> str | None:
        if token.startswith("sgr_"):
            found = await self.grants.presented(token)  # the token itself must be one of the family's
            return found[0].grant_id if found is not None else None
        if token.count(".") == 2:
            import jwt

            try:
                kid = jwt.get_unverified_header(token).get("kid")
                key = await self.settings.keys.key(kid, "")
                claims = jwt.decode(token, key, algorithms=["ES256", "EdDSA"], audience=self.settings.resource,
                                    issuer=self.settings.issuer, leeway=30)
            except Exception:  # any bad token is "not ours": RFC 7009 answers 200 all the same
                return None
            gid = claims.get("gid")
            return gid if isinstance(gid, str) else None
        return None

    def consent_toggles(self, requested: tuple[str, ...], held: tuple[str, ...]) -> Any:
        s = self.settings
        words = {scope: (title, description, tools) for scope, title, description, tools in s.scope_words}
        return tuple(replace(t, title=words[t.scope][0], description=words[t.scope][1], tools=words[t.scope][2])
                     if t.scope in words else t
                     for t in toggles(requested, known=s.offered, excluded=s.excluded, held=frozenset(held)))

    @staticmethod
    def granted(chosen: list[str], offered: Any) -> tuple[str, ...]:
        return granted(chosen, offered)
