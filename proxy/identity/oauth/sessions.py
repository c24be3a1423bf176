"""Browser sign-in sessions for the consent and Connected apps pages, and pending authorization requests.

A session is a random cookie (HttpOnly, SameSite=Lax, Secure and `__Host-` on HTTPS) naming a record in the shared
store: who signed in, with which credential, and what that credential holds (the cap on anything they grant), plus
a CSRF token every form must carry back. A session whose sign-in credential has been revoked is over.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import asdict, dataclass, field

import orjson
from aiohttp import web

from proxy.identity.authenticate import REVOKED_KEY
from proxy.identity.oauth.grants import KEY, digest
from proxy.identity.principal import Principal
from proxy.store import Store

SESSION_TTL = 3600
REQUEST_TTL = 600


@dataclass(frozen=True)
class Session:
    subject: str
    credential_id: str  # what they signed in with
    kind: str
    csrf: str
    scopes: tuple[str, ...]  # what that credential holds (its role's ceiling applied)
    role: str | None = None
    workspace: str | None = None
    workspaces: tuple[str, ...] | None = None
    projects: tuple[str, ...] | None = None
    permissions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, principal: Principal) -> Session:
        return cls(
            subject=principal.subject, credential_id=principal.credential_id, kind=principal.kind,
            csrf=secrets.token_urlsafe(32), scopes=tuple(sorted(principal.scopes)), role=principal.role,
            workspace=principal.bound_workspace,
            workspaces=tuple(sorted(principal.workspaces)) if principal.workspaces is not None else None,
            projects=tuple(sorted(principal.projects)) if principal.projects is not None else None,
            permissions=dict(principal.permissions),
        )

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


def _decode(raw: str) -> Session:
    data = orjson.loads(raw)
    for name in ("scopes", "workspaces", "projects"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    return Session(**data)


class Sessions:
    def __init__(self, store: Store, secure: bool, path: str, pending: Store | None = None) -> None:
        self.store = store
        self.pending_store = pending or store  # pending requests are made before anyone signed in
        self.secure = secure
        self.path = path
        # `__Host-` (RFC 6265bis): only set over HTTPS, for this host only, never by a sibling subdomain.
        self.cookie = "__Host-scopegate" if secure else "scopegate_session"

    async def start(self, response: web.StreamResponse, principal: Principal) -> Session:
        session = Session.of(principal)
        value = secrets.token_urlsafe(32)
        await self.store.set(KEY + "session:" + digest(value), orjson.dumps(asdict(session)).decode(),
                             ttl=SESSION_TTL)
        response.set_cookie(self.cookie, value, max_age=SESSION_TTL, path="/" if self.secure else self.path,
                            secure=self.secure, httponly=True, samesite="Lax")
        return session

    async def current(self, request: web.Request) -> Session | None:
        value = request.cookies.get(self.cookie)
        if not value or len(value) > 100:
            return None
        raw = await self.store.get(KEY + "session:" + digest(value))
        if raw is None:
            return None
        session = _decode(raw)
        if await self.store.exists(REVOKED_KEY + session.credential_id):
            await self.store.delete(KEY + "session:" + digest(value))
            return None
        return session

    async def end(self, request: web.Request, response: web.StreamResponse) -> None:
        value = request.cookies.get(self.cookie)
        if value:
            await self.store.delete(KEY + "session:" + digest(value))
        response.del_cookie(self.cookie, path="/" if self.secure else self.path)

    # Pending authorization requests: checked once at /authorize, kept server-side until consent (single use).
    async def park(self, payload: bytes) -> str:
        request_id = secrets.token_urlsafe(24)
        await self.pending_store.set(KEY + "request:" + request_id, payload.decode(), ttl=REQUEST_TTL)
        return request_id

    async def pending(self, request_id: str | None, *, take: bool = False) -> bytes | None:
        if not request_id or len(request_id) > 64:
            return None
        key = KEY + "request:" + request_id
        raw = await (self.pending_store.take(key) if take else self.pending_store.get(key))
        return raw.encode() if raw else None
