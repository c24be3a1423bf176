"""aiohttp's own parser errors (issue 24, item 6d): a request aiohttp cannot parse is answered by aiohttp itself,
before any handler; that answer is a JSON-RPC error built from the status alone and quotes none of the request's
bytes (aiohttp's own text quotes the start of the offending line: an `Authorization` token, say). Raw sockets: no
HTTP client would send these bytes.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.conftest import TOKENS


async def raw_exchange(url: str, request: bytes) -> bytes:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()  # aiohttp closes the connection after a parser error
    finally:
        writer.close()


TOKEN = TOKENS["writer"].encode()


@pytest.mark.parametrize("request_bytes", [
    b"GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\x01\r\n\r\n",  # control byte in a header
    b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization Bearer " + TOKEN + b"\r\n\r\n",  # a header line with no colon
    b"Bearer " + TOKEN + b" /mcp HTTP/1.1\r\nHost: x\r\n\r\n",  # a request line that is no request line
    b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2" + TOKEN + b"\r\n\r\n",
], ids=["control-byte", "no-colon", "bad-request-line", "two-lengths"])
async def test_parser_errors_answer_as_json_rpc_and_echo_nothing(proxy_url: str, request_bytes: bytes) -> None:
    answer = await raw_exchange(proxy_url, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    assert b"content-type: application/json" in head.lower()
    error = orjson.loads(body)["error"]
    assert error["code"] == -32600 and error["message"] == "malformed HTTP request"
    assert TOKEN[:8] not in answer and b"Bearer" not in answer
