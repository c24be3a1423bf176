"""The credential operations of the console and the admin API: list, create, rotate, revoke (with a dry run).

One list over every kind: PATs and admin keys (the registry file, with what was made or rotated at run time over
it: `identity/issued.py`), and OAuth grants (the durable state). Each row says who, what, where, made with what,
for which client, since and until when, last use, and its status (revoked by whom, when, and what that ended).
Everything a person may do here is checked in `ceiling.py` first; every change joins the audit trail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from proxy.console.actors import Actor
from proxy.console.ceiling import Want, beyond, may_act_on
from proxy.identity import issued
from proxy.identity.lifecycle import Revocation, Tree
from proxy.identity.oauth.grants import GRANT_PREFIX, Grant, Grants
from proxy.identity.pat_admin import grant_problems
from proxy.identity.pats import Record, Registry, create_record, parse_duration
from proxy.policy.model import Policy

log = logging.getLogger("scopegate.console")

MAX_GRACE = 30 * 86400
Note = Callable[..., None]  # (operation, decision, reason, actor=, target=, label=): one audit record


class Refused(Exception):
    """The actor may not do this: 403, with the reasons."""


class Invalid(Exception):
    """The request is malformed or names nothing: 400/404, one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _iso(value: float | int | datetime | None) -> str | None:
    if value is None or value == 0:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return datetime.fromtimestamp(value, UTC).isoformat()


def _revoked(v: Revocation) -> dict[str, Any]:
    return {"at": _iso(v.at), "by": v.by, "reason": v.reason, "ended": list(v.cascaded), "parent": v.parent}


def record_row(record: Record, origin: str, revocation: Revocation | None, last_used: int | None,
               now: float) -> dict[str, Any]:
    """Pure: one PAT or admin key as the console and the API show it (never a token, never a hash)."""
    expired = record.expires is not None and record.expires.timestamp() <= now
    status = "revoked" if record.revoked or revocation else "expired" if expired else "active"
    row: dict[str, Any] = {
        "id": record.id, "kind": record.kind, "origin": origin, "label": record.label, "subject": record.subject,
        "scopes": list(record.scopes), "workspace": record.workspace, "workspaces": record.workspaces,
        "projects": record.projects, "capabilities": sorted(k for k, v in record.org_capabilities.items() if v),
        "permissions": dict(record.permissions), "role": record.role, "parent": None, "client": None,
        "created": _iso(record.created), "expires": _iso(record.expires), "last_used": _iso(last_used),
        "status": status, "created_by": record.created_by, "revoked": None, "rotated": None,
    }
    if revocation is not None:
        row["revoked"] = _revoked(revocation)
    elif record.revoked:
        row["revoked"] = {"at": None, "by": "the registry file", "reason": "marked revoked", "ended": [],
                          "parent": None}
    if record.previous_until is not None:
        row["rotated"] = {"previous_valid_until": _iso(record.previous_until),
                          "previous_valid": record.previous_until.timestamp() > now}
    return row


def grant_row(grant: Grant, revocation: Revocation | None, last_used: int | None, now: float) -> dict[str, Any]:
    """Pure: one OAuth grant as a row."""
    status = "revoked" if revocation else "expired" if grant.expires and grant.expires <= now else "active"
    return {
        "id": grant.credential_id, "kind": "oauth", "origin": "consent", "label": grant.client_name,
        "subject": grant.subject, "scopes": list(grant.scopes), "workspace": grant.workspace,
        "workspaces": list(grant.workspaces) if grant.workspaces is not None else None,
        "projects": list(grant.projects) if grant.projects is not None else None, "capabilities": [],
        "permissions": dict(grant.permissions), "role": grant.role,
        "parent": grant.parent, "client": {"id": grant.client_id, "name": grant.client_name},
        "created": _iso(grant.created), "expires": _iso(grant.expires), "last_used": _iso(last_used),
        "status": status, "created_by": None, "revoked": _revoked(revocation) if revocation else None,
        "rotated": None,
    }


@dataclass(frozen=True)
class Query:
    text: str = ""  # searched in id, label, person, client
    kind: str = ""  # pat | admin_key | oauth
    status: str = ""  # active | expired | revoked
    subject: str = ""

    def matches(self, row: dict[str, Any]) -> bool:
        if self.kind and row["kind"] != self.kind:
            return False
        if self.status and row["status"] != self.status:
            return False
        if self.subject and row["subject"] != self.subject:
            return False
        if self.text:
            needle = self.text.casefold()
            client = row["client"]["name"] if row["client"] else ""
            hay = " ".join([row["id"], row["label"], row["subject"], client, " ".join(row["scopes"])]).casefold()
            return needle in hay
        return True


