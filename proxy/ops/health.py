"""The operations listener (SCOPEGATE_METRICS_LISTEN, default 127.0.0.1:9464): /metrics, /healthz and /readyz.

/healthz says the process answers. /readyz says whether it can do its job: a policy is loaded, the upstream accepts
connections, and Redis answers when one is configured; when not ready it answers 503 with the reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from yarl import URL

from proxy.jsonrpc import dumps
from proxy.store import Store, StoreUnavailable

Check = Callable[[], Awaitable[str | None]]  # None: fine; else the reason it is not


def upstream_check(upstream: URL, timeout: float = 1.0) -> Check:
    async def check() -> str | None:
        port = upstream.port or (443 if upstream.scheme == "https" else 80)
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(upstream.host, port)
            writer.close()
        except (OSError, TimeoutError):
            return "upstream does not accept connections"
        return None

    return check


def store_check(store: Store) -> Check:
    async def check() -> str | None:
        try:
            await store.ping()
        except StoreUnavailable:
            return "redis does not answer"
        return None

    return check


def ops_app(registry: CollectorRegistry, checks: dict[str, Check],
            details: Callable[[], dict[str, Any]]) -> web.Application:
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
    return app
