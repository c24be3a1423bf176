"""Managing the PAT registry from outside the proxy: create, list and revoke credentials (what `scopegate pat` does).

`create` returns the token once: only its hash is kept. `rows` never include tokens. `revoke` marks the record in
the file and, when a Redis URL is given, in Redis too, which every replica checks on every request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from proxy.identity.authenticate import LAST_USED_KEY, REVOKED_KEY
from proxy.identity.pats import Record, RegistryError, create_record, parse_duration, read_records, write_records
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


def create(path: Path, *, kind: Literal["pat", "admin_key"], label: str, subject: str, scopes: list[str],
           workspace: str | None, workspaces: list[str] | None, role: str | None, expires: str) -> tuple[Record, str]:
    """Add a credential to the registry; returns its record and the token (shown once, never stored)."""
    try:
        expires_in = None if expires == "never" else parse_duration(expires)
    except ValueError as exc:
        raise AdminError(f"--expires: {exc}") from None
    existing = records(path, missing_ok=True)
    record, token = create_record(kind=kind, label=label, subject=subject, scopes=scopes, workspace=workspace,
                                  workspaces=workspaces, role=role, expires_in=expires_in)
    write_records(path, [*existing, record])
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


def revoke(path: Path, cred_id: str, redis_url: str | None) -> tuple[list[str], list[str]]:
    """(what was done, what failed). Revoked in the file when it is writable, and in Redis when configured."""
    found = records(path)
    match = [r for r in found if r.id == cred_id]
    if not match:
        raise AdminError(f"no credential {cred_id} in {path}")
    done, failed = [], []
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
    return done, failed
