"""The Connected apps page: every PAT and OAuth grant the signed-in person holds, what each may do, when it was
last used, and a button that revokes it (on every replica, on its next request, and what it was the parent of with
it). The grant is shown with the same toggle component as the consent page, read-only.

The page acts within its sign-in: a session revokes only credentials no stronger than the one it signed in with
(every scope of the target held by the session's credential; admin keys only from an admin-key session), so a
read-only PAT that leaked cannot end its owner's admin key or write grants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.identity.oauth.authorization import Toggle
from proxy.identity.oauth.grants import GRANT_PREFIX, Grant
from proxy.identity.oauth.sessions import Session

if TYPE_CHECKING:
    from proxy.identity.oauth.browser import Pages
    from proxy.identity.pats import Record

log = logging.getLogger("scopegate.oauth")


Reach = tuple[frozenset[str] | None, frozenset[str] | None]  # (workspaces, projects); None: every one


def reach(workspace: str | None, workspaces: Iterable[str] | None, projects: Iterable[str] | None) -> Reach:
    """Pure: where a credential acts: its bound workspace, else its listed ones (None: all), and its projects."""
    listed = frozenset([workspace]) if workspace is not None else (
        frozenset(workspaces) if workspaces is not None else None)
    return listed, frozenset(projects) if projects is not None else None


def may_revoke(session: Session, target_kind: str, target_scopes: frozenset[str],
               target_reach: Reach = (None, None)) -> bool:
    """Pure: whether a page session may revoke a credential of this kind holding these scopes where it acts: no
    stronger than the sign-in in scopes, and in no workspace or project the sign-in cannot act in (a token bound to
    one workspace that leaked must not end its owner's credential for all of them)."""
    if target_kind == "admin_key" and session.kind != "admin_key":
        return False

    def within(small: frozenset[str] | None, large: frozenset[str] | None) -> bool:
        return large is None or (small is not None and small <= large)

    own = reach(session.workspace, session.workspaces, session.projects)
    return (target_scopes <= frozenset(session.scopes) and within(target_reach[0], own[0])
            and within(target_reach[1], own[1]))


class ConnectedApps:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    async def apps(self, request: web.Request) -> web.StreamResponse:
        session = await self.pages.server.sessions.current(request)
        if session is None:
            return self.pages.page("signin.html", client=None, request_id="", error=None)
        return await self.apps_page(session, await self._notice(session, request.query.get("revoked")))

    async def apps_page(self, session: Session, notice: str | None = None) -> web.Response:
        server = self.pages.server
        grants = await server.grants.of_subject(session.subject)
        records = await self._records(session.subject)
        used = await server.tree.last_used([g.credential_id for g in grants] + [r.id for r in records])
        items = []
        for grant in grants:
            items.append({
                "id": grant.credential_id, "name": grant.client_name, "kind": "OAuth app",
                "created": _when(grant.created), "last_used": _when(used.get(grant.credential_id)),
                "toggles": [Toggle(s, True) for s in grant.scopes],
                "revocable": may_revoke(session, "oauth", frozenset(grant.scopes), _grant_reach(grant)),
                "workspaces": {"bound": grant.workspace, "workspaces": list(grant.workspaces or ()) or None,
                               "projects": list(grant.projects) if grant.projects is not None else None},
            })
        for record in records:
            items.append({
                "id": record.id, "name": record.label, "kind": "Admin key" if record.kind == "admin_key" else "PAT",
                "created": record.created.strftime("%Y-%m-%d %H:%M UTC"), "last_used": _when(used.get(record.id)),
                "toggles": [Toggle(s, True) for s in record.scopes],
                "revocable": may_revoke(session, record.kind, self._held(record), self._reach(record)),
                "workspaces": {"bound": record.workspace, "workspaces": record.workspaces,
                               "projects": record.projects},
            })
        return self.pages.page("apps.html", subject=session.subject, csrf=session.csrf, items=items, notice=notice)

    async def _records(self, subject: str) -> list[Record]:
        """The person's PATs and admin keys that still work (not marked in the file, not revoked, not expired)."""
        registry = self.pages.server.registry
        if registry is None:
            return []
        mine = [r for r in registry.records() if r.subject == subject and registry.live(r.id) is not None]
        revoked = await self.pages.server.tree.revocations(r.id for r in mine)
        return [r for r in mine if r.id not in revoked]

    def _held(self, record: Record) -> frozenset[str]:
        live = self.pages.server.registry.live(record.id) if self.pages.server.registry else None
        return live.scopes if live is not None else frozenset(record.scopes)

    def _reach(self, record: Record) -> Reach:
        live = self.pages.server.registry.live(record.id) if self.pages.server.registry else None
        if live is None:
            return reach(record.workspace, record.workspaces, record.projects)
        return reach(live.bound_workspace, live.workspaces, live.projects)

    @staticmethod
    def _by(session: Session) -> str:
        return f"{session.subject} on Connected apps ({session.credential_id})"

    async def _notice(self, session: Session, revoked: str | None) -> str | None:
        """What a revoke this person just made ended, read back from its record (never from the query)."""
        if not revoked or len(revoked) > 64:
            return None
        record = await self.pages.server.tree.revocation(revoked)
        if record is None or record.by != self._by(session):
            return None
        if not record.cascaded:
            return "Revoked."
        return f"Revoked. It also ended {len(record.cascaded)} app grant(s) signed in with it: " + ", ".join(
            record.cascaded) + "."

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        if not self.pages.same_origin(request):
            return self.pages.error("This form must be sent from this site.", 403)
        server = self.pages.server
        session = await server.sessions.current(request)
        data = await request.post()
        csrf = data.get("csrf")
        if session is None or not session.csrf_ok(csrf if isinstance(csrf, str) else None):
            return self.pages.error("This form has expired or did not come from this site.", 403)
        target = data.get("id")
        if not isinstance(target, str) or len(target) > 64:
            return self.pages.error("No such credential.", 404)
        if target.startswith(GRANT_PREFIX):
            grant = next((g for g in await server.grants.of_subject(session.subject) if g.credential_id == target),
                         None)
            if grant is None:
                return self.pages.error("No such app.", 404)
            if not may_revoke(session, "oauth", frozenset(grant.scopes), _grant_reach(grant)):
                return self.pages.error(_STRONGER, 403)
            await server.grants.revoke(grant.grant_id, by=self._by(session), reason="revoked on Connected apps")
            server.evidence.record("revoke", "allow", "revoked on Connected apps", client_id=grant.client_id,
                                   subject=grant.subject, credential_id=grant.credential_id, label=grant.client_name)
        else:
            record = next((r for r in await self._records(session.subject) if r.id == target), None)
            if record is None:
                return self.pages.error("No such credential.", 404)
            if not may_revoke(session, record.kind, self._held(record), self._reach(record)):
                return self.pages.error(_STRONGER, 403)
            # Kept for good, not until the expiry the file says now: the file may renew it at any time (a Secret
            # update), and the revoked credential would work again. One row per credential the operator made.
            ended = await server.tree.revoke(record.id, by=self._by(session), reason="revoked on Connected apps")
            log.info("credential revoked on Connected apps", extra={"credential_id": target})
            server.evidence.record("revoke", "allow", f"revoked on Connected apps; ended {len(ended.cascaded)} "
                                   "grant(s) with it", subject=session.subject, credential_id=target)
        return web.Response(status=303, headers={"Location": f"{self.pages.path}/apps?revoked={target}",
                                                 "Cache-Control": "no-store"})


_STRONGER = ("This credential holds more than the one you signed in with: sign in with a credential that holds "
             "at least as much (an admin key for an admin key) to revoke it.")


def _grant_reach(grant: Grant) -> Reach:
    return reach(grant.workspace, grant.workspaces, grant.projects)


def _when(value: Any) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%d %H:%M UTC")
