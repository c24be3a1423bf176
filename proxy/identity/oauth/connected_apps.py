"""The Connected apps page: every PAT and OAuth grant the signed-in person holds, what each may do, when it was
last used, and a button that revokes it (on every replica, on its next request). The grant is shown with the same
toggle component as the consent page, read-only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.identity.authenticate import LAST_USED_KEY, REVOKED_KEY
from proxy.identity.oauth.authorization import Toggle
from proxy.identity.oauth.grants import GRANT_PREFIX
from proxy.identity.oauth.sessions import Session

if TYPE_CHECKING:
    from proxy.identity.oauth.browser import Pages

log = logging.getLogger("scopegate.oauth")


class ConnectedApps:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    async def apps(self, request: web.Request) -> web.StreamResponse:
        session = await self.pages.server.sessions.current(request)
        if session is None:
            return self.pages.page("signin.html", client=None, request_id="", error=None)
        return await self.apps_page(session, notice=request.query.get("notice"))

    async def apps_page(self, session: Session, notice: str | None = None) -> web.Response:
        store = self.pages.server.store
        items = []
        for grant in await self.pages.server.grants.of_subject(session.subject):
            items.append({
                "id": grant.credential_id, "name": grant.client_name, "kind": "OAuth app",
                "created": _when(grant.created),
                "last_used": _when(await store.get(LAST_USED_KEY + grant.credential_id)),
                "toggles": [Toggle(s, True) for s in grant.scopes], "revocable": True,
                "workspaces": {"bound": grant.workspace, "workspaces": list(grant.workspaces or ()) or None,
                               "projects": list(grant.projects) if grant.projects is not None else None},
            })
        for record in self._records(session.subject):
            if await store.exists(REVOKED_KEY + record.id):
                continue
            items.append({
                "id": record.id, "name": record.label, "kind": "Admin key" if record.kind == "admin_key" else "PAT",
                "created": record.created.strftime("%Y-%m-%d %H:%M UTC"),
                "last_used": _when(await store.get(LAST_USED_KEY + record.id)),
                "toggles": [Toggle(s, True) for s in record.scopes], "revocable": True,
                "workspaces": {"bound": record.workspace, "workspaces": record.workspaces,
                               "projects": record.projects},
            })
        return self.pages.page("apps.html", subject=session.subject, csrf=session.csrf, items=items,
                         notice=notice if notice in ("Revoked.",) else None)

    def _records(self, subject: str) -> list[Any]:
        registry = self.pages.server.registry
        if registry is None:
            return []
        registry.maybe_refresh()
        return [r for r in registry.records() if r.subject == subject and not r.revoked]

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        if not self.pages.same_origin(request):
            return self.pages.error("This form must be sent from this site.", 403)
        session = await self.pages.server.sessions.current(request)
        data = await request.post()
        csrf = data.get("csrf")
        if session is None or not session.csrf_ok(csrf if isinstance(csrf, str) else None):
            return self.pages.error("This form has expired or did not come from this site.", 403)
        target = data.get("id")
        if isinstance(target, str) and target.startswith(GRANT_PREFIX):
            grant = await self.pages.server.grants.find(target[len(GRANT_PREFIX):])
            if grant is None or grant.subject != session.subject:
                return self.pages.error("No such app.", 404)
            await self.pages.server.grants.revoke(grant.grant_id)
            self.pages.server.evidence.record("revoke", "allow", "revoked on Connected apps", client_id=grant.client_id,
                                        subject=grant.subject, credential_id=grant.credential_id,
                                        label=grant.client_name)
        elif isinstance(target, str) and any(r.id == target for r in self._records(session.subject)):
            await self.pages.server.store.set(REVOKED_KEY + target, "1")  # type: ignore[union-attr]
            log.info("credential revoked on Connected apps", extra={"credential_id": target})
            self.pages.server.evidence.record("revoke", "allow", "revoked on Connected apps", subject=session.subject,
                                        credential_id=target)
        else:
            return self.pages.error("No such credential.", 404)
        return web.Response(status=303, headers={"Location": f"{self.pages.path}/apps?notice=Revoked.",
                                                 "Cache-Control": "no-store"})


def _when(value: Any) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%d %H:%M UTC")
