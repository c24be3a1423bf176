"""The pages a person sees: /authorize (checks, then sign-in or consent), sign-in, consent, Connected apps.

Sign-in here is with a credential the person already holds (a PAT or an admin key): what it holds caps what they
can grant. Every POST must come from our own origin (when the browser says where it comes from) and carry the
session's CSRF token; the consent form also carries the id of a pending request that is taken exactly once.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import orjson
from aiohttp import web

from proxy.identity.approvals import valid_id
from proxy.identity.oauth.approval_page import ApprovalPage
from proxy.identity.oauth.authorization import (
    AuthorizationRequest,
    RedirectError,
    ShowError,
    check_authorization,
)
from proxy.identity.oauth.cimd import DocumentRefused
from proxy.identity.oauth.clients import Client, trust
from proxy.identity.oauth.connected_apps import ConnectedApps
from proxy.identity.oauth.grants import PendingCode
from proxy.identity.oauth.oidc import COOKIE as OIDC_COOKIE
from proxy.identity.oauth.oidc import SignInFailed
from proxy.identity.oauth.pages import render, stylesheet
from proxy.identity.oauth.sessions import Session
from proxy.identity.oauth.uris import UriRefused, parse_redirect_uri
from proxy.identity.pats import looks_like_pat
from proxy.identity.principal import Principal
from proxy.store import StoreUnavailable

if TYPE_CHECKING:
    from proxy.identity.oauth.server import OAuthServer

log = logging.getLogger("scopegate.oauth")

APPROVALS_REQUEST = "approvals:"  # a sign-in's `request` when it came from the approval page
# Where a sign-in may send the person on (the console's pages): a fixed list, never a URL from the form.
CONSOLE_PAGES = frozenset({"/admin/credentials", "/admin/activity", "/admin/access"})


def _redirect(uri: str, params: dict[str, str | None]) -> web.Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return web.Response(status=303, headers={"Location": f"{uri}{'&' if '?' in uri else '?'}{query}",
                                             "Cache-Control": "no-store"})


def duration(seconds: int) -> str:
    """Pure: a lifetime in the largest whole unit people say (90 days, 12 hours, 30 minutes)."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def _encode(req: AuthorizationRequest) -> bytes:
    return orjson.dumps({"client": orjson.loads(req.client.to_json()), "redirect_uri": req.redirect_uri,
                         "state": req.state, "code_challenge": req.code_challenge, "scopes": list(req.scopes)})


def _decode(raw: bytes) -> AuthorizationRequest:
    data = orjson.loads(raw)
    return AuthorizationRequest(Client.from_json(orjson.dumps(data["client"])), data["redirect_uri"],
                                data["state"], data["code_challenge"], tuple(data["scopes"]))


