"""OAuth grants: one per consent (the credential a person signed in with, and the client), each a node of the credential
tree under that credential, with one rotating refresh family; and authorization codes.

Durable (`proxy/durable.py`: they survive restarts): the grant (what the person consented to, through which
credential, until when: an absolute lifetime), its refresh family (the current refresh token's hash and the last
KEEP_PREVIOUS ones, so a replay is recognised and the state stays bounded per grant), a person's grants (capped),
and which grant a consent is. Ephemeral (the shared store): codes, 60 s, taken and marked used in one step.

A code or refresh token presented again after it was used is a replay: the grant is revoked (OAuth 2.1 §4.3.1,
RFC 9700 §4.14.2), because one of the two presenters is not who the grant was for and we cannot tell which. A new
consent through the same credential for the same client replaces the grant it had (its tokens end with it).
Only hashes of codes and refresh tokens are stored: a dump of either store does not hand out live tokens.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from proxy.durable import Durable
from proxy.identity.lifecycle import Revocation, Tree
from proxy.identity.principal import OAUTH_GRANT_PREFIX
from proxy.store import Store

log = logging.getLogger("scopegate.oauth")

GRANT_PREFIX = OAUTH_GRANT_PREFIX
REFRESH_PREFIX = "sgr_"
CODE_TTL = 60
KEY = "scopegate:oauth:"  # ephemeral OAuth state (codes, browser sessions)
GRANT_KEY = "scopegate:cred:grant:"
FAMILY_KEY = "scopegate:cred:family:"
PERSON_KEY = "scopegate:cred:person:"
CONSENT_KEY = "scopegate:cred:consent:"
ALL_KEY = "scopegate:cred:grants"  # every grant's id (for the console; pruned as their records expire)
KEEP_PREVIOUS = 16
CONSENTS_PER_DAY = 200  # grants one person may start in a day (a step-up that keeps its grant counts once)
_REFRESH = re.compile(r"sgr_([0-9a-f]{24})_[A-Za-z0-9_\-]{43}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    grant_id: str
    subject: str
    client_id: str
    client_name: str
    scopes: tuple[str, ...]  # what the person consented to: the most any of its tokens ever holds
    parent: str  # credential id the person signed in with (PAT, admin key, OIDC sign-in): its end ends this grant
    parent_kind: str = "pat"
    role: str | None = None
    workspace: str | None = None  # bound: the grant acts in this workspace only
    workspaces: tuple[str, ...] | None = None  # None: every workspace the parent has
    projects: tuple[str, ...] | None = None
    permissions: dict[str, str] = field(default_factory=dict)  # only narrows: a `none` denies
    created: int = 0
    expires: int = 0  # absolute: no refresh reaches past it

    @property
    def credential_id(self) -> str:
        return GRANT_PREFIX + self.grant_id

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Grant:
        data = orjson.loads(raw)
        for name in ("scopes", "workspaces", "projects"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


def access_claims(grant: Grant, scopes: tuple[str, ...], *, issuer: str, audience: str, now: int,
                  ttl: int) -> dict[str, Any]:
    """Pure: the claims of an access token for this grant. `gid` names the grant, `par` its parent: every request
    checks both (Authenticate). It never outlives the grant."""
    claims: dict[str, Any] = {
        "iss": issuer, "aud": audience, "sub": grant.subject, "client_id": grant.client_id,
        "scope": " ".join(scopes), "gid": grant.grant_id, "par": grant.parent, "iat": now,
        "exp": min(now + ttl, grant.expires) if grant.expires else now + ttl, "jti": secrets.token_hex(12),
    }
    if grant.role is not None:
        claims["role"] = grant.role
    if grant.workspace is not None:
        claims["workspace"] = grant.workspace
    elif grant.workspaces is not None:
        claims["workspaces"] = list(grant.workspaces)
    if grant.projects is not None:
        claims["projects"] = list(grant.projects)
    if grant.permissions:
        claims["permissions"] = grant.permissions
    return claims


@dataclass(frozen=True)
class PendingCode:
    grant: Grant
    redirect_uri: str
    code_challenge: str

    def to_json(self) -> str:
        return orjson.dumps({"grant": asdict(self.grant), "redirect_uri": self.redirect_uri,
                             "code_challenge": self.code_challenge}).decode()

    @classmethod
    def from_json(cls, raw: str) -> PendingCode:
        data = orjson.loads(raw)
        return cls(Grant.from_json(orjson.dumps(data["grant"])), data["redirect_uri"], data["code_challenge"])


class Replayed(Exception):
    """A used code or refresh token came back; its grant has been revoked. The argument is the grant id."""


class TooManyGrants(Exception):
    """The person holds as many grants as the policy allows."""


def covers(new: Grant, old: Grant) -> bool:
    """Pure: whether a new consent holds everything an earlier one did (scopes, workspaces, projects, and no new
    `none`). Then it may keep the earlier grant's id, and the tokens issued under it stay within their consent; a
    consent that narrows anything is a new grant, and the earlier one's tokens end with it."""
    def within(small: tuple[str, ...] | None, large: tuple[str, ...] | None) -> bool:
        return large is None or (small is not None and set(small) <= set(large))

    if not set(old.scopes) <= set(new.scopes):
        return False
    if new.workspace is not None:
        workspaces_ok = old.workspace == new.workspace
    else:
        workspaces_ok = within((old.workspace,) if old.workspace is not None else old.workspaces, new.workspaces)
    denied = {name for name, level in new.permissions.items() if level == "none"}
    return workspaces_ok and within(old.projects, new.projects) and denied <= {
        name for name, level in old.permissions.items() if level == "none"}


