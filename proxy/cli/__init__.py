"""`scopegate` command line: one module per command group (serve, demo, pat, policy, audit), argument handling only.

May import anything: it is the top. The work itself is the library's; these modules parse, call and print.
"""

from __future__ import annotations

import argparse

from proxy.cli import audit, demo, pat, policy, serve

COMMANDS = {"serve": serve, "demo": demo, "pat": pat, "policy": policy, "audit": audit}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scopegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    COMMANDS[args.command].main(args)


if __name__ == "__main__":
    main()
