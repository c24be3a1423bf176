"""Redis configured but unreachable from the start: credentials that need no Redis lookup (JWTs of an external
issuer) keep reading; whatever needs Redis (a PAT's live revocation check, a session, a write's preview) fails
closed, quickly; /readyz says which and why."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
from yarl import URL

from proxy.demo.run import free_port
from proxy.edge.app import OPS_PORT
from tests.conftest import TOKENS, Recorder
from tests.test_identity import AUDIENCE, ISSUER
from tests.test_workspaces import call

SECRET = "dev-only-secret-0123456789abcdef0123"


def token(*scopes: str) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 60, "scp": list(scopes)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_redis_down_at_start(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there, from the first request on
    url = await start_proxy(upstream.url, redis_url=dead, jwt_issuer=ISSUER, jwt_dev_hs256_secret=SECRET,
                            public_url=URL(AUDIENCE))
    started = time.monotonic()
    status, body = await call(url, token("mcp:read"), "list_accounts", {"workspaceId": "acme"})
    assert status == 200 and body["result"]["isError"] is False  # a JWT read needs no Redis: it flows
    assert [c["params"]["name"] for c in recorder.calls("tools/call")] == ["list_accounts"]

    recorder.received.clear()
    status, body = await call(url, token("mcp:read", "mcp:write"), "create_vendor",
                              {"workspaceId": "acme", "name": "Acme"})
    assert status == 503 or body.get("result", {}).get("isError") is True or "error" in body, body
    assert "confirmationToken" not in str(body)  # no preview handed out that no replica could honour
    status, _ = await call(url, TOKENS["writer"], "list_accounts", {"workspaceId": "acme"})
    assert status == 503  # a PAT's revocation can only be known from Redis: refused, not guessed
    assert recorder.calls("tools/call") == []  # neither reached the upstream
    assert time.monotonic() - started < 10  # quick refusals, not hangs

    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {token('mcp:read')}"}
    async with aiohttp.ClientSession() as http, http.post(url, json=init, headers=headers) as resp:
        await resp.read()
    # A session's binding lives in Redis: none is handed out that could not be checked on the next request.
    assert resp.status >= 500 and "Mcp-Session-Id" not in resp.headers, resp.status

    port = start_proxy.runners[-1].app[OPS_PORT]
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        ready = await resp.json()
    assert resp.status == 503 and ready["ready"] is False
    reason = ready["checks"]["redis"]
    assert reason.startswith("redis does not answer") and "refused" in reason and "JWT" in reason, reason


INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


async def test_no_upstream_session_is_left_open_when_redis_cannot_bind_it(start_proxy: Any, upstream: Any,
                                                                          recorder: Recorder,
                                                                          redis_server: Any) -> None:
    from tests.rawmcp import LegacySession, rpc

    url = await start_proxy(upstream.url, redis_url=redis_server.url, jwt_issuer=ISSUER,
                            jwt_dev_hs256_secret=SECRET, public_url=URL(AUDIENCE))
    reader = token("mcp:read")
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {reader}"}
    async with aiohttp.ClientSession() as http:
        session = LegacySession(http, url, reader)
        await session.open()  # bound in Redis: scopegate now knows this upstream hands out sessions
        redis_server.stop()
        recorder.received.clear()
        async with http.post(url, json=INIT, headers=headers) as resp:
            await resp.read()
        assert resp.status == 503 and resp.headers.get("Retry-After") == "1"
        assert recorder.received == []  # refused before the upstream opened a session nobody could use
        # Reads go on: in the session already bound (its binding confirmed moments ago), and stateless.
        listed = await rpc(session, 2, "tools/call", {"name": "list_accounts", "arguments": {"workspaceId": "acme"}})
        assert listed["result"]["isError"] is False
        status, body = await call(url, reader, "list_accounts", {"workspaceId": "acme"})
        assert status == 200 and body["result"]["isError"] is False


async def test_a_session_opened_while_redis_is_down_is_ended_upstream(start_proxy: Any, upstream: Any,
                                                                      recorder: Recorder) -> None:
    """A fresh proxy cannot know the upstream hands out sessions before it has seen one: the first `initialize`
    reaches it, and the session it opens, unbound, is ended there at once."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    url = await start_proxy(upstream.url, redis_url=dead, jwt_issuer=ISSUER, jwt_dev_hs256_secret=SECRET,
                            public_url=URL(AUDIENCE))
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {token('mcp:read')}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=INIT, headers=headers) as resp:
            await resp.read()
        assert resp.status == 503 and "Mcp-Session-Id" not in resp.headers
        ended = [r for r in recorder.received if r.method == "DELETE"]
        assert [r.method for r in recorder.received] == ["POST", "DELETE"] and ended[0].headers["mcp-session-id"]
        assert "authorization" not in ended[0].headers  # the client's token never reaches the upstream
        # The upstream no longer knows the session: asked directly, it says so.
        direct = {**headers, "Mcp-Session-Id": ended[0].headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        del direct["Authorization"]
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        async with http.post(upstream.url, json=ping, headers=direct) as resp:
            assert resp.status == 404
