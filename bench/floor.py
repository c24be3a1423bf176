"""The Python floor: a minimal aiohttp pass-through proxy with no inspection at all.

Same event loop (uvloop), same pooled client session settings as scopegate; it copies the body up and the answer
down, chunk by chunk. scopegate's overhead is measured against this, in the same run.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te", "trailer"}


def build(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=30)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         timeout=aiohttp.ClientTimeout(total=None, connect=5)) as session:
            app["session"] = session
            yield

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        async with request.app["session"].request(request.method, upstream, data=body, headers=headers) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            response = web.StreamResponse(status=up.status, headers=out)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/mcp", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    import uvloop

    web.run_app(build(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None,
                handler_cancellation=True, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
