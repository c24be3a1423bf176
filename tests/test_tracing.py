"""OpenTelemetry traces, read with the SDK's in-memory exporter: the client's trace continues through the proxy (its
span, every pipeline step, the Redis calls, the upstream call) and reaches the upstream in `traceparent`; with
tracing off nothing of OpenTelemetry is even imported."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy import config as config_module
from proxy.ops import tracing
from tests.conftest import MODERN_META, TOKENS, Recorder
from tests.test_confirm import VENDOR

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def call(url: str, arguments: dict, traceparent: str) -> dict:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "create_vendor", "arguments": arguments, "_meta": MODERN_META}})
    headers = {"Authorization": f"Bearer {TOKENS['writer']}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/call", "Mcp-Name": "create_vendor", "traceparent": traceparent}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200
        return orjson.loads(await resp.read())["result"]


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.test_exporter = exporter
    yield exporter
    tracing.test_exporter = None


async def test_a_call_is_one_trace_from_client_to_upstream(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                          redis_server: Any, spans: Any) -> None:
    url = await start_proxy(upstream.url, redis_url=redis_server.url, tracing=True)
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    preview = await call(url, VENDOR, traceparent)  # a write: held, its preview kept in Redis
    token = preview["structuredContent"]["confirmationToken"]
    await call(url, {**VENDOR, "confirmationToken": token}, traceparent)  # confirmed: forwarded

    finished = spans.get_finished_spans()
    ours = [s for s in finished if format(s.context.trace_id, "032x") == TRACE_ID]
    # Every span of these requests continues the client's trace; the proxy's own background requests (its catalog's
    # listen stream to a 2026-07-28 upstream) are root spans of their own.
    background = [s for s in finished if s.parent is None and s.name == "upstream POST"]
    assert len(ours) == len(finished) - len(background) and len(background) <= 1
    servers = [s for s in ours if s.name.startswith("POST ")]
    assert len(servers) == 2 and all(format(s.parent.span_id, "016x") == CLIENT_SPAN for s in servers)
    names = {s.name for s in ours}
    for step in ("scopegate.admission OriginCheck", "scopegate.admission Authenticate",
                 "scopegate.guard ScopeGuard", "scopegate.guard WorkspaceGuard", "scopegate.guard ConfirmGuard"):
        assert step in names, (step, names)
    held = [s for s in ours if s.name == "scopegate.guard ConfirmGuard" and s.attributes.get("scopegate.decision")]
    assert held and held[0].attributes["scopegate.decision"] == "preview"
    assert any(s.name.startswith("store ") and s.attributes["db.system"] == "redis" for s in ours)
    (upstream_span,) = [s for s in ours if s.name == "upstream POST" and s.parent.span_id == servers[1].context.span_id]
    assert upstream_span.attributes["http.response.status_code"] == 200

    # The upstream received our upstream span as its parent: the trace goes on past the proxy.
    (received,) = [r for r in recorder.posts() if "tools/call" in r.body.decode()]
    _, trace_id, parent, _ = received.headers["traceparent"].split("-")
    assert trace_id == TRACE_ID and parent == format(upstream_span.context.span_id, "016x")
    assert TOKENS["writer"] not in str([dict(s.attributes) for s in finished])  # no credential in any span


def test_off_unless_configured_and_nothing_imported_when_off(pat_file: str) -> None:
    base = {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:9/mcp"}
    assert config_module.load(base, {}).tracing is False
    assert config_module.load({**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, {}).tracing is True
    assert config_module.load({**base, "SCOPEGATE_OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, {}).tracing is True
    assert config_module.load({**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                               "OTEL_SDK_DISABLED": "true"}, {}).tracing is False
    probe = ("import sys, asyncio\n"
             "from proxy.config import load\n"
             "from proxy.edge.app import build_app\n"
             "from proxy.identity.loader import load_identity\n"
             "config = load({'SCOPEGATE_UPSTREAM': 'http://127.0.0.1:9/mcp', 'SCOPEGATE_POLICY': sys.argv[1],\n"
             "               'SCOPEGATE_PAT_FILE': sys.argv[2]}, {})\n"
             "build_app(config, load_identity(config, {}))\n"
             "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    policy = str(config_module.__file__).replace("proxy/config.py", "policies/pat-workspaces.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOPEGATE_", "OTEL_"))}
    done = subprocess.run([sys.executable, "-c", probe, policy, pat_file], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
