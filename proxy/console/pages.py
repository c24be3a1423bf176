"""The console's pages: Credentials, Activity, Access (and a link to the Approvals queue at /oauth/approvals).

Server-rendered with the OAuth pages' templates, `render` and security headers (strict CSP, no framing, no
JavaScript); signed in with the OAuth server's browser session. An administrator sees and acts on everything; anyone
else on their own part (their credentials, their activity, what their credentials would see). Every POST carries
the session's CSRF token and must come from this site; the operations are the admin API's (`credentials.py`), so
the page can offer nothing the API would not allow. Search forms are GETs: they change nothing and carry no token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from proxy.console import activity
from proxy.console.actors import Actor
from proxy.console.api import access_of, search_of
from proxy.console.credentials import Invalid, Query, Refused, parse_want
from proxy.console.service import Console
from proxy.identity.oauth.authorization import Toggle
from proxy.identity.oauth.pages import render
from proxy.identity.pats import parse_duration
from proxy.ops.sinks import TrailUnreadable
from proxy.ops.trail import verify
from proxy.store import StoreUnavailable

log = logging.getLogger("scopegate.console")

BASE = "/admin"
OAUTH = "/oauth"  # the OAuth pages' path: the stylesheet, sign-in, Connected apps, the approvals queue
APPROVALS = OAUTH + "/approvals"  # issue 25's queue and approval page
EXPIRY_CHOICES = (("1h", "1 hour"), ("12h", "12 hours"), ("7d", "7 days"), ("30d", "30 days"), ("90d", "90 days"),
                  ("never", "never"))
GRACE_CHOICES = (("0", "none: the old secret stops now"), ("1h", "1 hour"), ("24h", "1 day"), ("7d", "7 days"))
NAV = (("credentials", "Credentials"), ("activity", "Activity"), ("access", "Access"))


def expiry_choices(actor: Actor, now: float) -> list[tuple[str, str]]:
    """Pure: the lifetimes a new credential may have: none beyond the maker's own (then "until mine ends")."""
    if actor.expires_at is None:
        return list(EXPIRY_CHOICES)
    left = actor.expires_at - now
    fits = [(value, label) for value, label in EXPIRY_CHOICES if value != "never" and parse_duration(value) <= left]
    ends = datetime.fromtimestamp(actor.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [*fits, ("max", f"until your own credential expires ({ends})")]


def when(iso: str | None) -> str:
    if not iso:
        return "never"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


class ConsolePages:
    def __init__(self, console: Console) -> None:
        self.console = console

    # --- the frame ----------------------------------------------------------------------------------------------
    def page(self, name: str, actor: Actor | None, current: str, *, status: int = 200, **context: Any) -> web.Response:
        return render(name, status=status, base=OAUTH, console=BASE, current=current, nav=NAV, approvals=APPROVALS,
                      actor=actor, service=self.console.service_name, when=when, **context)

    def error(self, actor: Actor | None, message: str, status: int) -> web.Response:
        return self.page("console_error.html", actor, "", status=status, message=message)

    async def signed_in(self, request: web.Request) -> Actor | None:
        return await self.console.signed_in(request)

    def sign_in(self, current: str) -> web.Response:
        oauth = self.console.oauth
        token_sign_in = oauth is not None and bool(set(oauth.settings.sign_in) & {"pat", "admin_key"})
        oidc_name = oauth.settings.oidc.name if oauth is not None and oauth.settings.oidc else None
        return render("signin.html", status=401, base=OAUTH, client=None, request_id="", error=None,
                      resource=oauth.settings.resource if oauth else "", oidc_name=oidc_name,
                      token_sign_in=token_sign_in, next=f"{BASE}/{current}")

    def checked(self, handler: Callable[..., Any], current: str, *, post: bool = False) -> Callable[..., Any]:
        """Signed in (else the sign-in form); a POST from this site with the session's CSRF token (else 403)."""

        async def run(request: web.Request) -> web.StreamResponse:
            if self.console.credentials is None or self.console.oauth is None:
                return web.Response(status=503, text="starting")
            try:
                actor = await self.signed_in(request)
                if actor is None:
                    return self.sign_in(current)
                if post:
                    if not self.console.same_origin(request):
                        self.console.note("page", "deny", "cross-origin form", actor=actor)
                        return self.error(actor, "This form must be sent from this site.", 403)
                    data = await request.post()
                    csrf = data.get("csrf")
                    if not self.console.csrf_ok(actor, csrf if isinstance(csrf, str) else None):
                        return self.error(actor, "This form has expired or did not come from this site.", 403)
                    return await handler(request, actor, data)
                return await handler(request, actor)
            except Refused as exc:
                return self.error(actor, f"Not allowed: {exc}.", 403)
            except Invalid as exc:
                return self.error(actor, str(exc).capitalize() + ".", exc.status)
            except StoreUnavailable:
                return self.error(None, "The service cannot check this right now; try again shortly.", 503)

        return run

    # --- credentials ------------------------------------------------------------------------------------------
    def _toggles(self, actor: Actor) -> list[Toggle]:
        policy = self.console.rules().policy if self.console.rules is not None else None
        known = policy.scopes if policy is not None else ()
        info = policy.scope_info if policy is not None else {}
        out = []
        for scope in known or sorted(actor.scopes):
            words = info.get(scope)
            title, description = (words.title, words.description) if words is not None else (None, None)
            if scope in actor.scopes:
                out.append(Toggle(scope, True, "", title, description))
            else:
                out.append(Toggle(scope, False, "your credential does not hold it", title, description))
        return out

    async def credentials(self, request: web.Request, actor: Actor) -> web.Response:
        q = request.query
        query = Query(text=q.get("q", "")[:200], kind=q.get("kind", "")[:16], status=q.get("status", "")[:16])
        assert self.console.credentials is not None
        rows = await self.console.credentials.rows(actor, query)
        notice = q.get("notice", "")[:40]
        return self.page("console_credentials.html", actor, "credentials", rows=rows, query=query,
                         toggles=self._toggles(actor), expiry=expiry_choices(actor, time.time()), grace=GRACE_CHOICES,
                         csrf=actor.session.csrf if actor.session else "",
                         workspaces={"bound": actor.workspace, "options": sorted(actor.workspaces or ()),
                                     "projects": sorted(actor.projects or ()), "workspaces": None},
                         notice={"revoked": "Revoked.", "": None}.get(notice))

    async def create(self, request: web.Request, actor: Actor, data: Any) -> web.Response:
        assert self.console.credentials is not None
        scopes = [v for v in data.getall("scope", []) if isinstance(v, str)]
        expires = data.get("expires") or "30d"
        if expires == "max" and actor.expires_at is not None:  # as long as the maker's own credential lives
            expires = f"{max(1, int(actor.expires_at - time.time()))}s"
        body: dict[str, Any] = {"label": data.get("label") or "", "scopes": scopes, "expires": expires,
                                "kind": data.get("kind") or "pat"}
        if actor.admin and data.get("subject"):
            body["subject"] = data.get("subject")
        workspace = data.get("workspace") or data.get("workspace_name") or ""
        if isinstance(workspace, str) and workspace.strip():
            body["workspace"] = workspace.strip()
        elif actor.workspaces is not None:
            body["workspaces"] = sorted(actor.workspaces)
        if actor.workspace is not None:
            body["workspace"] = actor.workspace
        if actor.projects is not None:
            body["projects"] = [p for p in data.getall("project", []) if isinstance(p, str)]
        row, token = await self.console.credentials.create(actor, parse_want(body, actor))
        return self.page("console_token.html", actor, "credentials", row=row, token=token, made="created")

    async def rotate(self, request: web.Request, actor: Actor, data: Any) -> web.Response:
        assert self.console.credentials is not None
        cred_id, grace = data.get("id"), data.get("grace")
        if not isinstance(cred_id, str) or not isinstance(grace, str):
            raise Invalid("no such credential", 404)
        row, token = await self.console.credentials.rotate(actor, cred_id[:64], grace)
        return self.page("console_token.html", actor, "credentials", row=row, token=token, made="rotated")

    async def revoke_confirm(self, request: web.Request, actor: Actor) -> web.Response:
        """The cascade shown before anything ends: the dry run."""
        assert self.console.credentials is not None
        ends = await self.console.credentials.ends(actor, request.query.get("id", "")[:64])
        return self.page("console_revoke.html", actor, "credentials", target=ends["credential"],
                         ends=ends["would_end"], csrf=actor.session.csrf if actor.session else "")

    async def revoke(self, request: web.Request, actor: Actor, data: Any) -> web.StreamResponse:
        assert self.console.credentials is not None
        cred_id = data.get("id")
        if not isinstance(cred_id, str):
            raise Invalid("no such credential", 404)
        done = await self.console.credentials.revoke(actor, cred_id[:64])
        ended = done["revoked"]["ended"]
        return self.page("console_revoked.html", actor, "credentials", cred_id=cred_id, ended=ended)

    # --- activity ---------------------------------------------------------------------------------------------
    async def activity(self, request: web.Request, actor: Actor) -> web.Response:
        query = dict(request.query)
        if not actor.admin:
            query["subject"] = actor.subject  # a person sees their own activity only
        search = search_of(query)
        key, which = self.console.key(None)
        problem = None
        found: list[dict[str, Any]] = []
        try:
            records = await activity.read(self.console.trail.sink, self.console.trail.redis_url)
            found = activity.search(records, search, key)
        except TrailUnreadable as exc:
            problem = str(exc)
        return self.page("console_activity.html", actor, "activity", search=search, found=found, problem=problem,
                         verified_with=which, csrf=actor.session.csrf if actor.session else "", report=None,
                         since=query.get("since", "")[:20], until=query.get("until", "")[:20])

    async def verify(self, request: web.Request, actor: Actor, data: Any) -> web.Response:
        if not actor.admin:
            raise Refused("administrators only")
        pem = data.get("public_key")
        key, which = self.console.key(pem.strip() if isinstance(pem, str) and pem.strip() else None)
        try:
            records = await activity.read(self.console.trail.sink, self.console.trail.redis_url)
        except TrailUnreadable as exc:
            raise Invalid(str(exc), 409) from None
        report = verify(records, key)
        return self.page("console_activity.html", actor, "activity", search=activity.Search(), found=[],
                         problem=None, verified_with=which, csrf=actor.session.csrf if actor.session else "",
                         report=report, since="", until="")

    # --- access -----------------------------------------------------------------------------------------------
    async def access(self, request: web.Request, actor: Actor) -> web.Response:
        assert self.console.credentials is not None
        q = request.query
        mine = [r for r in await self.console.credentials.rows(actor) if r["status"] == "active"]
        result = None
        problem = None
        if q.get("credential") or q.get("scopes") is not None:
            body: dict[str, Any] = {"credential": q.get("credential", "")[:64]} if q.get("credential") else \
                {"scopes": q.get("scopes", "")[:1000], "workspace": q.get("workspace", "")[:128] or None}
            if not actor.admin and body.get("credential") and body["credential"] not in {r["id"] for r in mine}:
                raise Refused("you may look at your own credentials only")
            held, workspace, who = await access_of(self.console, body)
            if not actor.admin and "scopes" in body:
                held = held & actor.scopes  # a person can ask about no more than they hold
            try:
                result = await self.console.simulate(held, workspace, who)
            except (Invalid, Refused):
                raise
            except Exception as exc:
                log.warning("access simulation: upstream lists unavailable (%s)", type(exc).__name__)
                problem = "The upstream's lists cannot be had now; try again shortly."
            if result is not None:
                result["who"] = who
        return self.page("console_access.html", actor, "access", credentials=mine, result=result, problem=problem,
                         asked={"credential": q.get("credential", ""), "scopes": q.get("scopes", ""),
                                "workspace": q.get("workspace", "")})


def add_routes(app: web.Application, console: Console, guard: Callable[[Any], Any]) -> None:
    pages = ConsolePages(console)

    async def home(request: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": f"{BASE}/credentials", "Cache-Control": "no-store"})

    app.router.add_get(BASE, guard(home))
    app.router.add_get(BASE + "/", guard(home))
    app.router.add_get(BASE + "/credentials", guard(pages.checked(pages.credentials, "credentials")))
    app.router.add_post(BASE + "/credentials/create", guard(pages.checked(pages.create, "credentials", post=True)))
    app.router.add_post(BASE + "/credentials/rotate", guard(pages.checked(pages.rotate, "credentials", post=True)))
    app.router.add_get(BASE + "/credentials/revoke", guard(pages.checked(pages.revoke_confirm, "credentials")))
    app.router.add_post(BASE + "/credentials/revoke", guard(pages.checked(pages.revoke, "credentials", post=True)))
    app.router.add_get(BASE + "/activity", guard(pages.checked(pages.activity, "activity")))
    app.router.add_post(BASE + "/activity/verify", guard(pages.checked(pages.verify, "activity", post=True)))
    app.router.add_get(BASE + "/access", guard(pages.checked(pages.access, "access")))
