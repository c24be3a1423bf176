"""`scopegate audit verify FILE | --redis URL`: check that an audit trail is whole; name the first broken link."""

from __future__ import annotations

import argparse
import asyncio
import sys

from proxy.ops.audit import TrailUnreadable, read_file, read_stream, verify


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="check the audit trail")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    check = actions.add_parser("verify", help="verify the hash chains of an audit trail (exit 0 whole, 1 broken)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="a file of JSON lines (stdout or file: sink)")
    source.add_argument("--redis", metavar="URL", help="the Redis holding the scopegate:audit stream")


def main(args: argparse.Namespace) -> None:
    try:
        records = asyncio.run(read_stream(args.redis)) if args.redis else list(read_file(args.file))
    except TrailUnreadable as exc:
        raise SystemExit(f"scopegate audit verify: {exc}") from None
    count, problem = verify(records)
    if problem:
        print(f"BROKEN at record {count}: {problem}")
        raise SystemExit(1)
    chains = len({r["chain"] for r in records})
    print(f"ok: {count} records in {chains} chain{'s' if chains != 1 else ''}, every link whole")
    sys.exit(0)