class Pages:
    def __init__(self, server: OAuthServer) -> None:
        self.server = server
        self.base = server.settings.issuer.rstrip("/")
        self.path = urlsplit(self.base).path

    @property
    def origin(self) -> str:
        parts = urlsplit(self.server.settings.issuer)
        return f"{parts.scheme}://{parts.netloc}"

    def page(self, name: str, **context: Any) -> web.Response:
        s = self.server.settings
        return render(name, base=self.path, resource=s.resource, oidc_name=s.oidc.name if s.oidc else None,
                      token_sign_in=bool(set(s.sign_in) & {"pat", "admin_key"}), **context)

    def error(self, message: str, status: int = 400) -> web.Response:
        return self.page("error.html", message=message, status=status)

    def same_origin(self, request: web.Request) -> bool:
        """Browsers send Origin on every form POST; one from elsewhere is cross-site request forgery."""
        origin = request.headers.get("Origin")
        return origin is None or hmac.compare_digest(origin.encode(), self.origin.encode())

    # --- /authorize -------------------------------------------------------------------------------------------
    async def authorize(self, request: web.Request) -> web.StreamResponse:
        s = self.server.settings
        params: dict[str, list[str]] = {}
        for key, value in request.query.items():
            params.setdefault(key, []).append(value)
        client_ids = params.get("client_id") or []
        try:
            client = (await self.server.clients.find(client_ids[0], s.metadata()) if len(client_ids) == 1
                      else None)
        except DocumentRefused as exc:
            log.info("client metadata document refused: %s", exc)
            self.server.evidence.record("authorize", "deny", str(exc)[:200], client_id=client_ids[0][:200])
            return self.error(str(exc))
        try:
            req = check_authorization(params, client, s.resource, s.offered)
        except ShowError as exc:
            return self.error(str(exc))
        except RedirectError as exc:
            return _redirect(exc.redirect_uri, {"error": exc.error, "error_description": exc.description,
                                                "state": exc.state, "iss": s.issuer})
        session = await self.server.sessions.current(request)
        request_id = await self.server.sessions.park(_encode(req), signed_in=session is not None)
        if session is None:
            return self.page("signin.html", client=req.client, request_id=request_id, error=None)
        return self.consent_page(req, request_id, session)

    def after_sign_in(self, request_id: Any) -> str:
        """Where a sign-in that came for no authorization request goes: the approval page it came from (its
        `request` is `approvals:` and an approval id, checked here: never an address of the form's choosing), else
        Connected apps."""
        if isinstance(request_id, str) and request_id.startswith(APPROVALS_REQUEST):
            approval_id = request_id.removeprefix(APPROVALS_REQUEST)
            return f"{self.path}/approvals/{approval_id}" if valid_id(approval_id) else f"{self.path}/approvals"
        return f"{self.path}/apps"

    # --- sign-in ----------------------------------------------------------------------------------------------
    async def signin(self, request: web.Request) -> web.StreamResponse:
        if not self.same_origin(request):
            return self.error("This form must be sent from this site.", 403)
        data = await request.post()
        request_id = data.get("request")
        token = data.get("token")
        raw = await self.server.sessions.pending(request_id if isinstance(request_id, str) else None)
        req = _decode(raw) if raw else None
        principal = await self._principal(token if isinstance(token, str) else "")
        if principal is None:
            log.info("OAuth sign-in refused")
            self.server.evidence.record("signin", "deny", "credential not accepted",
                                        client_id=req.client.client_id if req else None)
            if req is None:
                return self.page("signin.html", client=None, request_id="", error="That credential was not accepted.",
                                 status=401)
            return self.page("signin.html", client=req.client, request_id=request_id,
                             error="That credential was not accepted.", status=401)
        response = web.Response(status=303, headers={"Cache-Control": "no-store"})
        await self.server.sessions.start(response, principal)
        if req is not None:
            await self.server.sessions.claim(str(request_id))
        after = data.get("next")
        response.headers["Location"] = (f"{self.path}/consent?{urlencode({'request': request_id})}" if req
                                        else after if isinstance(after, str) and after in CONSOLE_PAGES
                                        else self.after_sign_in(request_id))
        self.server.evidence.record("signin", "allow", principal.kind, subject=principal.subject,
                                    credential_id=principal.credential_id, label=principal.label,
                                    client_id=req.client.client_id if req else None)
        return response

    async def _principal(self, token: str) -> Principal | None:
        registry = self.server.registry
        if registry is None or not looks_like_pat(token) or len(token) > 200:
            return None
        principal, _ = await registry.resolve(token)
        if principal is None or principal.kind not in self.server.settings.sign_in:
            return None
        if await self.server.tree.revoked_any((principal.credential_id,)):
            return None
        return principal

    # --- sign-in through the organisation's OpenID Connect provider ----------------------------------------------
    async def oidc_start(self, request: web.Request) -> web.StreamResponse:
        oidc = self.server.oidc
        if oidc is None:
            return self.error("Sign-in through an identity provider is not configured here.", 404)
        request_id = request.query.get("request", "")
        if len(request_id) > 64:
            return self.error("Malformed request.")
        try:
            target, browser = await oidc.start(request_id)
        except SignInFailed as exc:
            log.warning("OIDC sign-in could not start: %s", exc)
            return self.error(f"Sign-in is unavailable right now: {exc}.", 502)
        response = web.Response(status=303, headers={"Location": target, "Cache-Control": "no-store"})
        response.set_cookie(OIDC_COOKIE, browser, max_age=600, path=self.path, httponly=True, samesite="Lax",
                            secure=self.server.settings.secure)
        return response

    async def oidc_callback(self, request: web.Request) -> web.StreamResponse:
        oidc = self.server.oidc
        if oidc is None:
            return self.error("Sign-in through an identity provider is not configured here.", 404)
        s = self.server.settings
        try:
            principal, request_id = await oidc.finish(dict(request.query), request.cookies.get(OIDC_COOKIE),
                                                      s.offered, s.ceiling)
        except SignInFailed as exc:
            log.info("OIDC sign-in refused: %s", exc)
            self.server.evidence.record("signin", "deny", f"OIDC: {exc}"[:200])
            return self.error(f"Sign-in failed: {exc}.", 403)
        response = web.Response(status=303, headers={"Cache-Control": "no-store"})
        response.del_cookie(OIDC_COOKIE, path=self.path)
        await self.server.sessions.start(response, principal)
        if request_id.startswith(APPROVALS_REQUEST):
            response.headers["Location"] = self.after_sign_in(request_id)
            return response
        await self.server.sessions.claim(request_id)
        response.headers["Location"] = (f"{self.path}/consent?{urlencode({'request': request_id})}" if request_id
                                        else f"{self.path}/apps")
        log.info("signed in through OIDC", extra={"credential_id": principal.credential_id})
        return response

    # --- consent ----------------------------------------------------------------------------------------------
    def workspace_choice(self, session: Session) -> dict[str, Any]:
        return {"bound": session.workspace, "options": list(session.workspaces or ()),
                "projects": list(session.projects or ()), "workspaces": None}

    def consent_page(self, req: AuthorizationRequest, request_id: str, session: Session) -> web.Response:
        try:
            target = parse_redirect_uri(req.redirect_uri)  # checked at /authorize; the CSP needs its parts
        except UriRefused as exc:
            return self.error(f"This app's redirect URI is not accepted (a redirect URI {exc}).")
        s = self.server.settings
        offered = self.server.consent_toggles(req.scopes, session.scopes)
        level, vouched = trust(req.client, frozenset(c.client_id for c in s.clients))
        known = next((c for c in s.clients if c.client_id == req.client.client_id), None)
        return self.page(
            "consent.html", client=req.client, redirect_uri=req.redirect_uri, request_id=request_id,
            subject=session.subject, csrf=session.csrf, toggles=offered, can_allow=any(t.grantable for t in offered),
            workspaces=self.workspace_choice(session), form_target=target, service=s.service_name,
            trust_level=level, trust=vouched, links=known.links if known is not None else (),
            lifetimes={"access": duration(s.access_ttl), "refresh": duration(s.refresh_ttl),
                       "grant": duration(s.grant_lifetime)},
        )

    async def consent_get(self, request: web.Request) -> web.StreamResponse:
        request_id = request.query.get("request")
        raw = await self.server.sessions.pending(request_id)
        if raw is None or request_id is None:
            return self.error("This authorization request has expired; start again from the app.")
        session = await self.server.sessions.current(request)
        req = _decode(raw)
        if session is None:
            return self.page("signin.html", client=req.client, request_id=request_id, error=None)
        return self.consent_page(req, request_id, session)

    async def consent_post(self, request: web.Request) -> web.StreamResponse:
        s = self.server.settings
        if not self.same_origin(request):
            return self.error("This form must be sent from this site.", 403)
        session = await self.server.sessions.current(request)
        data = await request.post()
        csrf = data.get("csrf")
        if session is None or not session.csrf_ok(csrf if isinstance(csrf, str) else None):
            log.warning("consent refused: missing or wrong CSRF token")
            return self.error("This form has expired or did not come from this site; start again from the app.",
                              403)
        request_id = data.get("request")
        raw = await self.server.sessions.pending(request_id if isinstance(request_id, str) else None, take=True)
        if raw is None:
            return self.error("This authorization request has expired or was already answered.")
        req = _decode(raw)
        if data.get("decision") != "allow":
            self.server.evidence.record("consent", "deny", "the person said no", client_id=req.client.client_id,
                                        subject=session.subject, label=req.client.name)
            return _redirect(req.redirect_uri, {"error": "access_denied", "error_description": "the user said no",
                                                "state": req.state, "iss": s.issuer})
        offered = self.server.consent_toggles(req.scopes, session.scopes)
        scopes = self.server.granted([v for v in data.getall("scope", []) if isinstance(v, str)], offered)
        workspace, workspaces, projects = self._resource_scope(session, data)
        grants = self.server.grants
        if not await grants.room_for(session.subject, session.credential_id, req.client.client_id):
            return self.error(f"You have {grants.per_person} connected apps, as many as allowed here: revoke one on "
                              "Connected apps, then start again from the app.", 409)
        # One grant per consent: this credential and this client. A consent again replaces the grant it had once its
        # code is exchanged (keeping its id when it covers it: a step-up); another credential's is a grant of its own.
        grant = await grants.for_consent(grants.new(
            subject=session.subject, client_id=req.client.client_id, client_name=req.client.name, scopes=scopes,
            parent=session.credential_id, parent_kind=session.kind, role=session.role,
            workspace=workspace, workspaces=workspaces, projects=projects,
            permissions={name: "none" for name, level in session.permissions.items() if level == "none"},
        ))
        code = await self.server.grants.issue_code(PendingCode(grant, req.redirect_uri, req.code_challenge))
        log.info("OAuth consent given", extra={"credential_id": grant.credential_id, "client_id": grant.client_id})
        self.server.evidence.record("consent", "allow", " ".join(grant.scopes) or "(no scope)",
                                    client_id=grant.client_id, subject=grant.subject,
                                    credential_id=grant.credential_id, label=grant.client_name)
        return _redirect(req.redirect_uri, {"code": code, "state": req.state, "iss": s.issuer})

    @staticmethod
    def _resource_scope(session: Session, data: Any) -> tuple[str | None, tuple[str, ...] | None,
                                                             tuple[str, ...] | None]:
        """The workspace and projects chosen, never wider than the sign-in credential's (a forged form narrows
        at most)."""
        if session.workspace is not None:
            workspace, workspaces = session.workspace, None
        else:
            picked = data.get("workspace") or data.get("workspace_name") or ""
            picked = picked.strip() if isinstance(picked, str) else ""
            if picked and (session.workspaces is None or picked in session.workspaces) and len(picked) <= 128:
                workspace, workspaces = picked, None
            else:
                workspace, workspaces = None, session.workspaces
        projects = session.projects
        if projects is not None:
            chosen = {v for v in data.getall("project", []) if isinstance(v, str)}
            projects = tuple(p for p in projects if p in chosen)
        return workspace, workspaces, projects

