"""The approval page: a named person approves or declines a held write (`approve: {via: page}`).

Server-rendered like the consent page (same templates, CSP, no framing, no JavaScript), signed in the same way
(the OAuth server's browser session: a PAT, an admin key or the organisation's OIDC provider). GET shows one
request (tool, workspace, every argument with redactions applied, the dry run, who asked and when, until when it is
valid, a warning when the dry run is older than the rule's `fresh_seconds`) or the queue of what the signed-in person
may decide; POST decides, once, after the Origin check, the session's CSRF token, and on the server: `approvers`
and `four_eyes` (`approval_record.approver_problem`). What the page shows comes from the record the proxy kept, never
from the query.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.identity.approvals import Approvals, approver_problem, valid_id
from proxy.identity.oauth.sessions import Session
from proxy.shown import shown_as_json

if TYPE_CHECKING:
    from proxy.identity.oauth.browser import Pages

log = logging.getLogger("scopegate.approvals")

MAX_REASON = 500


def _when(value: float) -> str:
    return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def view(request: dict[str, Any], now: float) -> dict[str, Any]:
    """What the page shows of one request. Pure: every value a caller chose is shown as escaped JSON text (the
    template escapes it again for HTML)."""
    age = now - request["created"]
    fresh = request.get("fresh_seconds")
    return {
        "id": request["id"], "tool": request["tool"],
        "workspace": shown_as_json(request["workspace"]) if request["workspace"] is not None else None,
        "arguments": [(name, shown_as_json(value)) for name, value in request["shown"].items()],
        "dry_run": shown_as_json(request["upstream_preview"]) if request["dry_run"] else None,
        "requester": request["requester"], "asked": _when(request["created"]), "until": _when(request["expires"]),
        "valid_for": max(0, int(request["expires"] - now)),
        "stale": bool(request["dry_run"] and fresh is not None and age > fresh), "age": int(age),
        "four_eyes": request["four_eyes"],
    }


class ApprovalPage:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    @property
    def approvals(self) -> Approvals | None:
        return getattr(self.pages.server, "approvals", None)

    def _sign_in(self, approval_id: str = "") -> web.Response:
        return self.pages.page("signin.html", client=None, request_id="approvals:" + approval_id, error=None,
                               approval=True)

    async def queue(self, request: web.Request) -> web.StreamResponse:
        session = await self.pages.server.sessions.current(request)
        if session is None:
            return self._sign_in()
        approvals = self.approvals
        now = time.time()
        waiting = await approvals.waiting() if approvals is not None else []
        mine = [view(r, now) for r in waiting if approver_problem(r, session.subject, session.role,
                                                                  session.scopes) is None]
        return self.pages.page("approvals.html", subject=session.subject, items=mine)

    async def show(self, request: web.Request) -> web.StreamResponse:
        approval_id = request.match_info["id"]
        if not valid_id(approval_id) or self.approvals is None:
            return self.pages.error("No such approval.", 404)
        session = await self.pages.server.sessions.current(request)
        if session is None:
            return self._sign_in(approval_id)
        return await self._page(approval_id, session)

    async def _page(self, approval_id: str, session: Session, notice: str | None = None,
                    status: int = 200) -> web.Response:
        approvals = self.approvals
        assert approvals is not None
        held = await approvals.request(approval_id)
        if held is None:
            decided = await approvals.decision(approval_id)
            if decided is None:
                return self.pages.error("This approval is unknown or has expired: nothing will be changed. The "
                                        "agent can ask again.", 404)
            return self.pages.page("approval.html", subject=session.subject, item=None, decided=decided,
                                   decided_at=_when(decided["at"]), problem=None, csrf=session.csrf, notice=notice,
                                   status=status)
        if held["expires"] <= time.time():
            return self.pages.error("This approval has expired: nothing will be changed. The agent can ask again.",
                                    410)
        problem = approver_problem(held, session.subject, session.role, session.scopes)
        if problem is not None and session.subject != held["requester"]["subject"]:
            # What a write would change is for its approvers (and the person who asked), not any signed-in person.
            return self.pages.error(f"You cannot see or decide this write: {problem}.", 403)
        return self.pages.page("approval.html", subject=session.subject, item=view(held, time.time()),
                               decided=None, decided_at=None, problem=problem, csrf=session.csrf, notice=notice,
                               status=status if problem is None else 403)

    async def decide(self, request: web.Request) -> web.StreamResponse:
        if not self.pages.same_origin(request):
            return self.pages.error("This form must be sent from this site.", 403)
        approval_id = request.match_info["id"]
        approvals = self.approvals
        if not valid_id(approval_id) or approvals is None:
            return self.pages.error("No such approval.", 404)
        session = await self.pages.server.sessions.current(request)
        data = await request.post()
        csrf = data.get("csrf")
        if session is None or not session.csrf_ok(csrf if isinstance(csrf, str) else None):
            log.warning("approval decision refused: missing or wrong CSRF token")
            return self.pages.error("This form has expired or did not come from this site; open the approval "
                                    "link again.", 403)
        held = await approvals.request(approval_id)
        if held is None or held["expires"] <= time.time():
            return await self._page(approval_id, session, status=409)
        problem = approver_problem(held, session.subject, session.role, session.scopes)
        if problem is not None:
            log.warning("approval decision refused: %s", problem, extra={"credential_id": session.credential_id})
            if approvals.on_refused is not None:
                approvals.on_refused(held, session, problem)
            return await self._page(approval_id, session)
        choice = data.get("decision")
        if choice not in ("approve", "decline"):
            return self.pages.error("Choose Approve or Decline.", 400)
        reason = data.get("reason")
        reason = reason.strip()[:MAX_REASON] if isinstance(reason, str) else ""
        by = {"subject": session.subject, "credential_id": session.credential_id, "kind": session.kind,
              "role": session.role}
        decided = await approvals.decide(approval_id, choice == "approve", by, reason)
        if decided is None or decided["decision"] == "expired":
            return await self._page(approval_id, session, status=409)
        log.info("approval %s: %s", decided["decision"], approval_id, extra={"credential_id": session.credential_id})
        return web.Response(status=303, headers={"Location": f"{self.pages.path}/approvals/{approval_id}",
                                                 "Cache-Control": "no-store"})
