"""Managing the PAT registry from outside the proxy: create, list and revoke credentials (what `scopegate pat` does).

`create` returns the token once: only its hash is kept. `rows` never include tokens. `revoke` marks the record in
the file and, when a Redis URL is given, in Redis too, which every replica checks on every request.
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from proxy.identity.authenticate import LAST_USED_KEY, REVOKED_KEY
from proxy.identity.pats import Record, RegistryError, create_record, parse_duration, read_records, write_records
from proxy.identity.principal import matches_any
from proxy.policy.model import Policy
from proxy.store import RedisStore, StoreUnavailable


class AdminError(Exception):
    """What went wrong, in one line, for the operator."""


def records(path: Path, missing_ok: bool = False) -> list[Record]:
    if missing_ok and not path.exists():
        return []
    try:
        return read_records(path)
    except RegistryError as exc:
        raise AdminError(str(exc)) from None


async def _redis(url: str | None, action: str, cred_id: str, expires: datetime | None = None) -> str | None:
    if not url:
        return None
    store = RedisStore(url)
    try:
        if action == "revoke":
            ttl = int(expires.timestamp() - datetime.now(UTC).timestamp()) + 3600 if expires else None
            await store.set(REVOKED_KEY + cred_id, "1", ttl=ttl if ttl and ttl > 0 else None)
            return "1"
        return await store.get(LAST_USED_KEY + cred_id)
    finally:
        await store.close()


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


def rows(path: Path, redis_url: str | None) -> list[Row]:
    now = datetime.now(UTC)
    out = []
    for r in records(path):
        status = "revoked" if r.revoked else ("expired" if r.expires and r.expires <= now else "active")
        try:
            stamp = asyncio.run(_redis(redis_url, "last_used", r.id))
        except StoreUnavailable:
            stamp = None
        out.append(Row(r, status, datetime.fromtimestamp(int(stamp), UTC) if stamp else None))
    return out


def revoke(path: Path, cred_id: str, redis_url: str | None) -> tuple[list[str], list[str], bool]:
    """(what was done, what failed, whether it was revoked already). Revoked in the file when it is writable, and
    in Redis when configured.

    A credential the file already marks revoked is reported as such (the caller exits non-zero: nothing changed
    in the file), and still written to Redis, which heals an earlier revoke whose Redis write failed."""
    found = records(path)
    match = [r for r in found if r.id == cred_id]
    if not match:
        raise AdminError(f"no credential {cred_id} in {path}")
    done, failed = [], []
    already = match[0].revoked
    if not already:
        try:
            match[0].revoked = True
            write_records(path, found)
            done.append(f"marked revoked in {path}")
        except OSError as exc:  # a mounted Secret is read-only: Redis is then the way
            failed.append(f"cannot write {path} ({exc.strerror})")
    try:
        if asyncio.run(_redis(redis_url, "revoke", cred_id, match[0].expires)):
            done.append("revoked in Redis (every replica, next request)")
    except StoreUnavailable:
        failed.append("Redis did not answer")
    return done, failed, already
