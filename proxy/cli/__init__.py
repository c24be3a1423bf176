"""`scopegate` command line: one module per command group, argument handling only; the work is the library's.

`serve` runs the proxy, `demo` fronts the bundled demo ledger, `pat` manages tokens, `policy` checks and explains
policies, `audit` verifies the audit trail.
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
