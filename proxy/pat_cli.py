"""`scopegate pat create|list|revoke`: manage the PAT registry file (and live revocations in Redis).

`create` prints the token once: only its hash is kept. `list` never shows tokens. `revoke` marks the record in the
file and, when SCOPEGATE_REDIS_URL is set, in Redis too, which every replica checks on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from proxy.authenticate import LAST_USED_KEY, REVOKED_KEY
from proxy.pats import Record, RegistryError, create_record, parse_duration, read_records, write_records
from proxy.store import RedisStore, StoreUnavailable


def add_parser(sub: argparse._SubParsersAction) -> None:
    pat = sub.add_parser("pat", help="personal access tokens: create, list, revoke")
    actions = pat.add_subparsers(dest="pat_command", required=True)
    file_help = "registry file (default: $SCOPEGATE_PAT_FILE)"

    create = actions.add_parser("create", help="create a token; it is printed once")
    create.add_argument("--file", help=file_help)
    create.add_argument("--label", required=True, help='what it is for, e.g. "Month-end review script"')
    create.add_argument("--subject", default=os.environ.get("USER", "user"), help="the user it acts for")
    create.add_argument("--scope", action="append", default=[], help="a scope (repeat, or space-separated)")
    create.add_argument("--workspace", help="bind the token to this one workspace")
    create.add_argument("--workspaces", help="comma-separated workspaces a user-scoped token may name")
    create.add_argument("--role", help="the user's role (the policy's ceiling for it applies)")
    create.add_argument("--expires", default="30d", help="lifetime: 30d, 12h, 45m, 90s, or never (default 30d)")
    create.add_argument("--admin-key", action="store_true", help="a tenant admin key (may hold admin-only scopes)")

    listing = actions.add_parser("list", help="list credentials (never their tokens)")
    listing.add_argument("--file", help=file_help)

    revoke = actions.add_parser("revoke", help="revoke a credential by id")
    revoke.add_argument("id")
    revoke.add_argument("--file", help=file_help)


def _path(args: argparse.Namespace) -> Path:
    value = args.file or os.environ.get("SCOPEGATE_PAT_FILE")
    if not value:
        raise SystemExit("scopegate pat: name the registry with --file or SCOPEGATE_PAT_FILE")
    return Path(value)


def _records(path: Path, missing_ok: bool = False) -> list[Record]:
    if missing_ok and not path.exists():
        return []
    try:
        return read_records(path)
    except RegistryError as exc:
        raise SystemExit(f"scopegate pat: {exc}") from None


async def _redis(action: str, cred_id: str, expires: datetime | None = None) -> str | None:
    url = os.environ.get("SCOPEGATE_REDIS_URL")
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


def main(args: argparse.Namespace) -> None:
    path = _path(args)
    if args.pat_command == "create":
        scopes = [s for chunk in args.scope for s in chunk.replace(",", " ").split()]
        try:
            expires_in = None if args.expires == "never" else parse_duration(args.expires)
        except ValueError as exc:
            raise SystemExit(f"scopegate pat create: --expires: {exc}") from None
        records = _records(path, missing_ok=True)
        record, token = create_record(
            kind="admin_key" if args.admin_key else "pat", label=args.label, subject=args.subject, scopes=scopes,
            workspace=args.workspace, role=args.role, expires_in=expires_in,
            workspaces=[w.strip() for w in args.workspaces.split(",") if w.strip()] if args.workspaces else None,
        )
        write_records(path, [*records, record])
        print(f"created {record.kind} {record.id} ({record.label}); expires {record.expires or 'never'}",
              file=sys.stderr)
        print("the token is shown once; store it now:", file=sys.stderr)
        print(token)
    elif args.pat_command == "list":
        print(f"{'id':<13}{'kind':<10}{'status':<9}{'expires':<27}{'last used':<27}{'scopes':<30}label")
        now = datetime.now(UTC)
        for r in _records(path):
            status = "revoked" if r.revoked else ("expired" if r.expires and r.expires <= now else "active")
            try:
                stamp = asyncio.run(_redis("last_used", r.id))
            except StoreUnavailable:
                stamp = None
            used = datetime.fromtimestamp(int(stamp), UTC).isoformat() if stamp else "-"
            expires = r.expires.isoformat() if r.expires else "never"
            scopes = " ".join(r.scopes) or "-"
            where = f" [workspace {r.workspace}]" if r.workspace else ""
            print(f"{r.id:<13}{r.kind:<10}{status:<9}{expires:<27}{used:<27}{scopes:<30}{r.label}{where}")
    elif args.pat_command == "revoke":
        records = _records(path)
        match = [r for r in records if r.id == args.id]
        if not match:
            raise SystemExit(f"scopegate pat revoke: no credential {args.id} in {path}")
        done = []
        try:
            match[0].revoked = True
            write_records(path, records)
            done.append(f"marked revoked in {path}")
        except OSError as exc:  # a mounted Secret is read-only: Redis is then the way
            print(f"scopegate pat revoke: cannot write {path} ({exc.strerror})", file=sys.stderr)
        try:
            if asyncio.run(_redis("revoke", args.id, match[0].expires)):
                done.append("revoked in Redis (every replica, next request)")
        except StoreUnavailable:
            print("scopegate pat revoke: Redis did not answer", file=sys.stderr)
        if not done:
            raise SystemExit(1)
        print(f"{args.id}: " + "; ".join(done))
