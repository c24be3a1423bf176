"""`scopegate serve`: run the proxy. Flags mirror the SCOPEGATE_* variables (flags win)."""

from __future__ import annotations

import argparse
import os
import sys

from proxy import config as config_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the proxy (flags mirror the SCOPEGATE_* variables; flags win)")
    for setting in config_module.SETTINGS:
        serve.add_argument(setting.flag, dest=setting.key, metavar="VALUE", help=f"{setting.help} [{setting.env}]")


def main(args: argparse.Namespace) -> None:
    from proxy.edge.app import run
    from proxy.edge.tls import server_context
    from proxy.identity.loader import load_identity
    from proxy.ops.logs import setup_logging

    flags = {s.key: getattr(args, s.key) for s in config_module.SETTINGS}
    try:
        config = config_module.load(os.environ, flags)
        setup_logging(config.log_level)  # before anything else logs: every line JSON, from the first
        server_context(config)  # a certificate that does not load is a configuration error, reported now
        identity = load_identity(config, os.environ)
    except config_module.ConfigError as exc:
        print(f"scopegate: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run(config, identity)
