"""`scopegate audit verify FILE | --redis URL`: check that an audit trail is whole; name the first broken link."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from proxy.audit import RedisStreamSink, verify


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="check the audit trail")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    check = actions.add_parser("verify", help="verify the hash chains of an audit trail (exit 0 whole, 1 broken)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="a file of JSON lines (stdout or file: sink)")
    source.add_argument("--redis", metavar="URL", help="the Redis holding the scopegate:audit stream")


def _lines(path: str) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise SystemExit(f"{path}:{number}: not a JSON record") from None
            if isinstance(record, dict) and "chain" in record:  # other log lines may share stdout
                yield record


async def _stream(url: str) -> list[dict[str, Any]]:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    try:
        entries = await redis.xrange(RedisStreamSink.KEY)
    finally:
        await redis.aclose()
    return [orjson.loads(fields[b"record"]) for _, fields in entries]


def main(args: argparse.Namespace) -> None:
    records = asyncio.run(_stream(args.redis)) if args.redis else list(_lines(args.file))
    count, problem = verify(records)
    if problem:
        print(f"BROKEN at record {count}: {problem}")
        raise SystemExit(1)
    chains = len({r["chain"] for r in records})
    print(f"ok: {count} records in {chains} chain{'s' if chains != 1 else ''}, every link whole")
    sys.exit(0)
