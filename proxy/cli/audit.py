"""`scopegate audit keygen | verify`: make the trail's signing key pair; check a trail with only the public key.

verify exits 0 when every chain is whole, 1 when one is broken (each problem names the record concerned), 2 when
the trail or the key could not be read (one line, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from proxy.ops.sinks import TrailUnreadable, read_file, read_stream
from proxy.ops.trail import KeyProblem, load_public_key, verify, write_key_pair


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="the audit trail's signing key, and checking a trail")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    keygen = actions.add_parser("keygen", help="write a new Ed25519 key pair (private file mode 0600)")
    keygen.add_argument("private", help="where to write the private key (PEM); must not exist")
    keygen.add_argument("public", nargs="?", help="where to write the public key (default: PRIVATE.pub)")
    check = actions.add_parser("verify", help="verify an audit trail's chains and signatures (0 whole, 1 broken, "
                                              "2 could not read)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="a file of JSON lines (stdout or file: sink), or - for stdin")
    source.add_argument("--redis", metavar="URL", help="the Redis holding the scopegate:audit stream")
    keys = check.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", metavar="PUBLIC_PEM", help="the public key the trail's checkpoints are signed with")
    keys.add_argument("--unsigned", action="store_true",
                      help="check the links only (a trail written without a key): proves far less, and says so")


def keygen(args: argparse.Namespace) -> None:
    public = args.public or f"{args.private}.pub"
    try:
        key_id = write_key_pair(args.private, public)
    except OSError as exc:
        raise SystemExit(f"scopegate audit keygen: {exc.filename}: {exc.strerror}") from None
    print(f"private key {args.private} (mode 0600: mount it as a Secret, SCOPEGATE_AUDIT_SIGNING_KEY_FILE)\n"
          f"public key  {public} (give it to whoever verifies: scopegate audit verify --key {public})\n"
          f"key id      {key_id}")


def main(args: argparse.Namespace) -> None:
    if args.audit_command == "keygen":
        keygen(args)
        return
    try:
        key = load_public_key(args.key) if args.key else None
        records = asyncio.run(read_stream(args.redis)) if args.redis else read_file(args.file)
    except (TrailUnreadable, KeyProblem) as exc:
        print(f"scopegate audit verify: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    report = verify(records, key)
    summary = f"{report.records} record{'s' if report.records != 1 else ''} in {report.chains} " \
              f"chain{'s' if report.chains != 1 else ''}"
    for problem in report.problems:
        print(f"BROKEN: {problem}")
    for note in report.notes:
        print(f"note: {note}")
    if not report.whole:
        print(f"checked {summary}: {len(report.problems)} broken")
        raise SystemExit(1)
    print(f"ok: {summary}, every link whole" + (", every seal signed" if key is not None else ""))
    sys.exit(0)
