"""The catalog fetch reads a whole large JSON answer: a 1,000-tool list (about 500 KB) arrives in many chunks, and
`StreamReader.read(n)` returns only what has arrived; reading one chunk made every large list "not JSON" (and so
every call of a workspace-delegated tool a 503). Found by `make bench`."""

from __future__ import annotations

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from proxy.edge.upstream_tools import UpstreamTools

TOOLS = [{"name": f"tool_{i}", "description": "x" * 400, "inputSchema": {"type": "object"}} for i in range(1000)]


async def test_a_large_tools_list_is_read_whole(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    async def mcp(request: web.Request) -> web.StreamResponse:
        message = orjson.loads(await request.read())
        body = orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": TOOLS}})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 16_384):  # as a real server's writes arrive: in pieces
            await response.write(body[start:start + 16_384])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/mcp", mcp)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        tools = await UpstreamTools(session, URL(str(server.make_url("/mcp"))), ())()
    assert [t["name"] for t in tools] == [t["name"] for t in TOOLS]
