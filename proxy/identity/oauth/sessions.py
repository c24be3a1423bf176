"""Browser sign-in sessions for the consent and Connected apps pages, and pending authorization requests.

A session is a random cookie (HttpOnly, SameSite=Lax, Secure and `__Host-` on HTTPS) naming a record in the shared
store: who signed in, with which credential, and what that credential holds (the cap on anything they grant), plus
a CSRF token every form must carry back. A session is a child of its sign-in credential: at every use, what that
credential holds now is asked again (`parent_scopes`), so a revoked, expired or narrowed credential ends or narrows
its sessions at once. A person holds at most MAX_PER_PERSON sessions (the least recently used goes first).

Pending authorization requests are parked before anyone signed in: anonymous, brief, in a bounded group whose
oldest go first; once a person signs in, their request moves to the shared store, out of a flood's reach.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace

import orjson
from aiohttp import web

from proxy.identity.oauth.grants import KEY, digest
from proxy.identity.principal import Principal
from proxy.store import Store

SESSION_TTL = 3600
REQUEST_TTL = 600
MAX_PER_PERSON = 20
MAX_ANONYMOUS_REQUESTS = 10_000
REQUEST_KEY = "scopegate:oauth-request:"  # anonymous (in the capped group)
CLAIMED_KEY = KEY + "request:"  # a signed-in person's: outside the group
REQUEST_GROUP = "scopegate:anonymous-requests"
ParentScopes = Callable[[str, "str | None"], Awaitable["frozenset[str] | None"]]


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
    def __init__(self, store: Store, secure: bool, path: str, parent_scopes: ParentScopes,
                 pending: Store | None = None) -> None:
        self.store = store
        self.parent_scopes = parent_scopes
        self.pending_store = pending or store  # pending requests are made before anyone signed in
        self.secure = secure
        self.path = path
        # `__Host-` (RFC 6265bis): only set over HTTPS, for this host only, never by a sibling subdomain.
        self.cookie = "__Host-scopegate" if secure else "scopegate_session"

    async def start(self, response: web.StreamResponse, principal: Principal) -> Session:
        session = Session.of(principal)
        value = secrets.token_urlsafe(32)
        await self.store.set_capped(KEY + "session:" + digest(value), orjson.dumps(asdict(session)).decode(),
                                    ttl=SESSION_TTL, group=KEY + "sessions-of:" + digest(session.subject),
                                    limit=MAX_PER_PERSON)
        # Path /: the console and the admin API (/admin) read the same sign-in as the OAuth pages.
        response.set_cookie(self.cookie, value, max_age=SESSION_TTL, path="/",
                            secure=self.secure, httponly=True, samesite="Lax")
        return session

    async def current(self, request: web.Request) -> Session | None:
        value = request.cookies.get(self.cookie)
        if not value or len(value) > 100:
            return None
        raw = await self.store.get(KEY + "session:" + digest(value), refresh_ttl=SESSION_TTL)
        if raw is None:
            return None
        session = _decode(raw)
        held = await self.parent_scopes(session.credential_id, session.role)
        if held is None:
            await self.store.delete(KEY + "session:" + digest(value))
            return None
        return replace(session, scopes=tuple(sorted(held)))

    async def end(self, request: web.Request, response: web.StreamResponse) -> None:
        value = request.cookies.get(self.cookie)
        if value:
            await self.store.delete(KEY + "session:" + digest(value))
        response.del_cookie(self.cookie, path="/")

    # Pending authorization requests: checked once at /authorize, kept server-side until consent (single use).
    async def park(self, payload: bytes, *, signed_in: bool) -> str:
        request_id = secrets.token_urlsafe(24)
        if signed_in:
            await self.store.set(CLAIMED_KEY + request_id, payload.decode(), ttl=REQUEST_TTL)
        else:
            await self.pending_store.set_capped(REQUEST_KEY + request_id, payload.decode(), ttl=REQUEST_TTL,
                                                group=REQUEST_GROUP, limit=MAX_ANONYMOUS_REQUESTS)
        return request_id

    async def claim(self, request_id: str) -> None:
        """A person signed in for this request: it leaves the anonymous space (no flood can push it out now)."""
        if not request_id or len(request_id) > 64:
            return
        raw = await self.pending_store.take(REQUEST_KEY + request_id)
        if raw is not None:
            await self.store.set(CLAIMED_KEY + request_id, raw, ttl=REQUEST_TTL)

    async def pending(self, request_id: str | None, *, take: bool = False) -> bytes | None:
        if not request_id or len(request_id) > 64:
            return None
        for store, key in ((self.store, CLAIMED_KEY + request_id), (self.pending_store, REQUEST_KEY + request_id)):
            raw = await (store.take(key) if take else store.get(key))
            if raw:
                return raw.encode()
        return None
