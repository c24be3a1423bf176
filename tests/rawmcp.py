"""A small raw-HTTP MCP client for tests that need what the SDK client hides: dropped connections, resumption,
exact SSE lines. It reads SSE with its own line parser, independent of the proxy's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

ACCEPT = "application/json, text/event-stream"


@dataclass
class Event:
    lines: list[str] = field(default_factory=list)

    def field(self, name: str) -> str | None:
        for line in self.lines:
            if line.startswith(name + ":"):
                return line[len(name) + 1 :].removeprefix(" ")
        return None

    @property
    def data(self) -> Any:
        raw = self.field("data")
        return orjson.loads(raw) if raw else None


async def next_event(resp: aiohttp.ClientResponse) -> Event | None:
    """The next event (all its raw lines, comments included), or None at the end of the stream."""
    event = Event()
    while True:
        line = await resp.content.readline()
        if not line:
            return event if event.lines else None
        text = line.decode().rstrip("\r\n")
        if text == "":
            if event.lines:
                return event
            continue
        event.lines.append(text)


class LegacySession:
    """A 2025-11-25 session opened by hand: initialize, then initialized."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None = None,
                 anonymous: bool = False) -> None:
        from tests.conftest import TOKENS

        self.http = http
        self.url = url
        self.session_id = ""
        self.token = token or TOKENS["writer"]
        self.auth = {} if anonymous else {"Authorization": f"Bearer {self.token}"}  # anonymous: no header at all

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            **self.auth,
            "Content-Type": "application/json",
            "Accept": ACCEPT,
            "Mcp-Session-Id": self.session_id,
            "MCP-Protocol-Version": "2025-11-25",
            **extra,
        }

    async def open(self) -> None:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        first = {"Accept": ACCEPT, "Content-Type": "application/json", **self.auth}
        async with self.http.post(self.url, data=orjson.dumps(init), headers=first) as r:
            assert r.status == 200, await r.text()
            self.session_id = r.headers["Mcp-Session-Id"]
            await r.read()
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with self.http.post(self.url, data=orjson.dumps(note), headers=self.headers()) as r:
            assert r.status == 202

    def post(self, message: Any) -> Any:
        return self.http.post(self.url, data=orjson.dumps(message), headers=self.headers())


async def rpc(session: LegacySession, msg_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One request in the session; its one response, whether the server answered with JSON or an SSE stream."""
    async with session.post({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}) as resp:
        body = await resp.read()
    if resp.headers["Content-Type"].startswith("application/json"):
        return orjson.loads(body)
    (data,) = [line[5:] for line in body.decode().splitlines() if line.startswith("data:") and line[5:].strip()]
    return orjson.loads(data)


def slow_call(msg_id: int, steps: int, delay: float) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {
            "name": "run_month_end_report",
            "arguments": {"workspaceId": "acme", "period": "2026-10", "steps": steps, "delay": delay},
            "_meta": {"progressToken": f"p{msg_id}"},
        },
    }


async def interrupted_call_then_resume(http: aiohttp.ClientSession, url: str, msg_id: int) -> list[Event]:
    """Start a slow call, drop its stream after the first progress event, resume with GET + Last-Event-ID.
    Returns the events the resumed stream delivered up to and including the call's response."""
    session = LegacySession(http, url)
    await session.open()
    async with session.post(slow_call(msg_id, steps=4, delay=0.25)) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        last_id = None
        while True:
            event = await next_event(resp)
            assert event is not None
            last_id = event.field("id") or last_id
            if event.data and event.data.get("method") == "notifications/progress":
                break
        resp.close()  # the connection drops mid-stream, before the response
    resumed: list[Event] = []
    async with http.get(url, headers=session.headers(**{"Last-Event-ID": last_id or ""})) as resp:
        assert resp.status == 200
        while (event := await next_event(resp)) is not None:
            resumed.append(event)
            if event.data and event.data.get("id") == msg_id:
                break
    return resumed
