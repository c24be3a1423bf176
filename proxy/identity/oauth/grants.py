"""Grants, authorization codes and rotating refresh tokens, kept in the shared store (Redis across replicas).

A grant is what a user consented to for one client: scopes, workspaces, projects, capped by the credential they
signed in with. Each grant is one refresh-token family. A code is taken once (GETDEL) within 60 s; a refresh token
is taken once and replaced by a new one in the same family. A code or refresh token presented again after it was
taken is a replay: the whole family is revoked (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2), because one of the two
presenters is not who the grant was for and we cannot tell which.

Revocation writes the grant's credential id to the same revocation key PATs use, which `Authenticate` checks on
every request on every replica, and deletes the grant record, so no refresh can succeed either.
Only hashes of codes and refresh tokens are stored: a dump of the store does not hand out live tokens.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from proxy.identity.authenticate import REVOKED_KEY
from proxy.identity.principal import OAUTH_GRANT_PREFIX
from proxy.store import Store

log = logging.getLogger("scopegate.oauth")

GRANT_PREFIX = OAUTH_GRANT_PREFIX
REFRESH_PREFIX = "sgr_"
CODE_TTL = 60
KEY = "scopegate:oauth:"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    grant_id: str
    subject: str
    client_id: str
    client_name: str
    scopes: tuple[str, ...]
    signed_in_with: str  # credential id of the PAT or admin key used to sign in (its revocation ends this grant)
    role: str | None = None
    workspace: str | None = None  # bound: the grant acts in this workspace only
    workspaces: tuple[str, ...] | None = None  # None: every workspace the user has
    projects: tuple[str, ...] | None = None
    permissions: dict[str, str] = field(default_factory=dict)
    created: int = 0

    @property
    def credential_id(self) -> str:
        return GRANT_PREFIX + self.grant_id

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: str) -> Grant:
        data = orjson.loads(raw)
        for name in ("scopes", "workspaces", "projects"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


def access_claims(grant: Grant, scopes: tuple[str, ...], *, issuer: str, audience: str, now: int,
                  ttl: int) -> dict[str, Any]:
    """Pure: the claims of an access token for this grant. `gid` names the family for revocation checks."""
    claims: dict[str, Any] = {
        "iss": issuer, "aud": audience, "sub": grant.subject, "client_id": grant.client_id,
        "scope": " ".join(scopes), "gid": grant.grant_id, "iat": now, "exp": now + ttl,
        "jti": secrets.token_hex(12),
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
        return cls(Grant.from_json(orjson.dumps(data["grant"]).decode()), data["redirect_uri"],
                   data["code_challenge"])


class Replayed(Exception):
    """A consumed code or refresh token came back; its family has been revoked."""


class Grants:
    def __init__(self, store: Store, refresh_ttl: int, access_ttl: int) -> None:
        self.store = store
        self.refresh_ttl = refresh_ttl
        self.access_ttl = access_ttl

    async def issue_code(self, pending: PendingCode) -> str:
        code = secrets.token_urlsafe(32)
        await self.store.set(KEY + "code:" + digest(code), pending.to_json(), ttl=CODE_TTL)
        return code

    async def take_code(self, code: str) -> PendingCode | None:
        """The code's pending grant, once. Raises Replayed when the code was already taken (its grant is revoked)."""
        key = digest(code)
        raw = await self.store.take(KEY + "code:" + key)
        if raw is None:
            used = await self.store.get(KEY + "code_used:" + key)
            if used:
                await self.revoke(used)
                raise Replayed(used)
            return None
        pending = PendingCode.from_json(raw)
        await self.store.set(KEY + "code_used:" + key, pending.grant.grant_id, ttl=self.refresh_ttl)
        return pending

    async def start(self, grant: Grant) -> str:
        """Record a new grant (a new family) and return its first refresh token."""
        await self.store.set(KEY + "grant:" + grant.grant_id, grant.to_json(), ttl=self.refresh_ttl)
        await self._remember(grant)
        return await self._new_refresh(grant.grant_id)

    async def _new_refresh(self, grant_id: str) -> str:
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        await self.store.set(KEY + "refresh:" + digest(token), grant_id, ttl=self.refresh_ttl)
        return token

    async def rotate(self, refresh_token: str) -> tuple[Grant, str] | None:
        """Consume a refresh token: (its live grant, the next refresh token), or None when unknown or expired.
        Raises Replayed when the token had been consumed before (the family is revoked)."""
        key = digest(refresh_token)
        grant_id = await self.store.take(KEY + "refresh:" + key)
        if grant_id is None:
            used = await self.store.get(KEY + "refresh_used:" + key)
            if used:
                await self.revoke(used)
                raise Replayed(used)
            return None
        await self.store.set(KEY + "refresh_used:" + key, grant_id, ttl=self.refresh_ttl)
        grant = await self.find(grant_id)
        if grant is None:
            return None
        if await self.store.exists(REVOKED_KEY + grant.signed_in_with):
            await self.revoke(grant_id)  # the credential the user signed in with was revoked: so is this grant
            return None
        await self.store.set(KEY + "grant:" + grant_id, grant.to_json(), ttl=self.refresh_ttl)
        return grant, await self._new_refresh(grant_id)

    async def find(self, grant_id: str) -> Grant | None:
        raw = await self.store.get(KEY + "grant:" + grant_id)
        if raw is None or await self.store.exists(REVOKED_KEY + GRANT_PREFIX + grant_id):
            return None
        return Grant.from_json(raw)

    async def revoke(self, grant_id: str) -> None:
        log.info("OAuth grant revoked", extra={"credential_id": GRANT_PREFIX + grant_id})
        await self.store.set(REVOKED_KEY + GRANT_PREFIX + grant_id, "1", ttl=self.refresh_ttl + self.access_ttl)
        await self.store.delete(KEY + "grant:" + grant_id)

    # The signed-in user's grants, for the Connected apps page: a small list per subject, pruned as grants end.
    async def _remember(self, grant: Grant) -> None:
        key = KEY + "user:" + digest(grant.subject)
        ids = orjson.loads(await self.store.get(key) or "[]")
        ids = [*[i for i in ids if i != grant.grant_id][-49:], grant.grant_id]
        await self.store.set(key, orjson.dumps(ids).decode(), ttl=self.refresh_ttl)

    async def of_subject(self, subject: str) -> list[Grant]:
        ids = orjson.loads(await self.store.get(KEY + "user:" + digest(subject)) or "[]")
        found = [await self.find(grant_id) for grant_id in ids]
        return [g for g in found if g is not None and g.subject == subject]


def new_grant_id() -> str:
    return secrets.token_hex(12)


def now() -> int:
    return int(time.time())
