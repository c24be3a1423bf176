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
    import importlib.util

    if importlib.util.find_spec("proxy.demo") is None:
        raise SystemExit("scopegate demo: the demo is not part of this installation (the image carries none); "
                         "run it from a source checkout: make run")
    if importlib.util.find_spec("mcp") is None or importlib.util.find_spec("uvicorn") is None:
        raise SystemExit("scopegate demo: the demo upstream needs the demo extra: pip install -e '.[demo]' "
                         "(make run does it)")
    from proxy.demo.run import main as demo_main

    demo_main(port=args.port, upstream_port=args.upstream_port, metrics_port=args.metrics_port)
