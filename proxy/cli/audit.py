"""`scopegate audit keygen | verify | head`: make the trail's signing key pair; check a trail with only the public
key; print the trail's head, to keep outside the sink.

verify exits 0 when every chain is whole, 1 when one is broken (each problem names the record concerned), 2 when
the trail, the key, a kept head or an anchor could not be read (one line, never a traceback). A trail proves by
itself everything but its newest records: `--expect HEAD` (a head `audit head` printed earlier) and `--anchor FILE`
(the seals SCOPEGATE_AUDIT_ANCHOR wrote) say that the trail still holds what it held then, so that a trail rolled
back to an older copy or with its newest chain cut is found too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from proxy.ops.sinks import TrailUnreadable, read_file, read_stream
from proxy.ops.trail import (
    HeadProblem,
    KeyProblem,
    Report,
    Tip,
    anchor_tips,
    format_head,
    load_public_key,
    parse_head,
    verify,
    write_key_pair,
)


def _trail_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="a file of JSON lines (stdout or file: sink), or - for stdin")
    source.add_argument("--redis", metavar="URL", help="the Redis holding the scopegate:audit stream")
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", metavar="PUBLIC_PEM", help="the public key the trail's checkpoints are signed with")
    keys.add_argument("--unsigned", action="store_true",
                      help="check the links only (a trail written without a key): proves far less, and says so")


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="the audit trail's signing key, and checking a trail")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    keygen = actions.add_parser("keygen", help="write a new Ed25519 key pair (private file mode 0600)")
    keygen.add_argument("private", help="where to write the private key (PEM); must not exist")
    keygen.add_argument("public", nargs="?", help="where to write the public key (default: PRIVATE.pub)")
    check = actions.add_parser("verify", help="verify an audit trail's chains and signatures (0 whole, 1 broken, "
                                              "2 could not read)")
    _trail_arguments(check)
    check.add_argument("--expect", metavar="HEAD", action="append", default=[],
                       help="a head kept earlier (`scopegate audit head`): the trail must still hold it")
    check.add_argument("--anchor", metavar="FILE", action="append", default=[],
                       help="the seals SCOPEGATE_AUDIT_ANCHOR wrote: the trail must hold each chain's newest")
    head = actions.add_parser("head", help="verify a trail and print its head (chain:seq:hash of each chain's newest "
                                           "record) to keep outside the sink, for verify --expect")
    _trail_arguments(head)


def keygen(args: argparse.Namespace) -> None:
    public = args.public or f"{args.private}.pub"
    try:
        key_id = write_key_pair(args.private, public)
    except OSError as exc:
        raise SystemExit(f"scopegate audit keygen: {exc.filename}: {exc.strerror}") from None
    print(f"private key {args.private} (mode 0600: mount it as a Secret, SCOPEGATE_AUDIT_SIGNING_KEY_FILE)\n"
          f"public key  {public} (give it to whoever verifies: scopegate audit verify --key {public})\n"
          f"key id      {key_id}")


def _check(args: argparse.Namespace) -> Report:
    """Read everything, then verify; anything unreadable exits 2 with one line."""
    try:
        key = load_public_key(args.key) if args.key else None
        tips: list[Tip] = [tip for head in getattr(args, "expect", []) for tip in parse_head(head)]
        anchored: list[str] = []
        for path in getattr(args, "anchor", []):
            found, problems = anchor_tips(read_file(path), key)
            tips += found
            anchored += problems
        records = asyncio.run(read_stream(args.redis)) if args.redis else read_file(args.file)
    except (TrailUnreadable, KeyProblem, HeadProblem) as exc:
        print(f"scopegate audit {args.audit_command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    report = verify(records, key, expect=tips)
    report.problems[:0] = anchored
    return report


def main(args: argparse.Namespace) -> None:
    if args.audit_command == "keygen":
        keygen(args)
        return
    report = _check(args)
    summary = f"{report.records} record{'s' if report.records != 1 else ''} in {report.chains} " \
              f"chain{'s' if report.chains != 1 else ''}"
    for problem in report.problems:
        print(f"BROKEN: {problem}", file=sys.stderr if args.audit_command == "head" else sys.stdout)
    if args.audit_command == "head":
        if not report.whole:
            print(f"checked {summary}: {len(report.problems)} broken: no head to keep", file=sys.stderr)
            raise SystemExit(1)
        print(format_head(report.head))
        sys.exit(0)
    for note in report.notes:
        print(f"note: {note}")
    if not report.whole:
        print(f"checked {summary}: {len(report.problems)} broken")
        raise SystemExit(1)
    kept = " and what was kept outside it" if args.expect or args.anchor else \
        " (its newest records are proved only against a head kept outside the sink: --expect, --anchor)"
    print(f"ok: {summary}, every link whole" + (", every seal signed" if args.key else "") + kept)
    sys.exit(0)