def refresh_grant_id(token: str) -> str | None:
    match = _REFRESH.fullmatch(token)
    return match.group(1) if match else None


class Grants:
    def __init__(self, store: Store, tree: Tree, *, refresh_ttl: int, access_ttl: int, lifetime: int,
                 per_person: int) -> None:
        self.store = store
        self.tree = tree
        self.state: Durable = tree.state
        self.refresh_ttl = refresh_ttl
        self.access_ttl = access_ttl
        self.lifetime = lifetime
        self.per_person = per_person

    def new(self, **fields: Any) -> Grant:
        """A grant for a consent given now (`fields`: Grant's, less id and times)."""
        now = int(time.time())
        return Grant(grant_id=new_grant_id(), created=now, expires=now + self.lifetime, **fields)

    # --- codes (ephemeral) ------------------------------------------------------------------------------------
    async def issue_code(self, pending: PendingCode) -> str:
        code = secrets.token_urlsafe(32)
        await self.store.set(KEY + "code:" + digest(code), pending.to_json(), ttl=CODE_TTL)
        return code

    async def take_code(self, code: str) -> PendingCode | None:
        """The code's pending grant, once: taken and marked used in one store step, so of two presenters one gets
        it and the other is a replay (which revokes the grant: Replayed)."""
        key = digest(code)
        raw = await self.store.take(KEY + "code:" + key, mark=KEY + "code-used:" + key, mark_ttl=CODE_TTL,
                                    mark_with_value=True)
        if raw is not None:
            return PendingCode.from_json(raw)
        used = await self.store.get(KEY + "code-used:" + key)
        if used is None:
            return None
        grant_id = PendingCode.from_json(used).grant.grant_id
        await self.revoke(grant_id, by="token endpoint", reason="authorization code replayed")
        raise Replayed(grant_id)

    # --- grants (durable) -------------------------------------------------------------------------------------
    async def for_consent(self, new: Grant) -> Grant:
        """The grant a consent gives: the one its credential and client already have when the new consent covers
        it (a step-up keeps its id, so its MCP sessions stay bound), else the new one."""
        earlier_id = await self.state.get(CONSENT_KEY + digest(f"{new.parent}\0{new.client_id}"))
        earlier = await self.find(earlier_id) if earlier_id is not None else None
        if earlier is None or earlier.subject != new.subject or not covers(new, earlier):
            return new
        return replace(new, grant_id=earlier.grant_id)

    async def room_for(self, subject: str, parent: str, client_id: str) -> bool:
        """Whether the person may hold one more grant (a consent that replaces its own earlier grant always may)."""
        if await self.state.get(CONSENT_KEY + digest(f"{parent}\0{client_id}")) is not None:
            return True
        return len(await self.of_subject(subject)) < self.per_person

    async def start(self, grant: Grant) -> str:
        """Record the grant a code was exchanged for, replacing the one its consent had; its first refresh token."""
        if await self.tree.revoked_any((grant.credential_id, grant.parent)):
            raise Replayed(grant.grant_id)  # revoked while its code was in flight (a replay, or its parent ended)
        # A grant's records outlive it (its revocation, the evidence of who consented): a person consenting and
        # revoking in a loop is bounded by a day's consents, not only by the grants alive at once.
        if not await self.store.reserve(KEY + "consents-of:" + digest(grant.subject), grant.grant_id,
                                        CONSENTS_PER_DAY, 86400):
            raise TooManyGrants(grant.subject)
        consent = CONSENT_KEY + digest(f"{grant.parent}\0{grant.client_id}")
        earlier = await self.state.get(consent)
        if earlier is not None and earlier != grant.grant_id:
            await self.revoke(earlier, by=f"consent ({grant.subject})", reason="replaced by a new consent")
        await self.of_subject(grant.subject)  # prunes ended grants from the person's index first
        if not await self.state.add_capped(PERSON_KEY + digest(grant.subject), grant.grant_id, self.per_person):
            raise TooManyGrants(grant.subject)
        ttl = self._left(grant)
        await self.state.set(GRANT_KEY + grant.grant_id, grant.to_json(), ttl=ttl)
        await self.state.add(ALL_KEY, grant.grant_id)
        await self.tree.adopt(grant.parent, grant.credential_id)
        await self.state.set(consent, grant.grant_id, ttl=ttl)
        token = self._refresh_token(grant.grant_id)
        family = {"cur": digest(token), "prev": []}
        await self.state.set(FAMILY_KEY + grant.grant_id, orjson.dumps(family).decode(),
                             ttl=min(self.refresh_ttl, ttl))
        return token

    def _left(self, grant: Grant) -> int:
        return max(1, grant.expires - int(time.time())) if grant.expires else self.lifetime

    @staticmethod
    def _refresh_token(grant_id: str) -> str:
        return f"{REFRESH_PREFIX}{grant_id}_{secrets.token_urlsafe(32)}"

    async def presented(self, refresh_token: str) -> tuple[Grant, str] | None:
        """(its grant, "current" or "previous") for a refresh token of a family, else None. Consumes nothing: the
        caller checks client and scope first, so a refused request leaves the token usable."""
        grant_id = refresh_grant_id(refresh_token)
        if grant_id is None:
            return None
        raw_grant, raw_family = await self.state.get_many([GRANT_KEY + grant_id, FAMILY_KEY + grant_id])
        if raw_grant is None or raw_family is None:
            return None
        family, presented = orjson.loads(raw_family), digest(refresh_token)
        if family.get("cur") == presented:
            return Grant.from_json(raw_grant), "current"
        if presented in family.get("prev", []):
            return Grant.from_json(raw_grant), "previous"
        return None

    async def rotate(self, grant: Grant, refresh_token: str) -> str:
        """Replace the current refresh token by a new one, atomically; raises Replayed when another presenter was
        first (the grant is then revoked) or the token was no longer current."""
        token = self._refresh_token(grant.grant_id)
        outcome = await self.state.rotate(FAMILY_KEY + grant.grant_id, digest(refresh_token), digest(token),
                                          KEEP_PREVIOUS, min(self.refresh_ttl, self._left(grant)))
        if outcome == "ok":
            return token
        await self.revoke(grant.grant_id, by="token endpoint", reason="refresh token replayed")
        raise Replayed(grant.grant_id)

    async def find(self, grant_id: str) -> Grant | None:
        """The grant while it lives (recorded, not revoked, its parent not revoked)."""
        raw = await self.state.get(GRANT_KEY + grant_id)
        if raw is None:
            return None
        grant = Grant.from_json(raw)
        if await self.tree.revoked_any((grant.credential_id, grant.parent)):
            return None
        return grant

    async def revoke(self, grant_id: str, *, by: str, reason: str) -> Revocation:
        raw = await self.state.get(GRANT_KEY + grant_id)
        grant = Grant.from_json(raw) if raw is not None else None
        # As long as any grant may live: a step-up consent that keeps this id, exchanged as it is revoked, may write
        # a later expiry than the one read here; the record must outlast that too.
        ttl = self.lifetime + self.access_ttl
        record = await self.tree.revoke(GRANT_PREFIX + grant_id, by=by, reason=reason, ttl=ttl)
        await self.state.delete(FAMILY_KEY + grant_id)  # no refresh, whatever else is read
        if grant is not None:
            await self.state.remove(PERSON_KEY + digest(grant.subject), grant_id)
            await self.tree.disown(grant.parent, grant.credential_id)  # ended: nothing left for a cascade to end
        return record

    async def every(self, also: Sequence[str] = ()) -> list[Grant]:
        """Every grant still recorded, live or revoked (the console lists both); `also`: more grant ids (children
        of registry credentials, for grants made before the index). Ids whose record expired leave the index."""
        ids = list(dict.fromkeys([*await self.state.members(ALL_KEY), *also]))
        raws = await self.state.get_many([GRANT_KEY + i for i in ids])
        found = []
        for grant_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                await self.state.remove(ALL_KEY, grant_id)
                continue
            found.append(Grant.from_json(raw))
        return sorted(found, key=lambda g: g.created)

    async def of_subject(self, subject: str) -> list[Grant]:
        """The person's live grants; ended ones leave the index as they are found."""
        index = PERSON_KEY + digest(subject)
        ids = await self.state.members(index)
        raws = await self.state.get_many([GRANT_KEY + i for i in ids])
        grants = [Grant.from_json(raw) for raw in raws if raw is not None]
        revoked = await self.tree.revocations([c for g in grants for c in (g.credential_id, g.parent)])
        live = [g for g in grants if g.subject == subject and g.credential_id not in revoked
                and g.parent not in revoked]
        for gone in set(ids) - {g.grant_id for g in live}:
            await self.state.remove(index, gone)
        return sorted(live, key=lambda g: g.created)


def new_grant_id() -> str:
    return secrets.token_hex(12)


def now() -> int:
    return int(time.time())