def parse_want(body: Any, actor: Actor) -> Want:
    """A create request's JSON as a Want; Invalid with one line when malformed. Defaults: for the actor
    themselves, the actor's role, 30 days."""
    if not isinstance(body, dict):
        raise Invalid("expected a JSON object")

    def text(name: str, default: str | None = None) -> str | None:
        value = body.get(name, default)
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            raise Invalid(f"{name}: expected a string")
        return value.strip() if isinstance(value, str) else None

    def names(name: str) -> tuple[str, ...] | None:
        value = body.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value) \
                or len(value) > 100:
            raise Invalid(f"{name}: expected a list of names")
        return tuple(dict.fromkeys(value))

    label = text("label")
    if not label:
        raise Invalid('label: say what it is for, e.g. "Month-end review script"')
    expires = text("expires", "30d") or "30d"
    try:
        expires_in = None if expires == "never" else parse_duration(expires)
    except ValueError as exc:
        raise Invalid(f"expires: {exc}") from None
    return Want(kind=text("kind", "pat") or "pat", label=label, subject=text("subject") or actor.subject,
                scopes=names("scopes") or (), workspace=text("workspace") or None, workspaces=names("workspaces"),
                projects=names("projects"), role=text("role", actor.role) if "role" in body else actor.role,
                expires_in=expires_in)


