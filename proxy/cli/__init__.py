"""`scopegate` command line: one module per command group (serve, demo, pat, policy, audit, pins); argument
handling only.

May import anything: it is the top. The work itself is the library's; these modules parse, call and print.

Whatever goes wrong reaches the operator as one line on stderr and exit status 2 (1 is kept for "checked, and the
answer is no": a broken audit chain, a denied decision): a refusal names the setting or argument and what was
expected, and a problem nobody foresaw still says what it was, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from proxy import __version__
from proxy.cli import audit, demo, pat, pins, policy, serve
from proxy.config import ConfigError

COMMANDS = {"serve": serve, "demo": demo, "pat": pat, "policy": policy, "audit": audit, "pins": pins}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (argparse prints the usage block, then the error)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="scopegate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"scopegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    if "_ARGCOMPLETE" in os.environ:  # the shell asks what may come next (README: shell completion); else no import
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command].main(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):  # raise SystemExit("what went wrong"): a refusal, exit 2
            fail(exc.code)
        raise
    except ConfigError as exc:
        fail(f"scopegate: configuration error: {exc}")
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"scopegate {args.command}: {exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:  # a bug, still reported in one line; the type says where to look
        fail(f"scopegate {args.command}: unexpected error: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
