"""`scopegate pins update` and `scopegate pins diff`: the upstream's tools, prompts and resource templates as
reviewed (the pin file the policy's `pins.file` names), and what changed since.

Both ask the upstream itself (SCOPEGATE_UPSTREAM or --upstream, with the server-side headers of
SCOPEGATE_UPSTREAM_HEADERS_FILE / SCOPEGATE_UPSTREAM_HEADER_*), in whichever protocol revision it speaks. `update`
writes the file (and prints what changed from the one it replaces); commit it with the policy, so the change is
reviewed. `diff` exits 0 when nothing changed, 1 when something did (one line per item), 2 when it cannot tell.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from proxy.edge.upstream_tools import FetchFailed, UpstreamTools
from proxy.identity.upstream_secrets import load_secret_headers
from proxy.policy.model import Policy, PolicyError, load_located, pins_path
from proxy.policy.pins import KIND, SECTIONS, PinFileError, PinSet, diff, dump, load, pin_set

TIMEOUT = 30.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    pins = sub.add_parser("pins", help="pin the upstream's tool, prompt and template definitions; show drift")
    actions = pins.add_subparsers(dest="pins_command", required=True)
    for name, text in (("update", "write the pin file the policy names from the upstream's live lists"),
                       ("diff", "what the upstream's live lists say that the pin file does not: exit 0 none, 1 some")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--policy", required=True, help="the policy file (its `pins.file` is the pin file)")
        action.add_argument("--upstream", default=os.environ.get("SCOPEGATE_UPSTREAM"),
                            help="the upstream MCP endpoint (default: SCOPEGATE_UPSTREAM)")


def main(args: argparse.Namespace) -> None:
    try:
        policy, _ = load_located(args.policy, read_pins=False)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    target = pins_path(args.policy, policy)
    if target is None:
        raise SystemExit(f"scopegate pins: {args.policy} has no `pins:` section naming a pin file")
    if not args.upstream:
        raise SystemExit("scopegate pins: no upstream: pass --upstream URL or set SCOPEGATE_UPSTREAM")
    try:
        url = URL(args.upstream)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise SystemExit(f"scopegate pins: --upstream: expected an http(s) URL, got {args.upstream!r}")
    lists = asyncio.run(fetch(url, load_secret_headers(os.environ.get("SCOPEGATE_UPSTREAM_HEADERS_FILE"),
                                                        os.environ)))
    old = _old(target) if target.exists() or args.pins_command == "diff" else None
    if args.pins_command == "diff":
        assert old is not None
        lines = diff(old, lists)
        print("\n".join(lines) if lines else f"no drift: the upstream matches {target}")
        raise SystemExit(1 if lines else 0)
    update(target, lists, old, policy)


def update(target: Path, lists: dict[str, list[Any]], old: PinSet | None, policy: Policy) -> None:
    try:
        pins = pin_set(lists)
    except PinFileError as exc:
        raise SystemExit(f"scopegate pins update: {exc}") from None
    changed = diff(old, lists) if old is not None else []
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(dump(pins), encoding="utf-8")
    temporary.replace(target)  # whole or not at all: the proxy's reload never reads half a file
    counts = ", ".join(f"{len(pins.sections[s])} {KIND[s]}s" for s in SECTIONS)
    print(f"pinned {counts} in {target}")
    for line in changed:
        print(line)
    if policy.pins is not None and policy.pins.unpinned == "hide":
        print("review the file and commit it with the policy: the proxy applies it on its next policy reload")


def _old(target: Path) -> PinSet:
    try:
        return load(target)
    except (PinFileError, OSError) as exc:
        why = exc if isinstance(exc, PinFileError) else f"{exc.strerror or exc} ({exc.filename})"
        raise SystemExit(f"scopegate pins: cannot read the pin file: {why}") from None


async def fetch(url: URL, headers: dict[str, str]) -> dict[str, list[Any]]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        lists = UpstreamTools(session, url, headers.items())
        try:
            return await lists.lists()
        except (FetchFailed, aiohttp.ClientError, OSError, TimeoutError) as exc:
            why = str(exc) if isinstance(exc, FetchFailed) else type(exc).__name__
            raise SystemExit(f"scopegate pins: cannot read the upstream's lists at {url}: {why}") from None
        finally:
            await lists.close()