class Credentials:
    def __init__(self, registry: Registry | None, tree: Tree, grants: Callable[[], Grants | None],
                 policy: Callable[[], Policy], note: Note) -> None:
        self.registry = registry
        self.tree = tree
        self.grants = grants  # the OAuth server's, once attached (None without an OAuth server)
        self.policy = policy
        self.note = note

    # --- reading ----------------------------------------------------------------------------------------------
    async def _records(self) -> dict[str, tuple[Record, str]]:
        found: dict[str, tuple[Record, str]] = {}
        if self.registry is not None:
            self.registry.maybe_refresh()
            for record in self.registry.records():
                found[record.id] = (record, "file" if self.registry.from_file(record.id) else "runtime")
        for record in await issued.every(self.tree.state):  # made on another replica since this one started
            origin = "file" if self.registry is not None and self.registry.from_file(record.id) else "runtime"
            found[record.id] = (record, origin)
        return found

    async def _grants(self, record_ids: list[str]) -> list[Grant]:
        grants = self.grants()
        if grants is None:
            return []
        children = [c.removeprefix(GRANT_PREFIX) for r in record_ids for c in await self.tree.children(r)
                    if c.startswith(GRANT_PREFIX)]
        return await grants.every(children)

    async def rows(self, actor: Actor, query: Query = Query()) -> list[dict[str, Any]]:
        """Every credential the actor may see (an administrator: all; anyone else: their own), filtered."""
        records = await self._records()
        grants = await self._grants(list(records))
        if not actor.admin:
            records = {i: v for i, v in records.items() if v[0].subject == actor.subject}
            grants = [g for g in grants if g.subject == actor.subject]
        ids = list(records) + [g.credential_id for g in grants]
        revocations = await self.tree.revocations(ids + [g.parent for g in grants])
        used = await self.tree.last_used(ids)
        now = time.time()
        out = [record_row(r, origin, revocations.get(i), used.get(i), now) for i, (r, origin) in records.items()]
        for g in grants:
            revocation = revocations.get(g.credential_id)
            if revocation is None and (ended := revocations.get(g.parent)) is not None:
                revocation = Revocation(g.credential_id, ended.at, ended.by, f"ended with {g.parent}", (), g.parent)
            out.append(grant_row(g, revocation, used.get(g.credential_id), now))
        out.sort(key=lambda row: (row["status"] != "active", row["subject"], row["created"] or ""))
        return [row for row in out if query.matches(row)]

    async def row(self, actor: Actor, cred_id: str) -> dict[str, Any]:
        found = next((r for r in await self.rows(actor) if r["id"] == cred_id), None)
        if found is None:
            raise Invalid("no such credential", 404)
        return found

    # --- changing ---------------------------------------------------------------------------------------------
    async def create(self, actor: Actor, want: Want) -> tuple[dict[str, Any], str]:
        """A new PAT or admin key in the durable state (never the file); its token is returned once."""
        now = time.time()
        problems = beyond(actor, want, now)
        policy = self.policy()
        problems += [p.replace("--", "") for p in grant_problems(policy, scopes=list(want.scopes), role=want.role,
                                                                  workspace=want.workspace,
                                                                  workspaces=list(want.workspaces or ()) or None)]
        if problems:
            self.note("create", "deny", "; ".join(problems)[:300], actor=actor, target=want.subject,
                      label=want.label)
            raise Refused("; ".join(problems))
        try:
            record, token = create_record(
                kind=want.kind, label=want.label, subject=want.subject, scopes=list(want.scopes),  # type: ignore[arg-type]
                workspace=want.workspace, workspaces=list(want.workspaces) if want.workspaces is not None else None,
                role=want.role, expires_in=want.expires_in,
                extra={"projects": list(want.projects) if want.projects is not None else None,
                       "created_by": actor.by})
        except ValueError as exc:  # pydantic's, from a field the checks above do not cover (the label's length)
            raise Invalid(str(exc).splitlines()[0]) from None
        await issued.save(self.tree.state, record)
        if self.registry is not None:
            self.registry.remember(record)
        self.note("create", "allow", f"{record.kind} for {record.subject}: {' '.join(record.scopes) or '(no scope)'}",
                  actor=actor, target=record.id, label=record.label)
        log.info("credential created on the console", extra={"credential_id": record.id})
        return record_row(record, "runtime", None, None, now), token

    async def _record(self, cred_id: str) -> tuple[Record, str]:
        found = (await self._records()).get(cred_id)
        if found is None:
            raise Invalid("no such credential", 404)
        return found

    def _held(self, record: Record) -> frozenset[str]:
        live = self.registry.live(record.id) if self.registry is not None else None
        return live.scopes if live is not None else frozenset(record.scopes)

    async def rotate(self, actor: Actor, cred_id: str, grace: str) -> tuple[dict[str, Any], str]:
        if cred_id.startswith(GRANT_PREFIX):
            raise Invalid("an OAuth grant rotates its own tokens (refresh); revoke it to end it")
        try:
            grace_seconds = parse_duration(grace) if grace not in ("", "0") else 0
        except ValueError as exc:
            raise Invalid(f"grace: {exc}") from None
        if grace_seconds > MAX_GRACE:
            raise Invalid("grace: at most 30d")
        record, origin = await self._record(cred_id)
        if not actor.admin and record.subject != actor.subject:
            raise Invalid("no such credential", 404)
        if not may_act_on(actor, subject=record.subject, kind=record.kind, scopes=self._held(record)):
            self.note("rotate", "deny", "not theirs, or stronger than their own", actor=actor, target=cred_id)
            raise Refused("you may not rotate this credential")
        if record.revoked or await self.tree.revocation(cred_id) is not None:
            raise Invalid("this credential is revoked; make a new one", 409)
        fresh, token = issued.rotated(record, grace_seconds)
        await issued.save(self.tree.state, fresh)
        if self.registry is not None:
            self.registry.remember(fresh)
        self.note("rotate", "allow", f"new secret; the old one valid for {grace_seconds} s", actor=actor,
                  target=cred_id, label=record.label)
        return record_row(fresh, origin, None, None, time.time()), token

    async def _target(self, actor: Actor, cred_id: str) -> dict[str, Any]:
        if len(cred_id) > 64:
            raise Invalid("no such credential", 404)
        target = next((r for r in await self.rows(replace(actor, admin=True))
                       if r["id"] == cred_id), None)
        if target is None or (not actor.admin and target["subject"] != actor.subject):
            raise Invalid("no such credential", 404)  # someone else's is none of a person's business: not even "no"
        return target

    async def ends(self, actor: Actor, cred_id: str) -> dict[str, Any]:
        """The dry run: what revoking `cred_id` would end (itself and every descendant), with who holds each."""
        target = await self._target(actor, cred_id)
        self._check(actor, target)
        below = await self.tree.descendants(cred_id)
        everything = {r["id"]: r for r in await self.rows(replace(actor, admin=True))}
        return {"credential": target, "would_end": [
            {"id": c, "label": everything[c]["label"] if c in everything else None,
             "kind": everything[c]["kind"] if c in everything else None,
             "subject": everything[c]["subject"] if c in everything else None} for c in below]}

    def _check(self, actor: Actor, target: dict[str, Any]) -> None:
        if not may_act_on(actor, subject=target["subject"], kind=target["kind"], scopes=frozenset(target["scopes"])):
            self.note("revoke", "deny", "not theirs, or stronger than their own", actor=actor, target=target["id"])
            raise Refused("you may not revoke this credential")

    async def revoke(self, actor: Actor, cred_id: str) -> dict[str, Any]:
        target = await self._target(actor, cred_id)
        self._check(actor, target)
        if target["status"] == "revoked":
            raise Invalid("already revoked", 409)
        if target["kind"] == "oauth":
            grants = self.grants()
            assert grants is not None
            record = await grants.revoke(cred_id.removeprefix(GRANT_PREFIX), by=actor.by,
                                         reason="revoked on the console")
        else:
            ttl = None
            if target["expires"]:
                ttl = max(3600, int(datetime.fromisoformat(target["expires"]).timestamp() - time.time()) + 3600)
            record = await self.tree.revoke(cred_id, by=actor.by, reason="revoked on the console", ttl=ttl)
        self.note("revoke", "allow", f"ended {len(record.cascaded)} credential(s) with it", actor=actor,
                  target=cred_id, label=target["label"])
        return {"revoked": _revoked(record), "credential": await self.row(actor, cred_id) if actor.admin or
                target["subject"] == actor.subject else None}
