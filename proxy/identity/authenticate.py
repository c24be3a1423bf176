"""Admission check: every request presents `Authorization: Bearer <token>` and becomes a Principal, or gets 401.

PATs and admin keys are recognised by their prefix; anything shaped like a JWT goes to the issuers. The 401 says
only that a valid token is needed, and where to learn how to get one (RFC 9728 `resource_metadata`); the reason
goes to the log, never to the client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.identity.jwt_auth import JwtVerifier, TokenRejected
from proxy.identity.lifecycle import Tree
from proxy.identity.pats import Registry, looks_like_pat
from proxy.identity.principal import OAUTH_GRANT_PREFIX, Principal, under_parent
from proxy.jsonrpc import rpc_error
from proxy.policy.model import Policy
from proxy.store import StoreUnavailable

if TYPE_CHECKING:
    from proxy.exchange import Exchange

log = logging.getLogger("scopegate.auth")

UNAUTHORIZED = -32001
LAST_USED_EVERY = 60.0
LAST_USED_KEEP = 10_000  # credentials whose last stamp this process remembers (the oldest is forgotten first)
# While Redis is unreachable, a credential Redis confirmed as not revoked this recently keeps working, so reads keep
# flowing through an outage; any other credential is refused (503) until Redis answers again.
STALE_OK_SECONDS = 600.0
# RFC 6750 b64token: every token we issue or verify (PATs, JWTs) is made of these; anything else is refused before
# any parser sees it.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,8192}=*")


class Challenge:
    """Builds 401 (and later 403) answers carrying the RFC 9728 pointer to the protected-resource metadata."""

    def __init__(self, metadata_url: str | None, scopes: tuple[str, ...]) -> None:
        self.metadata_url = metadata_url
        self.scopes = scopes

    def metadata_for(self, request: web.Request) -> str:
        if self.metadata_url:
            return self.metadata_url
        return f"{request.scheme}://{request.host}/.well-known/oauth-protected-resource{request.path}"

    def unauthorized(self, request: web.Request, exchange: Exchange, token_given: bool) -> web.Response:
        value = f'Bearer resource_metadata="{self.metadata_for(request)}"'
        if self.scopes:
            value += f', scope="{" ".join(self.scopes)}"'
        if token_given:
            value += ', error="invalid_token"'
        return rpc_error(401, UNAUTHORIZED, "Unauthorized: a valid bearer token is required",
                         request_id=exchange.request_id, headers={"WWW-Authenticate": value})


def anonymous_principal(policy: Policy) -> Principal | None:
    """The one principal of requests without a credential, from the policy's `anonymous:` section. Pure."""
    section = policy.anonymous
    if section is None:
        return None
    bound = section.workspace
    return Principal(subject="anonymous", credential_id="anonymous", label="anonymous", kind="anonymous",
                     scopes=frozenset(section.scopes), workspaces=frozenset([bound]) if bound else None,
                     bound_workspace=bound, default_workspace=bound)


