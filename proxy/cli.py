"""`scopegate` command line: `serve` runs the proxy, `pat` manages tokens, `demo` fronts the bundled demo ledger."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from proxy import audit_cli, pat_cli, policy_cli
from proxy import config as config_module


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the proxy (flags mirror the SCOPEGATE_* variables; flags win)")
    for setting in config_module.SETTINGS:
        serve.add_argument(setting.flag, dest=setting.key, metavar="VALUE", help=f"{setting.help} [{setting.env}]")


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the demo ledger MCP server with scopegate in front of it")
    demo.add_argument("--port", type=int, default=8000, help="port scopegate listens on (default 8000)")
    demo.add_argument("--upstream-port", type=int, default=8080, help="port of the demo upstream (default 8080)")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line on stderr (stdout carries the audit trail). Messages never hold tokens or secrets:
    the code logs reasons and ids only."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def _logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonLogFormatter()
    formatter.converter = time.gmtime  # type: ignore[assignment]
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scopegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _demo_parser(sub)
    pat_cli.add_parser(sub)
    policy_cli.add_parser(sub)
    audit_cli.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "audit":
        audit_cli.main(args)
        return
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
