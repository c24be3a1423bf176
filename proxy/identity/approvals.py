"""Approval by a named person on the approval page (`approve: {via: page}`): the record, where it lives, and the
pure rules over it.

Where each part lives, and why:
- The **request** (what the page shows: tool, workspace, redacted arguments, dry run, who asked, the bindings) is
  ephemeral: it lives in the Store with a TTL of the approval's life. Lost on a restart of a replica without Redis,
  it fails closed: the retry finds nothing and the agent asks again.
- The **decision** (who approved or declined, when, why, what it was bound to) is evidence: it goes to the durable
  state (SQLite in SCOPEGATE_STATE_DIR, or Redis) and outlives restarts, beside the audit trail's record of it.
- The **ticket** that lets one retry through is single use: a Store key taken atomically (GETDEL in Redis), so of
  any number of concurrent retries on any replicas one gets it. It carries the bindings the retry must match.
- The queue's index (the ids waiting) is a durable group, pruned of ids whose request is gone when read.
- A legacy (2025-11-25) call held on its stream waits on a Store list (`pop_wait`) that the page pushes to, so the
  decision reaches whichever replica holds the call.

An approval is bound to the requester's credential (id, subject, kind), session, tool, workspace, argument digest,
the policy version in force when it was asked, and its expiry.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.durable import Durable
from proxy.policy.model import Policy
from proxy.store import Store

ID_PREFIX = "apv_"
REQUEST_KEY = "scopegate:approval-request:"
TICKET_KEY = "scopegate:approval-ticket:"
CALL_KEY = "scopegate:approval-call:"
WAKE_KEY = "scopegate:approval-wake:"
DECISION_KEY = "scopegate:approval-decision:"
QUEUE = "scopegate:approvals-waiting"
QUEUE_LIMIT = 10_000
DECISION_TTL = 90 * 86400  # decided approvals are evidence: kept like a grant's life
BOUND = ("credential_id", "subject", "kind", "session", "tool", "workspace", "digest")

_versions: dict[int, tuple[Policy, str]] = {}


def policy_version(policy: Policy) -> str:
    """A digest of the policy's content: the same file on every replica gives the same version, a reload that
    changes anything gives another. Computed once per policy object (only when an approval is asked or used)."""
    known = _versions.get(id(policy))
    if known is None or known[0] is not policy:
        if len(_versions) > 64:
            _versions.clear()
        known = _versions[id(policy)] = (policy, hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:32])
    return known[1]


def new_id() -> str:
    return ID_PREFIX + secrets.token_urlsafe(18)


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(ID_PREFIX) and 8 < len(value) <= 64 and \
        all(c.isalnum() or c in "-_" for c in value)


def call_key(bindings: dict[str, Any]) -> str:
    """The one pending approval of this exact call (credential, session, tool, arguments): how a client that cannot
    carry a requestState is recognised when it calls again with the same arguments."""
    what = orjson.dumps([bindings[name] for name in BOUND], option=orjson.OPT_NON_STR_KEYS)
    return CALL_KEY + hashlib.sha256(what).hexdigest()


def binding_problem(bound: dict[str, Any], now: float, version: str, call: dict[str, Any]) -> tuple[str, str | None]:
    """(code, why) this call may not use this approval; ("", None) when every binding holds. Pure."""
    if bound["expires"] <= now:
        return "expired", "the approval has expired: call the tool again to ask anew"
    if (bound["credential_id"], bound["subject"], bound["kind"]) != (call["credential_id"], call["subject"],
                                                                      call["kind"]):
        return "credential", "the approval was given to another credential's request"
    if bound["session"] != call["session"]:
        return "session", "the approval was given in another session"
    if bound["tool"] != call["tool"]:
        return "tool", f"the approval was given for {bound['tool']}, not {call['tool']}"
    if bound["workspace"] != call["workspace"]:
        return "workspace", "the approval was given for another workspace"
    if bound["digest"] != call["digest"]:
        return "arguments", "the arguments differ from the approved ones: call again to ask anew"
    if bound["policy"] != version:
        return "policy", "the policy changed since the approval was asked: call again to ask anew"
    return "", None


def approver_problem(request: dict[str, Any], subject: str, role: str | None, scopes: tuple[str, ...]) -> str | None:
    """Why this signed-in person may not decide this approval; None when they may. Pure."""
    if request["four_eyes"] and subject == request["requester"]["subject"]:
        return "four eyes: you asked for this write yourself, so another person must approve it"
    roles, subjects = request["approvers"]["roles"], request["approvers"]["subjects"]
    if roles or subjects:
        if subject in subjects or (role is not None and role in roles):
            return None
        return "you are not one of this write's approvers"
    if not set(request["rule_scopes"]) <= set(scopes):
        return "approving this write needs a sign-in that holds what the write itself needs: " + \
            ", ".join(request["rule_scopes"])
    return None


@dataclass(frozen=True)
class Decided:
    decision: str  # approved | declined
    by: str
    at: float
    reason: str


class Approvals:
    """The records. `on_waiting` is called with each new request (the webhook); `audit` with each decision."""

    def __init__(self, store: Store, state: Durable, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.state = state
        self.clock = clock
        self.on_waiting: Callable[[dict[str, Any]], None] | None = None
        self.on_decided: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
        self.on_refused: Callable[[dict[str, Any], Any, str], None] | None = None  # an approver the rule refused

    async def ask(self, request: dict[str, Any]) -> None:
        ttl = max(1, int(request["expires"] - self.clock())) + 60
        await self.store.set(REQUEST_KEY + request["id"], orjson.dumps(request).decode(), ttl=ttl)
        if not await self.state.add_capped(QUEUE, request["id"], QUEUE_LIMIT):
            await self.waiting()  # prunes what ended; then there is room again, or the queue is truly full
            await self.state.add_capped(QUEUE, request["id"], QUEUE_LIMIT)
        if self.on_waiting is not None:
            self.on_waiting(request)

    async def request(self, approval_id: str) -> dict[str, Any] | None:
        raw = await self.store.get(REQUEST_KEY + approval_id)
        return orjson.loads(raw) if raw is not None else None

    async def decision(self, approval_id: str) -> dict[str, Any] | None:
        raw = await self.state.get(DECISION_KEY + approval_id)
        return orjson.loads(raw) if raw is not None else None

    async def waiting(self) -> list[dict[str, Any]]:
        """Every request still waiting, oldest first; ids whose request ended leave the index."""
        found = []
        for approval_id in await self.state.members(QUEUE):
            request = await self.request(approval_id)
            if request is None or request["expires"] <= self.clock():
                await self.state.remove(QUEUE, approval_id)
            else:
                found.append(request)
        return sorted(found, key=lambda r: r["created"])

    async def decide(self, approval_id: str, approved: bool, by: dict[str, Any], reason: str) -> dict[str, Any] | None:
        """Record the decision, once: the request is taken atomically, so of two approvers deciding at the same
        moment one decides (the other is told it was decided). None when nothing waits under this id."""
        raw = await self.store.take(REQUEST_KEY + approval_id)
        if raw is None:
            return None
        request = orjson.loads(raw)
        await self.state.remove(QUEUE, approval_id)
        now = self.clock()
        decided = {"id": approval_id, "decision": "approved" if approved else "declined", "by": by, "at": now,
                   "reason": reason, "tool": request["tool"], "requester": request["requester"],
                   "digest": request["digest"]}
        if request["expires"] <= now:
            return {**decided, "decision": "expired"}
        await self.state.set(DECISION_KEY + approval_id, orjson.dumps(decided).decode(), ttl=DECISION_TTL)
        if approved:
            ticket = {name: request[name] for name in (*BOUND, "policy", "expires", "id", "preview_id")}
            await self.store.set(TICKET_KEY + approval_id, orjson.dumps(ticket).decode(),
                                 ttl=max(1, int(request["expires"] - now)) + 60)
        await self.store.push(WAKE_KEY + approval_id, decided["decision"], ttl=max(60, int(request["expires"] - now)))
        if self.on_decided is not None:
            self.on_decided(request, decided)
        return decided

    async def ticket(self, approval_id: str) -> dict[str, Any] | None:
        raw = await self.store.get(TICKET_KEY + approval_id)
        return orjson.loads(raw) if raw is not None else None

    async def use(self, approval_id: str) -> bool:
        """Take the ticket: True for exactly one caller, whatever the number of concurrent retries."""
        return await self.store.take(TICKET_KEY + approval_id) is not None

    async def wait(self, approval_id: str, seconds: float) -> bool:
        """Until the approval is decided or `seconds` pass; True when woken by a decision."""
        if seconds <= 0:
            return False
        woke = await self.store.pop_wait(WAKE_KEY + approval_id, seconds)
        if woke is not None:  # others may wait on the same approval (a retry on another replica): pass it on
            await self.store.push(WAKE_KEY + approval_id, woke, ttl=60)
        return woke is not None
