"""The console's one object: what the console pages and the admin API share (the operations, who is acting, the
audit of what they do). Made by the edge before the app starts; `attach` gives it the durable state, the policy in
force and the proxy's own upstream client once the app has opened them."""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from multidict import CIMultiDict

from proxy.console import access as access_module
from proxy.console.actors import Actor, of_principal, of_session
from proxy.console.credentials import Credentials, Invalid
from proxy.exchange import Exchange, Outcome
from proxy.identity.lifecycle import Tree
from proxy.identity.oauth.grants import GRANT_PREFIX
from proxy.identity.oauth.server import OAuthServer
from proxy.identity.pats import Registry, looks_like_pat
from proxy.identity.principal import Principal
from proxy.ops.trail import KeyProblem, load_public_key
from proxy.policy.decide import Rules

log = logging.getLogger("scopegate.console")

Lists = Callable[[], Awaitable[dict[str, list[Any]]]]
LISTS_FRESH = 30.0  # the simulator's copy of the upstream's lists is fetched again after this long


@dataclass(frozen=True)
class Trail:
    sink: str  # SCOPEGATE_AUDIT_SINK
    redis_url: str | None
    signing_key_file: str | None  # its public half verifies when the auditor brings no key of their own


class Console:
    def __init__(self, registry: Registry | None, oauth: OAuthServer | None, trail: Trail,
                 public_origin: str | None) -> None:
        self.registry = registry
        self.oauth = oauth
        self.trail = trail
        self.public_origin = public_origin
        self.tree: Tree | None = None
        self.rules: Callable[[], Rules] | None = None
        self.lists: Lists | None = None
        self.writer: Callable[[Exchange], None] | None = None
        self._lists: tuple[float, dict[str, list[Any]]] | None = None
        self.credentials: Credentials | None = None

    def attach(self, tree: Tree, rules: Callable[[], Rules], lists: Lists | None,
               writer: Callable[[Exchange], None]) -> None:
        self.tree, self.rules, self.lists, self.writer = tree, rules, lists, writer
        self.credentials = Credentials(self.registry, tree,
                                       lambda: self.oauth.grants if self.oauth is not None and self.oauth.store
                                       is not None else None,
                                       lambda: rules().policy, self.note)

    @property
    def administrators(self) -> tuple[str, ...]:
        return self.rules().policy.administrators if self.rules is not None else ()

    @property
    def service_name(self) -> str:
        policy = self.rules().policy if self.rules is not None else None
        return (policy.title or policy.name or "scopegate") if policy is not None else "scopegate"

    # --- evidence ---------------------------------------------------------------------------------------------
    def note(self, operation: str, decision: str, reason: str, *, actor: Actor, target: str | None = None,
             label: str | None = None) -> None:
        """One audit record of a console action: method `admin/<operation>`, the actor as principal, the
        credential concerned as target. Never a token."""
        if self.writer is None:
            return
        exchange = Exchange(request_id=secrets.token_hex(16), session_id=None, protocol_version=None,
                            upstream_headers=CIMultiDict(), http_method="POST")
        exchange.principal = Principal(subject=actor.subject, credential_id=actor.credential_id,
                                       label=label or "", kind="admin_key" if actor.kind == "admin_key" else "pat",
                                       scopes=frozenset())
        message = {"method": f"admin/{operation}", "params": {"name": target} if target else {}}
        exchange.outcomes.append(Outcome(message, decision, reason))
        self.writer(exchange)

    # --- who is acting ----------------------------------------------------------------------------------------
    async def bearer(self, request: web.Request) -> tuple[Actor | None, bool]:
        """(the actor, whether a bearer was presented at all). Only registry credentials (admin keys, PATs) are
        accepted here: an OAuth access token is for the MCP endpoint and the app that holds it."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not scheme:
            return None, False
        token = token.strip()
        if scheme.lower() != "bearer" or self.registry is None or not looks_like_pat(token) or len(token) > 200:
            return None, True
        principal, _ = await self.registry.resolve(token)
        if principal is None or self.tree is None or await self.tree.revoked_any((principal.credential_id,)):
            return None, True
        return of_principal(principal, self.administrators), True

    async def signed_in(self, request: web.Request) -> Actor | None:
        if self.oauth is None or self.oauth.store is None:
            return None
        session = await self.oauth.sessions.current(request)
        if session is None:
            return None
        expires = None
        if self.registry is not None and (live := self.registry.live(session.credential_id)) is not None:
            expires = live.expires_at
        return of_session(session, self.administrators, expires)

    def same_origin(self, request: web.Request) -> bool:
        """A state-changing browser request must come from this site: Origin (when sent) names it, and the
        browser does not call it cross-site."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        expected = self.public_origin or f"{request.scheme}://{request.host}"
        return hmac.compare_digest(origin.encode(), expected.encode())

    @staticmethod
    def csrf_ok(actor: Actor, presented: str | None) -> bool:
        return actor.session is not None and actor.session.csrf_ok(presented)

    # --- access -----------------------------------------------------------------------------------------------
    async def upstream_lists(self) -> dict[str, list[Any]]:
        if self.lists is None:
            return {}
        now = time.monotonic()
        if self._lists is None or now - self._lists[0] > LISTS_FRESH:
            found = await self.lists()
            self._lists = (now, found)
        return self._lists[1]

    async def held_by(self, cred_id: str) -> tuple[frozenset[str], str | None, str]:
        """(scopes, workspace, who) a credential holds now: a PAT or admin key as the registry sees it under the
        policy in force, an OAuth grant within its consent and its parent's scopes now."""
        assert self.tree is not None
        if cred_id.startswith(GRANT_PREFIX):
            grants = self.oauth.grants if self.oauth is not None and self.oauth.store is not None else None
            grant = await grants.find(cred_id.removeprefix(GRANT_PREFIX)) if grants is not None else None
            if grant is None:
                raise Invalid("no such live grant", 404)
            parent = await self.oauth.parent_scopes(grant.parent, grant.role) if self.oauth is not None else None
            held = frozenset(s for s in grant.scopes if parent is not None and s in parent)
            return held, grant.workspace, f"{grant.client_name} ({cred_id}) for {grant.subject}"
        if self.registry is not None:
            await self.registry.recheck(cred_id)
        live = self.registry.live(cred_id) if self.registry is not None else None
        if live is None or await self.tree.revoked_any((cred_id,)):
            raise Invalid("no such live credential", 404)
        return frozenset(live.scopes), live.bound_workspace, f"{live.label} ({cred_id}) for {live.subject}"

    async def simulate(self, held: frozenset[str], workspace: str | None, who: str) -> dict[str, Any]:
        assert self.rules is not None
        lists = await self.upstream_lists()
        return access_module.simulate(self.rules(), held, lists, workspace, who)

    # --- activity ---------------------------------------------------------------------------------------------
    def key(self, pem: str | None) -> tuple[Ed25519PublicKey | None, str]:
        """The key records are verified with: the auditor's own (PEM), else the public half of the signing key
        this proxy holds (which proves less: say so), else none."""
        from cryptography.hazmat.primitives import serialization

        if pem:
            try:
                key = serialization.load_pem_public_key(pem.encode())
            except (ValueError, TypeError):
                raise Invalid("public_key: not a PEM public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise Invalid("public_key: not an Ed25519 public key")
            return key, "the public key given"
        if self.trail.signing_key_file:
            try:
                return load_public_key(self.trail.signing_key_file), "this proxy's own signing key"
            except KeyProblem:
                return None, "no key (the signing key cannot be read)"
        return None, "no key: the trail is not signed here"
