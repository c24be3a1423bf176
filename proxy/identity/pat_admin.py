"""Managing the PAT registry from outside the proxy: create, list and revoke credentials (what `scopegate pat` does).

`create` returns the token once: only its hash is kept. `rows` never include tokens. Revocations go to the durable
credential state the running proxy reads (Redis, or the SQLite file in the state directory: `proxy/durable.py`),
with who made them and what they ended (every grant signed in with the credential); the registry file is marked
too when it is writable, so the copy an operator keeps in Git says so. `rows` reads the same state: a credential
revoked anywhere (the CLI, Connected apps, the token endpoint) is listed as revoked, by whom and when.
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import ValidationError

from proxy.durable import FILE_NAME, Durable, RedisState, SqliteState, StateError
from proxy.identity.lifecycle import Revocation, Tree
from proxy.identity.pats import Record, RegistryError, create_record, parse_duration, read_records, write_records
from proxy.identity.principal import matches_any
from proxy.policy.model import Policy
from proxy.store import RedisStore, StoreUnavailable

T = TypeVar("T")


class AdminError(Exception):
    """What went wrong, in one line, for the operator."""


def records(path: Path, missing_ok: bool = False) -> list[Record]:
    if missing_ok and not path.exists():
        return []
    try:
        return read_records(path)
    except RegistryError as exc:
        raise AdminError(str(exc)) from None


@dataclass(frozen=True)
class StateSource:
    """Where the running proxy keeps its credential state: Redis, or a state directory, or neither (memory)."""

    redis_url: str | None = None
    state_dir: str | None = None

    def __bool__(self) -> bool:
        return bool(self.redis_url or self.state_dir)

    def describe(self) -> str:
        return "Redis" if self.redis_url else f"{Path(self.state_dir or '.') / FILE_NAME}"

    def run(self, work: Callable[[Tree], Awaitable[T]]) -> T:
        """Open the state, do `work` with its tree, close it. StoreUnavailable / AdminError when it cannot."""

        async def go() -> T:
            durable: Durable
            store = None
            if self.redis_url:
                store = RedisStore(self.redis_url)
                durable = RedisState(store)
            else:
                try:
                    durable = SqliteState(Path(self.state_dir or ".") / FILE_NAME)
                except StateError as exc:
                    raise AdminError(f"--state-dir: {exc}") from None
            try:
                return await work(Tree(durable))
            finally:
                await durable.close()
                if store is not None:
                    await store.close()

        return asyncio.run(go())


def grant_problems(policy: Policy, *, scopes: list[str], role: str | None, workspace: str | None,
                   workspaces: list[str] | None) -> list[str]:
    """Why a credential with this grant would not hold what it asks for under `policy`. Pure."""
    problems = []
    if policy.roles and role is None:
        problems.append(f"--role: the policy defines roles ({', '.join(policy.roles)}); a credential without one "
                        "holds nothing")
    elif policy.roles and role not in policy.roles:
        problems.append(f"--role: {role!r} is not a role of the policy{_did_you_mean(role or '', policy.roles)} "
                        f"(roles: {', '.join(policy.roles)})")
    known = set(policy.scopes)
    for scope in scopes:
        if known and scope not in known:
            problems.append(f"--scope: {scope!r} is not a scope of the policy{_did_you_mean(scope, known)}")
        elif role in policy.roles and not matches_any(scope, policy.roles[role]):
            problems.append(f"--scope: {scope!r} is beyond role {role!r}'s ceiling; the credential would never hold it")
    for name in ([workspace] if workspace is not None else []) + list(workspaces or []):
        if not name or name != name.strip() or "," in name:
            problems.append(f"--workspace: {name!r} is not a workspace name")
    return problems


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def create(path: Path, *, kind: Literal["pat", "admin_key"], label: str, subject: str, scopes: list[str],
           workspace: str | None, workspaces: list[str] | None, role: str | None, expires: str,
           policy: Policy | None = None) -> tuple[Record, str]:
    """Add a credential to the registry; returns its record and the token (shown once, never stored).

    With a policy, a scope it does not define, a role it does not have, or a scope beyond the role's ceiling is
    refused: such a token would silently hold less than the operator meant to give."""
    if not label.strip():
        raise AdminError("--label: say what the token is for, e.g. \"Month-end review script\"")
    if not subject.strip():
        raise AdminError("--subject: name the user the token acts for")
    if not path.parent.is_dir():
        raise AdminError(f"--file: no directory {str(path.parent)!r} for the registry")
    try:
        expires_in = None if expires == "never" else parse_duration(expires)
    except ValueError as exc:
        raise AdminError(f"--expires: {exc}") from None
    if policy is not None:
        problems = grant_problems(policy, scopes=scopes, role=role, workspace=workspace, workspaces=workspaces)
        if problems:
            raise AdminError("; ".join(problems))
    existing = records(path, missing_ok=True)
    try:
        record, token = create_record(kind=kind, label=label, subject=subject, scopes=scopes, workspace=workspace,
                                      workspaces=workspaces, role=role, expires_in=expires_in)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AdminError(f"--{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    try:
        write_records(path, [*existing, record])
    except OSError as exc:
        raise AdminError(f"cannot write {path} ({exc.strerror})") from None
    return record, token


@dataclass(frozen=True)
class Row:
    record: Record
    status: str  # active | expired | revoked
    last_used: datetime | None
    revocation: Revocation | None = None  # who, when, why, what it ended (from the running proxy's state)

    def as_json(self) -> dict[str, object]:
        r = self.record
        out: dict[str, object] = {
            "id": r.id, "kind": r.kind, "label": r.label, "subject": r.subject, "status": self.status,
            "scopes": r.scopes, "workspace": r.workspace, "workspaces": r.workspaces, "role": r.role,
            "created": r.created.isoformat(), "expires": r.expires.isoformat() if r.expires else None,
            "last_used": self.last_used.isoformat() if self.last_used else None,
        }
        if self.revocation is not None:
            v = self.revocation
            out["revoked"] = {"at": datetime.fromtimestamp(v.at, UTC).isoformat() if v.at else None, "by": v.by,
                              "reason": v.reason, "ended": list(v.cascaded)}
        elif r.revoked:
            out["revoked"] = {"at": None, "by": "the registry file", "reason": "marked revoked", "ended": []}
        return out


def rows(path: Path, state: StateSource) -> list[Row]:
    """Every credential of the file, with its status as the running proxy sees it. When the state cannot be read,
    AdminError: a list that might show a revoked credential as active is worse than none."""
    found = records(path)
    revocations: dict[str, Revocation] = {}
    used: dict[str, int] = {}
    if state:

        async def read(tree: Tree) -> None:
            revocations.update(await tree.revocations(r.id for r in found))
            used.update(await tree.last_used(r.id for r in found))

        try:
            state.run(read)
        except StoreUnavailable:
            raise AdminError(f"cannot read the credential state in {state.describe()}: statuses unknown") from None
    now = datetime.now(UTC)
    out = []
    for r in found:
        revocation = revocations.get(r.id)
        status = ("revoked" if r.revoked or revocation else "expired" if r.expires and r.expires <= now
                  else "active")
        stamp = used.get(r.id)
        out.append(Row(r, status, datetime.fromtimestamp(stamp, UTC) if stamp else None, revocation))
    return out


def revoke(path: Path, cred_id: str, state: StateSource, by: str) -> tuple[list[str], list[str], bool]:
    """(what was done, what failed, whether it was revoked already). Revoked in the credential state (with every
    grant signed in with it) when there is one, and marked in the file when it is writable.

    A credential revoked already is reported as such (the caller exits non-zero); the state is written all the
    same, which heals an earlier revoke whose state write failed and ends grants made since."""
    found = records(path)
    match = [r for r in found if r.id == cred_id]
    if not match:
        raise AdminError(f"no credential {cred_id} in {path}")
    record = match[0]
    done, failed = [], []
    already = record.revoked
    if state:
        # Kept for good, not until the record's expiry: the file may renew it (a Secret update) at any time.
        async def work(tree: Tree) -> tuple[Revocation | None, Revocation]:
            before = await tree.revocation(cred_id)
            return before, await tree.revoke(cred_id, by=by, reason="revoked with scopegate pat revoke")

        try:
            before, result = state.run(work)
        except StoreUnavailable:
            failed.append(f"the credential state in {state.describe()} did not answer")
        else:
            already = already or before is not None
            ended = f"; ended {len(result.cascaded)} grant(s) signed in with it" if result.cascaded else ""
            done.append(f"revoked in {state.describe()} (the running proxy, next request{ended})")
    if not record.revoked:
        try:
            record.revoked = True
            write_records(path, found)
            done.append(f"marked revoked in {path}")
        except OSError as exc:  # a mounted Secret is read-only: the state is then the way
            failed.append(f"cannot write {path} ({exc.strerror})")
    return done, failed, already
