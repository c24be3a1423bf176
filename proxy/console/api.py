"""The admin API: JSON under /admin/api on the proxy's own listener, Host-checked like every route.

Authenticated by an admin key (or a registry credential whose role the policy names in `administrators:`) as
`Authorization: Bearer`, or by the browser sign-in session of the OAuth server; then every state-changing request
must also carry the session's CSRF token (`X-CSRF-Token`), come from this site (Origin, Sec-Fetch-Site) and be JSON
(a form post from another site can send none of these). Everyone else: 401 (no credential) or 403 (not an
administrator). The OpenAPI document is at /admin/api/openapi.json.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.console import activity
from proxy.console.actors import Actor
from proxy.console.credentials import Invalid, Query, Refused, parse_want
from proxy.console.openapi import document
from proxy.console.service import Console
from proxy.ops.sinks import TrailUnreadable
from proxy.ops.trail import verify
from proxy.store import StoreUnavailable

log = logging.getLogger("scopegate.console")

BASE = "/admin/api"
MAX_BODY = 64 * 1024
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
Handler = Callable[[web.Request, Actor], Awaitable[web.Response]]


def answer(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=HEADERS)


def problem(status: int, message: str) -> web.Response:
    response = answer({"error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="scopegate admin API"'
    return response


async def json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise Invalid("expected Content-Type: application/json", 415)
    if (request.content_length or 0) > MAX_BODY:
        raise Invalid("body too large", 413)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise Invalid("body too large", 413)
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise Invalid("not JSON") from None


class AdminApi:
    def __init__(self, console: Console) -> None:
        self.console = console

    def route(self, handler: Handler, *, changes: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def run(request: web.Request) -> web.Response:
            console = self.console
            if console.credentials is None:
                return problem(503, "starting")
            try:
                actor, presented = await console.bearer(request)
                if actor is None and presented:
                    return problem(401, "a valid admin key is required")
                if actor is None:
                    actor = await console.signed_in(request)
                    if actor is None:
                        return problem(401, "sign in, or send an admin key as a bearer token")
                    if changes and not console.same_origin(request):
                        console.note("api", "deny", "cross-origin request", actor=actor)
                        return problem(403, "this request must come from this site")
                    if changes and not console.csrf_ok(actor, request.headers.get("X-CSRF-Token")):
                        return problem(403, "missing or wrong X-CSRF-Token")
                if not actor.admin:
                    console.note("api", "deny", "not an administrator", actor=actor)
                    return problem(403, "administrators only (an admin key, or a role the policy names in "
                                        "`administrators:`)")
                return await handler(request, actor)
            except Refused as exc:
                return problem(403, str(exc))
            except Invalid as exc:
                return problem(exc.status, str(exc))
            except StoreUnavailable:
                return problem(503, "the credential state cannot be read now; try again shortly")

        return run

    # --- credentials ------------------------------------------------------------------------------------------
    async def list(self, request: web.Request, actor: Actor) -> web.Response:
        q = request.query
        query = Query(text=q.get("q", "")[:200], kind=q.get("kind", ""), status=q.get("status", ""),
                      subject=q.get("subject", "")[:200])
        assert self.console.credentials is not None
        return answer({"credentials": await self.console.credentials.rows(actor, query)})

    async def create(self, request: web.Request, actor: Actor) -> web.Response:
        assert self.console.credentials is not None
        want = parse_want(await json_body(request), actor)
        row, token = await self.console.credentials.create(actor, want)
        return answer({"credential": row, "token": token}, 201)

    async def rotate(self, request: web.Request, actor: Actor) -> web.Response:
        assert self.console.credentials is not None
        body = await json_body(request)
        grace = body.get("grace", "1h") if isinstance(body, dict) else None
        if not isinstance(grace, str):
            raise Invalid("grace: a duration such as 1h, or 0")
        row, token = await self.console.credentials.rotate(actor, request.match_info["id"], grace)
        return answer({"credential": row, "token": token})

    async def revoke(self, request: web.Request, actor: Actor) -> web.Response:
        assert self.console.credentials is not None
        body = await json_body(request)
        cred_id = request.match_info["id"]
        if isinstance(body, dict) and body.get("dry_run") is True:
            return answer(await self.console.credentials.ends(actor, cred_id))
        return answer(await self.console.credentials.revoke(actor, cred_id))

    # --- activity ---------------------------------------------------------------------------------------------
    async def activity(self, request: web.Request, actor: Actor) -> web.Response:
        search = search_of(request.query)
        key, which = self.console.key(None)
        try:
            records = await activity.read(self.console.trail.sink, self.console.trail.redis_url)
        except TrailUnreadable as exc:
            raise Invalid(str(exc), 409) from None
        return answer({"records": activity.search(records, search, key), "verified_with": which})

    async def verify(self, request: web.Request, actor: Actor) -> web.Response:
        body = await json_body(request)
        pem = body.get("public_key") if isinstance(body, dict) else None
        if pem is not None and not isinstance(pem, str):
            raise Invalid("public_key: a PEM string")
        key, which = self.console.key(pem)
        try:
            records = await activity.read(self.console.trail.sink, self.console.trail.redis_url)
        except TrailUnreadable as exc:
            raise Invalid(str(exc), 409) from None
        report = verify(records, key)
        return answer({"whole": report.whole, "records": report.records, "chains": report.chains,
                       "problems": report.problems, "notes": report.notes, "verified_with": which,
                       "head": [str(tip) for tip in report.head]})

    # --- access -----------------------------------------------------------------------------------------------
    async def access(self, request: web.Request, actor: Actor) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise Invalid("expected a JSON object")
        held, workspace, who = await access_of(self.console, body)
        try:
            return answer(await self.console.simulate(held, workspace, who))
        except Exception as exc:  # the upstream's lists could not be had: said, not guessed
            log.warning("access simulation: upstream lists unavailable (%s)", type(exc).__name__)
            return problem(503, "the upstream's lists cannot be had now; try again shortly")

    async def openapi(self, request: web.Request) -> web.Response:
        return answer(document())


async def access_of(console: Console, body: dict[str, Any]) -> tuple[frozenset[str], str | None, str]:
    """A simulation's subject: `credential` (an id), or `scopes` (+ `workspace`)."""
    credential = body.get("credential")
    if isinstance(credential, str) and credential:
        return await console.held_by(credential[:64])
    scopes = body.get("scopes")
    if isinstance(scopes, str):
        scopes = scopes.replace(",", " ").split()
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise Invalid("give `credential` (an id) or `scopes` (a list)")
    workspace = body.get("workspace")
    if workspace is not None and not isinstance(workspace, str):
        raise Invalid("workspace: a name")
    return frozenset(scopes), workspace or None, "the scopes " + (" ".join(sorted(scopes)) or "(none)")


