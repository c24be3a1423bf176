"""`scopegate serve`: run the proxy. Flags mirror the SCOPEGATE_* variables (flags win)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys

from proxy import config as config_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the proxy (flags mirror the SCOPEGATE_* variables; flags win)")
    for setting in config_module.SETTINGS:
        serve.add_argument(setting.flag, dest=setting.key, metavar="VALUE", help=f"{setting.help} [{setting.env}]")


def main(args: argparse.Namespace) -> None:
    from proxy.edge.workers import WORKER_MARK, prepare_metrics, supervise  # imports no prometheus_client

    flags = {s.key: getattr(args, s.key) for s in config_module.SETTINGS}
    worker = WORKER_MARK in os.environ  # started by a supervisor (SCOPEGATE_WORKERS > 1)
    metrics_dir = None
    try:
        config = config_module.load(os.environ, flags)
        if config.workers > 1 and not worker:
            metrics_dir = prepare_metrics()  # before anything imports prometheus_client
        from proxy.edge.app import run
        from proxy.edge.tls import server_context
        from proxy.identity.loader import load_identity
        from proxy.ops.logs import setup_logging

        setup_logging(config.log_level)  # before anything else logs: every line JSON, from the first
        server_context(config)  # a certificate that does not load is a configuration error, reported now
        identity = load_identity(config, os.environ)
    except config_module.ConfigError as exc:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        print(f"scopegate: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if metrics_dir is not None:
        from proxy.identity.assertion import jwks

        keys = jwks(identity.upstream_identity) if identity.upstream_identity is not None else None
        raise SystemExit(supervise(config, sys.argv[1:], metrics_dir, keys))
    if worker:  # the supervisor serves the one ops port
        config = dataclasses.replace(config, metrics_listen=None)
    run(config, identity, worker)