def add_routes(app: web.Application, server: OAuthServer, wrap: Callable[[Any], Any]) -> None:
    pages = Pages(server)

    def guarded(handler: Any, limited: bool = False) -> Any:
        async def run(request: web.Request) -> web.StreamResponse:
            if not server.admitted(request):
                return pages.error("This address is not served here.", 403)
            try:
                if limited and (wait := await server.too_many(request)) is not None:
                    refused = pages.error(f"Too many requests from this address: try again in {wait} seconds.", 429)
                    refused.headers["Retry-After"] = str(wait)
                    return refused
                return await handler(request)
            except StoreUnavailable:
                return pages.error("The service cannot check this right now; try again shortly.", 503)

        return wrap(run)

    base = pages.path
    app.router.add_get(base + "/authorize", guarded(pages.authorize, limited=True))
    app.router.add_post(base + "/signin", guarded(pages.signin))
    app.router.add_get(base + "/consent", guarded(pages.consent_get))
    app.router.add_post(base + "/consent", guarded(pages.consent_post))
    apps = ConnectedApps(pages)
    app.router.add_get(base + "/apps", guarded(apps.apps))
    app.router.add_get(base + "/oidc/start", guarded(pages.oidc_start))
    app.router.add_get(base + "/oidc/callback", guarded(pages.oidc_callback))
    app.router.add_post(base + "/apps/revoke", guarded(apps.revoke))
    approvals = ApprovalPage(pages)
    app.router.add_get(base + "/approvals", guarded(approvals.queue))
    app.router.add_get(base + "/approvals/{id}", guarded(approvals.show))
    app.router.add_post(base + "/approvals/{id}", guarded(approvals.decide))

    async def style(request: web.Request) -> web.Response:
        return stylesheet()

    app.router.add_get(base + "/style.css", guarded(style))
