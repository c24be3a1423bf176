"""`scopegate demo` (what `make run` runs): the demo ledger MCP server with scopegate in front of it."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the demo ledger MCP server with scopegate in front of it")
    demo.add_argument("--port", type=int, default=8000, help="port scopegate listens on (default 8000)")
    demo.add_argument("--upstream-port", type=int, default=8080, help="port of the demo upstream (default 8080)")
    demo.add_argument("--metrics-port", type=int, default=9464,
                      help="port of /metrics, /healthz, /readyz (default 9464)")


def main(args: argparse.Namespace) -> None:
    from proxy.demo.run import main as demo_main

    demo_main(port=args.port, upstream_port=args.upstream_port, metrics_port=args.metrics_port)