class Authenticate:
    def __init__(self, registry: Registry | None, verifier: JwtVerifier | None, tree: Tree,
                 challenge: Challenge, anonymous: Callable[[], Principal | None] = lambda: None) -> None:
        self.anonymous = anonymous  # the policy's `anonymous:` principal in force now, or None (the default)
        self.registry = registry
        self.verifier = verifier
        self.tree = tree  # revocations and last use, durable
        self.challenge = challenge
        self._last_used: dict[str, float] = {}
        self._not_revoked_at: dict[tuple[str, ...], float] = {}

    async def __call__(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if not request.headers.get("Authorization") and (anonymous := self.anonymous()) is not None:
            exchange.principal = anonymous  # no credential at all; a wrong one below is still 401
            exchange.resource_metadata = self.challenge.metadata_for(request)
            return None
        if scheme.lower() != "bearer" or not token:
            log.info("unauthenticated request", extra={"request_id": exchange.request_id, "reason": "no bearer"})
            exchange.auth_failure = "no bearer"
            return self.challenge.unauthorized(request, exchange, token_given=False)
        try:
            if not _TOKEN.fullmatch(token):
                raise TokenRejected("token has characters a bearer token never has", "malformed")
            principal = await self._principal(token)
        except TokenRejected as exc:
            log.info("token rejected: %s", exc, extra={"request_id": exchange.request_id})
            exchange.auth_failure = exc.code
            return self.challenge.unauthorized(request, exchange, token_given=True)
        except StoreUnavailable:
            exchange.auth_failure = "store unavailable"
            # Whether the credential was revoked cannot be known: refuse rather than guess.
            log.warning("credential status unavailable", extra={"request_id": exchange.request_id})
            return rpc_error(503, UNAUTHORIZED, "credential status unavailable, retry shortly",
                             request_id=exchange.request_id, headers={"Retry-After": "1"})
        except Exception as exc:  # no credential, however crafted, may turn into a 500
            log.warning("token unusable: %s", type(exc).__name__, extra={"request_id": exchange.request_id})
            exchange.auth_failure = "malformed"
            return self.challenge.unauthorized(request, exchange, token_given=True)
        exchange.principal = principal
        exchange.resource_metadata = self.challenge.metadata_for(request)  # for a later 403's challenge
        return None

    async def _principal(self, token: str) -> Principal:
        if looks_like_pat(token):
            if self.registry is None:
                raise TokenRejected("no PAT registry configured", "unknown")
            principal, reason = await self.registry.resolve(token)
            if principal is None:
                raise TokenRejected(f"PAT {reason}", reason)
            if await self._revoked((principal.credential_id,)):
                raise TokenRejected("PAT revoked", "revoked")
            self._stamp(principal.credential_id)
            return principal
        if token.count(".") == 2 and self.verifier is not None:
            principal = await self.verifier.verify(token)
            if principal.credential_id.startswith(OAUTH_GRANT_PREFIX):  # our own OAuth grants: a node of the tree
                principal = await self._under_parent(principal)
                self._stamp(principal.credential_id)
            return principal
        raise TokenRejected("unrecognised token", "malformed")

    async def _under_parent(self, principal: Principal) -> Principal:
        """A grant's token holds what was consented for it, within what its parent (the credential the person
        signed in with) holds now: a revoked, expired or vanished parent ends it; a parent narrowed since (its
        role's ceiling, its scopes in the registry) narrows it from this request on."""
        parent = principal.parent
        if parent is None:
            raise TokenRejected("OAuth token names no parent credential", "malformed")
        if await self._revoked((principal.credential_id, parent)):
            raise TokenRejected("OAuth grant or its parent revoked", "revoked")
        if parent.startswith("oidc-"):
            return principal  # a sign-in through the organisation's provider: its role's ceiling is in the claims
        if self.registry is not None:  # a parent made at run time on another replica: read it (at most every 5 s)
            await self.registry.recheck(parent)
        live = self.registry.live(parent) if self.registry is not None else None
        if live is None:
            raise TokenRejected("the credential this grant was signed in with is revoked, expired or gone", "revoked")
        return under_parent(principal, live)

    async def _revoked(self, credential_ids: tuple[str, ...]) -> bool:
        try:
            revoked = await self.tree.revoked_any(credential_ids)
        except StoreUnavailable:
            seen = self._not_revoked_at.get(credential_ids)
            if seen is None or time.monotonic() - seen > STALE_OK_SECONDS:
                raise
            return False  # Redis is down; these credentials were confirmed moments ago
        if revoked:
            self._not_revoked_at.pop(credential_ids, None)
        elif credential_ids in self._not_revoked_at or len(self._not_revoked_at) < 100_000:
            self._not_revoked_at[credential_ids] = time.monotonic()
        return revoked

    def _stamp(self, credential_id: str) -> None:
        """Last-used stamp in the shared store, at most once a minute per credential, off the request's path."""
        now = time.monotonic()
        if now - self._last_used.get(credential_id, float("-inf")) < LAST_USED_EVERY:
            return
        # One entry per credential seen, and credentials come and go (OAuth grants): bounded, oldest stamp first
        # (re-inserted on every stamp). A credential forgotten early is only stamped again on its next request.
        self._last_used.pop(credential_id, None)
        if len(self._last_used) >= LAST_USED_KEEP:
            del self._last_used[next(iter(self._last_used))]
        self._last_used[credential_id] = now

        async def write() -> None:
            try:
                await self.tree.stamp(credential_id)
            except StoreUnavailable:
                self._last_used.pop(credential_id, None)  # try again on the next request

        task = asyncio.get_running_loop().create_task(write())
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()
