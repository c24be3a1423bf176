"""`scopegate pat create|list|revoke`: the PAT registry file, and the running proxy's credential state (Redis, or
the state directory's file) where revocations, who made them and what they ended are kept."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from proxy.console.client import AdminClient, ClientError
from proxy.identity import pat_admin
from proxy.policy.model import Policy, PolicyError, load_policy


def add_parser(sub: argparse._SubParsersAction) -> None:
    pat = sub.add_parser("pat", help="personal access tokens: create, list, rotate, revoke")
    actions = pat.add_subparsers(dest="pat_command", required=True)
    file_help = "registry file (default: $SCOPEGATE_PAT_FILE)"
    url_help = ("a running scopegate (its admin API) instead of the file: http(s)://host:port; the admin key is read "
                "from the variable --key-env names")

    def remote(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", help=url_help)
        parser.add_argument("--key-env", default="SCOPEGATE_ADMIN_KEY",
                            help="the variable holding the admin key for --url (default SCOPEGATE_ADMIN_KEY)")

    create = actions.add_parser("create", help="create a token; it is printed once")
    create.add_argument("--file", help=file_help)
    create.add_argument("--label", required=True, help='what it is for, e.g. "Month-end review script"')
    create.add_argument("--subject", required=True,
                        help="the one person it acts for (their stable id, e.g. alice@example.com): their sign-in "
                             "sees and revokes their own tokens only")
    create.add_argument("--scope", action="append", default=[], help="a scope (repeat, or space-separated)")
    create.add_argument("--workspace", help="bind the token to this one workspace")
    create.add_argument("--workspaces", help="comma-separated workspaces a user-scoped token may name")
    create.add_argument("--role", help="the user's role (the policy's ceiling for it applies)")
    create.add_argument("--expires", default="30d", help="lifetime: 30d, 12h, 45m, 90s, or never (default 30d)")
    create.add_argument("--admin-key", action="store_true", help="a tenant admin key (may hold admin-only scopes)")
    create.add_argument("--policy", default=os.environ.get("SCOPEGATE_POLICY"),
                        help="check scopes and role against this policy (default: $SCOPEGATE_POLICY)")
    remote(create)

    state_help = "the proxy's state directory when it runs without Redis (default: $SCOPEGATE_STATE_DIR)"
    listing = actions.add_parser("list", help="list credentials and their status (never their tokens)")
    listing.add_argument("--file", help=file_help)
    listing.add_argument("--state-dir", help=state_help)
    listing.add_argument("--json", action="store_true", help="one JSON document: every credential and its status")
    remote(listing)

    revoke = actions.add_parser("revoke", help="revoke a credential by id, and every grant signed in with it")
    revoke.add_argument("id")
    revoke.add_argument("--file", help=file_help)
    revoke.add_argument("--state-dir", help=state_help)
    revoke.add_argument("--dry-run", action="store_true", help="with --url: only list what would end")
    remote(revoke)

    rotate = actions.add_parser("rotate", help="with --url: a new secret for a credential (printed once); the old "
                                               "one works for the grace period")
    rotate.add_argument("id")
    rotate.add_argument("--grace", default="1h", help="how long the old secret still works: 1h, 30m, 0 (default 1h)")
    remote(rotate)


def _path(args: argparse.Namespace) -> Path:
    value = args.file or os.environ.get("SCOPEGATE_PAT_FILE")
    if not value:
        raise SystemExit("scopegate pat: name the registry with --file or SCOPEGATE_PAT_FILE")
    return Path(value)


def _policy(path: str | None) -> Policy | None:
    if not path:
        return None
    try:
        return load_policy(path)
    except PolicyError as exc:
        first = str(exc).splitlines()[0]
        raise SystemExit(f"scopegate pat create: --policy: {first}") from None


def _state(args: argparse.Namespace) -> pat_admin.StateSource:
    redis_url = os.environ.get("SCOPEGATE_REDIS_URL") or None
    state_dir = getattr(args, "state_dir", None) or os.environ.get("SCOPEGATE_STATE_DIR") or None
    if redis_url and getattr(args, "state_dir", None):
        raise pat_admin.AdminError("--state-dir: SCOPEGATE_REDIS_URL is set; the state is in Redis")
    return pat_admin.StateSource(redis_url, None if redis_url else state_dir)


def main(args: argparse.Namespace) -> None:
    if getattr(args, "url", None):
        try:
            _remote(args, AdminClient(args.url, os.environ.get(args.key_env, "")))
        except ClientError as exc:
            raise SystemExit(f"scopegate pat {args.pat_command}: {exc}") from None
        return
    if args.pat_command == "rotate":
        raise SystemExit("scopegate pat rotate: needs --url (a running scopegate keeps the rotated secret in its "
                         "credential state; the file is never rewritten)")
    path = _path(args)
    try:
        _run(args, path, _state(args))
    except pat_admin.AdminError as exc:
        raise SystemExit(f"scopegate pat {args.pat_command}: {exc}") from None


def _run(args: argparse.Namespace, path: Path, state: pat_admin.StateSource) -> None:
    if args.pat_command == "create":
        record, token = pat_admin.create(
            path, kind="admin_key" if args.admin_key else "pat", label=args.label, subject=args.subject,
            scopes=[s for chunk in args.scope for s in chunk.replace(",", " ").split()],
            workspace=args.workspace, role=args.role, expires=args.expires,
            workspaces=[w.strip() for w in args.workspaces.split(",") if w.strip()] if args.workspaces else None,
            policy=_policy(args.policy),
        )
        print(f"created {record.kind} {record.id} ({record.label}); expires {record.expires or 'never'}",
              file=sys.stderr)
        print("the token is shown once; store it now:", file=sys.stderr)
        print(token)
    elif args.pat_command == "list":
        found = pat_admin.rows(path, state)
        if args.json:
            print(json.dumps({"credentials": [row.as_json() for row in found]}, indent=2))
            return
        if not state:
            print("scopegate pat list: no SCOPEGATE_REDIS_URL or state directory: statuses are the file's only",
                  file=sys.stderr)
        print(f"{'id':<13}{'kind':<10}{'status':<9}{'subject':<22}{'expires':<27}{'last used':<27}"
              f"{'scopes':<30}label")
        for row in found:
            r = row.record
            used = row.last_used.isoformat() if row.last_used else "-"
            expires = r.expires.isoformat() if r.expires else "never"
            scopes = " ".join(r.scopes) or "-"
            where = f" [workspace {r.workspace}]" if r.workspace else ""
            print(f"{r.id:<13}{r.kind:<10}{row.status:<9}{r.subject:<22}{expires:<27}{used:<27}{scopes:<30}"
                  f"{r.label}{where}")
            if row.revocation is not None:
                v = row.revocation
                when = datetime.fromtimestamp(v.at, UTC).isoformat() if v.at else "(time not recorded)"
                ended = f"; ended {', '.join(v.cascaded)}" if v.cascaded else ""
                print(f"{'':<13}revoked {when} by {v.by}: {v.reason}{ended}")
    elif args.pat_command == "revoke":
        done, failed, already = pat_admin.revoke(path, args.id, state, f"cli:{os.environ.get('USER', 'operator')}")
        for problem in failed:
            print(f"scopegate pat revoke: {problem}", file=sys.stderr)
        if done:
            print(f"{args.id}: " + "; ".join(done))
        if already:
            print(f"scopegate pat revoke: {args.id} was already revoked", file=sys.stderr)
        if already or not done:
            raise SystemExit(1)


def _remote(args: argparse.Namespace, client: AdminClient) -> None:
    """The same commands through a running scopegate's admin API."""
    if args.pat_command == "create":
        made = client.create(
            kind="admin_key" if args.admin_key else "pat", label=args.label, subject=args.subject,
            scopes=[s for chunk in args.scope for s in chunk.replace(",", " ").split()],
            workspace=args.workspace, role=args.role, expires=args.expires,
            workspaces=[w.strip() for w in args.workspaces.split(",") if w.strip()] if args.workspaces else None)
        row = made["credential"]
        print(f"created {row['kind']} {row['id']} ({row['label']}); expires {row['expires'] or 'never'}",
              file=sys.stderr)
        print("the token is shown once; store it now:", file=sys.stderr)
        print(made["token"])
    elif args.pat_command == "list":
        rows = client.credentials()
        if args.json:
            print(json.dumps({"credentials": rows}, indent=2))
            return
        print(f"{'id':<29}{'kind':<10}{'status':<9}{'subject':<22}{'expires':<27}{'last used':<27}{'scopes':<30}label")
        for row in rows:
            print(f"{row['id']:<29}{row['kind']:<10}{row['status']:<9}{row['subject']:<22}"
                  f"{row['expires'] or 'never':<27}{row['last_used'] or '-':<27}{' '.join(row['scopes']) or '-':<30}"
                  f"{row['label']}")
            if row.get("revoked"):
                v = row["revoked"]
                ended = f"; ended {', '.join(v['ended'])}" if v["ended"] else ""
                print(f"{'':<29}revoked {v['at'] or '(time not recorded)'} by {v['by']}: {v['reason']}{ended}")
    elif args.pat_command == "rotate":
        made = client.rotate(args.id, args.grace)
        until = (made["credential"].get("rotated") or {}).get("previous_valid_until")
        print(f"rotated {args.id}; the old secret " + (f"works until {until}" if until else "no longer works"),
              file=sys.stderr)
        print("the new token is shown once; store it now:", file=sys.stderr)
        print(made["token"])
    elif args.pat_command == "revoke":
        if args.dry_run:
            ends = client.revoke(args.id, dry_run=True)["would_end"]
            print(f"{args.id}: would end " + (", ".join(f"{e['id']} ({e['label']})" for e in ends) or "nothing else"))
            return
        done = client.revoke(args.id)["revoked"]
        ended = f"; ended {', '.join(done['ended'])}" if done["ended"] else ""
        print(f"{args.id}: revoked by {done['by']}{ended}")
