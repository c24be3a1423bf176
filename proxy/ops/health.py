"""The operations listener (SCOPEGATE_METRICS_LISTEN, default 127.0.0.1:9464): /metrics, /healthz and /readyz (and,
with the policy's `upstream_identity:`, /.well-known/jwks.json).

/healthz says the process answers. /readyz says whether it can do its job: a policy is loaded, the upstream answers
an MCP request in time, and Redis answers when one is configured; when not ready it answers 503 with the reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from yarl import URL

from proxy.jsonrpc import dumps
from proxy.store import Store, StoreUnavailable

Check = Callable[[], Awaitable[str | None]]  # None: fine; else the reason it is not


PING = b'{"jsonrpc":"2.0","id":"scopegate-readyz","method":"ping"}'
PING_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def upstream_check(upstream: URL, session: aiohttp.ClientSession | None = None,
                   headers: Mapping[str, str] | None = None, timeout: float = 1.0) -> Check:
    """A real MCP request (a ping) the upstream must answer, with any HTTP status, within `timeout`: an upstream
    that accepts connections but never answers is not ready. Its answer is not judged (without a session a
    stateful server refuses a ping, which still shows it is alive)."""

    async def check() -> str | None:
        try:
            async with asyncio.timeout(timeout), contextlib.AsyncExitStack() as stack:
                # The proxy's own pooled session where there is one (the supervisor of several workers has none).
                http = session or await stack.enter_async_context(aiohttp.ClientSession())
                async with http.post(upstream, data=PING, headers={**(headers or {}), **PING_HEADERS}) as response:
                    status = response.status
        except TimeoutError:
            return f"upstream does not answer within {timeout:g} s"
        except (OSError, aiohttp.ClientError):
            return "upstream does not accept connections"
        return f"upstream answers {status}" if status >= 500 else None

    return check


def store_check(store: Store) -> Check:
    async def check() -> str | None:
        try:
            await store.ping()
        except StoreUnavailable:
            return ("redis does not answer: PATs and scopegate's OAuth grants (their revocation lives there), "
                    "sessions and writes are refused until it does; JWTs of external issuers still read")
        return None

    return check


def ops_app(registry: CollectorRegistry, checks: dict[str, Check],
            details: Callable[[], dict[str, Any]], jwks: bytes | None = None) -> web.Application:
    """`jwks`: the keys of the caller's identity assertions (policy `upstream_identity:`), served at
    /.well-known/jwks.json here too: an upstream on the same private network need not reach the public listener."""
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"alive"}', content_type="application/json")

    async def readyz(request: web.Request) -> web.Response:
        results = dict(zip(checks, await asyncio.gather(*(check() for check in checks.values())), strict=True))
        problems = {name: reason for name, reason in results.items() if reason is not None}
        body = {"ready": not problems, "checks": {name: reason or "ok" for name, reason in results.items()},
                **details()}
        return web.Response(status=503 if problems else 200, body=dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if jwks is not None:
        body = jwks

        async def keys(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "max-age=300"})

        app.router.add_get("/.well-known/jwks.json", keys)
    return app
