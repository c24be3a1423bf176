"""Evidence of approvals on the page: audit records, metrics, and the optional webhook.

The audit trail links everything by the approval id: the held call's record (decision `preview`, reason = the id),
the page's decision (method `approval/decide`: the approver as the record's caller, `allow` for approved, `deny`
for declined, the person's reason; `preview_id` = the id), a refused approver (`approval/refused`), and the
forwarded call (decision `confirm`, `preview_id` = the id). The webhook gets a Slack-compatible JSON message
(`{"text": ...}` with the link) whenever a write starts waiting; it is sent in the background, with a short timeout,
and its failure is logged, never the request's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from proxy.exchange import Exchange, Outcome
from proxy.identity.principal import Principal
from proxy.ops.metrics import Metrics

log = logging.getLogger("scopegate.approvals")

WEBHOOK_TIMEOUT = 5.0


def slack_message(request: dict[str, Any]) -> dict[str, Any]:
    """The webhook's body: Slack's incoming-webhook shape (`text`), which Mattermost, Teams workflows and most chat
    tools accept too. Pure. Names the tool, who asked and the link; never an argument."""
    where = f" in workspace {request['workspace']}" if request.get("workspace") else ""
    text = (f"A write waits for approval: {request['tool']}{where}, asked by {request['requester']['subject']}. "
            f"Review it: {request['link']}")
    return {"text": text, "approval": {"id": request["id"], "tool": request["tool"], "url": request["link"],
                                       "requester": request["requester"]["subject"]}}


class ApprovalEvents:
    def __init__(self, writer: Callable[[Exchange], None] | None, metrics: Metrics | None,
                 webhook: str | None = None, http: aiohttp.ClientSession | None = None) -> None:
        self.writer = writer
        self.metrics = metrics
        self.webhook = webhook
        self.http = http
        self._sending: set[asyncio.Task[None]] = set()

    def _record(self, method: str, decision: str, reason: str, request: dict[str, Any], by: dict[str, Any]) -> None:
        if self.writer is None:
            return
        exchange = Exchange(request_id=secrets.token_hex(16), session_id=None, protocol_version=None,
                            upstream_headers=CIMultiDict(), http_method="POST")
        exchange.principal = Principal(subject=by["subject"], credential_id=by.get("credential_id") or "",
                                       label="approval page", kind=by.get("kind") or "pat", scopes=frozenset())
        exchange.confirmed["approval"] = request["id"]  # the record's preview_id: the one id linking them all
        message = {"id": "approval", "method": method, "params": {"name": request["tool"]}}
        exchange.outcomes.append(Outcome(message, decision, reason[:300]))
        self.writer(exchange)

    def waiting(self, request: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.approvals.labels("requested").inc()
        if self.webhook and self.http is not None:
            task = asyncio.get_running_loop().create_task(self._notify(request))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def decided(self, request: dict[str, Any], decided: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.approvals.labels(decided["decision"]).inc()
        said = f"{decided['decision']} for {request['requester']['subject']}"
        self._record("approval/decide", "allow" if decided["decision"] == "approved" else "deny",
                     f"{said}: {decided['reason']}" if decided["reason"] else said, request, decided["by"])

    def refused(self, request: dict[str, Any], session: Any, problem: str) -> None:
        if self.metrics is not None:
            self.metrics.approvals.labels("refused_approver").inc()
        self._record("approval/refused", "deny", problem, request,
                     {"subject": session.subject, "credential_id": session.credential_id, "kind": session.kind})

    async def _notify(self, request: dict[str, Any]) -> None:
        assert self.http is not None and self.webhook is not None
        try:
            async with self.http.post(self.webhook, data=orjson.dumps(slack_message(request)),
                                      headers={"Content-Type": "application/json"},
                                      timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)) as answer:
                if answer.status >= 300:
                    log.warning("approval webhook answered HTTP %d", answer.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("approval webhook failed: %s", type(exc).__name__)

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
