"""A fixed-answer MCP endpoint for the benchmark: as fast as Python serves, so the proxy's own cost is what shows.

The demo ledger (the official SDK) spends milliseconds per request in validation, which would hide a proxy's
overhead; this endpoint answers from prepared bytes. It speaks just enough Streamable HTTP for the scenarios:
`tools/call` (JSON), `tools/list` with 1,000 tools (JSON), and `tools/call` of `tick` as an SSE stream whose events
carry the time they were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

TOOLS = [
    {
        "name": f"module{i % 20:02d}_action_{i:04d}",
        "title": f"Action {i}",
        "description": "Reads or changes one thing in the ledger; this text is as long as real descriptions are. " * 2,
        "inputSchema": {
            "type": "object",
            "properties": {
                "workspaceId": {"type": "string", "description": "The workspace."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500},
                "filter": {"type": "object", "properties": {"account": {"type": "string"}, "from": {"type": "string"}}},
            },
            "required": ["workspaceId"],
        },
        "annotations": {"readOnlyHint": i % 3 != 0, "destructiveHint": False},
    }
    for i in range(1000)
] + [  # the tools the other scenarios call: listed, as the proxy asks the upstream's own list before deciding
    {"name": "get_period_status", "description": "The status of a period.",
     "inputSchema": {"type": "object", "properties": {"workspaceId": {"type": "string"}, "period": {"type": "string"}},
                     "required": ["workspaceId"]}, "annotations": {"readOnlyHint": True}},
    {"name": "tick", "description": "Progress events, then a result.",
     "inputSchema": {"type": "object", "properties": {"count": {"type": "integer"}, "gap": {"type": "number"}}},
     "annotations": {"readOnlyHint": True}},
    {"name": "create_thing", "description": "Creates a thing.",
     "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}},
]


def _result(msg_id: object, result: object) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result})


SMALL_RESULT = {"content": [{"type": "text", "text": '{"status":"open"}'}], "structuredContent": {"status": "open"},
                "isError": False}


async def mcp(request: web.Request) -> web.StreamResponse:
    message = orjson.loads(await request.read())
    method, msg_id = message.get("method"), message.get("id")
    if method == "tools/list":
        return web.Response(body=_result(msg_id, {"tools": TOOLS}), content_type="application/json")
    if method == "tools/call" and message["params"]["name"] == "tick":
        count = int(message["params"].get("arguments", {}).get("count", 20))
        gap = float(message["params"].get("arguments", {}).get("gap", 0.005))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for n in range(count):
            note = {"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": "t", "progress": n, "message": str(time.time_ns())}}
            await response.write(b"id: %d\nevent: message\ndata: %s\n\n" % (n, orjson.dumps(note)))
            await asyncio.sleep(gap)
        await response.write(b"event: message\ndata: " + _result(msg_id, SMALL_RESULT) + b"\n\n")
        return response
    if method == "tools/call":
        return web.Response(body=_result(msg_id, SMALL_RESULT), content_type="application/json")
    return web.Response(status=202)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/mcp", mcp)
    import uvloop

    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