def search_of(query: Any) -> activity.Search:
    try:
        since = activity.parse_time(query["since"]) if query.get("since") else None
        until = activity.parse_time(query["until"]) if query.get("until") else None
        limit = int(query.get("limit", "100"))
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return activity.Search(subject=query.get("subject", "")[:200], credential=query.get("credential", "")[:64],
                           tool=query.get("tool", "")[:200], workspace=query.get("workspace", "")[:128],
                           decision=query.get("decision", "")[:32], since=since, until=until, limit=limit)


def add_routes(app: web.Application, api: AdminApi, guard: Callable[[Any], Any]) -> None:
    """`guard`: the Host check and the edge's last line of defence around each handler."""
    app.router.add_get(BASE + "/openapi.json", guard(api.openapi))
    app.router.add_get(BASE + "/credentials", guard(api.route(api.list, changes=False)))
    app.router.add_post(BASE + "/credentials", guard(api.route(api.create, changes=True)))
    app.router.add_post(BASE + "/credentials/{id}/rotate", guard(api.route(api.rotate, changes=True)))
    app.router.add_post(BASE + "/credentials/{id}/revoke", guard(api.route(api.revoke, changes=True)))
    app.router.add_get(BASE + "/activity", guard(api.route(api.activity, changes=False)))
    app.router.add_post(BASE + "/activity/verify", guard(api.route(api.verify, changes=True)))
    app.router.add_post(BASE + "/access", guard(api.route(api.access, changes=True)))
