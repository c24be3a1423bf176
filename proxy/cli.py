"""`scopegate` command line: `serve` runs the proxy, `pat` manages tokens, `demo` fronts the bundled demo ledger."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from proxy import config as config_module
from proxy import pat_cli, policy_cli


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the proxy (flags mirror the SCOPEGATE_* variables; flags win)")
    for setting in config_module.SETTINGS:
        serve.add_argument(setting.flag, dest=setting.key, metavar="VALUE", help=f"{setting.help} [{setting.env}]")


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the demo ledger MCP server with scopegate in front of it")
    demo.add_argument("--port", type=int, default=8000, help="port scopegate listens on (default 8000)")
    demo.add_argument("--upstream-port", type=int, default=8080, help="port of the demo upstream (default 8080)")


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scopegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _demo_parser(sub)
    pat_cli.add_parser(sub)
    policy_cli.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "policy":
        policy_cli.main(args)
        return
    if args.command == "pat":
        pat_cli.main(args)
        return
    if args.command == "demo":
        from proxy.demo.run import main as demo_main

        demo_main(port=args.port, upstream_port=args.upstream_port)
        return

    flags = {s.key: getattr(args, s.key) for s in config_module.SETTINGS}
    try:
        config = config_module.load(os.environ, flags)
        from proxy.identity import load_identity
        from proxy.tls import server_context

        server_context(config)  # a certificate that does not load is a configuration error, reported now
        identity = load_identity(config, os.environ)
    except config_module.ConfigError as exc:
        print(f"scopegate: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _logging(config.log_level)

    from proxy.app import run

    run(config, identity)


if __name__ == "__main__":
    main()
