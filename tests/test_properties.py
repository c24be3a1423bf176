"""Property-based test of the whole proxy (issue 12, point 8): whatever a client sends and a misbehaving upstream
answers, the upstream never receives a call the decision denies, and a client never receives a list item the
decision hides.

Hypothesis generates clients' requests (single messages and batches, methods, int/str ids that collide and repeat)
and the upstream's answers (JSON or SSE, LF / CRLF / CR line ends, events split at any byte, `id:` lines and
comments, lists of tools, prompts, resources and templates under any id, on POST and GET streams). The real proxy
runs on its own event loop in a thread, in front of a scripted aiohttp upstream that answers with the generated
bytes. The policy is simple enough that the decision is known here without asking the proxy: `ok_*` tools and
prompts, `ok://` resources, nothing else.

Bounded (200 examples, a few seconds) and deterministic (derandomize, no example database): the same in every
run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from proxy.config import Config
from proxy.demo.run import free_port
from proxy.edge.app import start
from proxy.identity.loader import load_identity
from proxy.identity.pats import create_record, write_records

MARK = "HIDDEN-MARK"  # only hidden items carry it: a client that sees these bytes saw a hidden item
POLICY = {
    "version": 1, "scopes": ["mcp:read"], "default": "deny",
    "tools": [{"match": "ok_*", "scopes": ["mcp:read"]}],
    "prompts": [{"match": "ok_*", "scopes": ["mcp:read"]}],
    "resources": [{"match": "ok://*", "scopes": ["mcp:read"]}],
}
ITEM_KEY = {"tools": "name", "prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}


def allowed(key: str, name: Any) -> bool:
    if not isinstance(name, str):
        return False
    return name.startswith("ok://") if key in ("resources", "resourceTemplates") else name.startswith("ok_")


@dataclass
class Rig:
    """The proxy and the scripted upstream, on one event loop in a thread of their own."""

    loop: asyncio.AbstractEventLoop
    url: str = ""
    token: str = ""
    answers: list[tuple[int, str, list[bytes]]] = field(default_factory=list)  # popped per upstream request
    received: list[tuple[str, bytes]] = field(default_factory=list)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def upstream(self, request: web.Request) -> web.StreamResponse:
        self.received.append((request.method, await request.read()))
        status, content_type, chunks = self.answers.pop(0) if self.answers else (202, "", [])
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type} if content_type else {})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("properties")
    policy = folder / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    record, token = create_record(kind="pat", label="property", subject="user-p", scopes=["mcp:read"],
                                  workspace=None, workspaces=None, role=None, expires_in=3600)
    write_records(folder / "pats.yaml", [record])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rig = Rig(loop, token=token)
    runners: list[Any] = []

    async def setup() -> None:
        app = web.Application()
        app.router.add_route("*", "/mcp", rig.upstream)
        upstream = web.AppRunner(app, access_log=None)
        await upstream.setup()
        port = free_port()
        await web.TCPSite(upstream, "127.0.0.1", port).start()
        config = Config(upstream=URL(f"http://127.0.0.1:{port}/mcp"), listen=("127.0.0.1", 0), policy=str(policy),
                        pat_file=str(folder / "pats.yaml"), metrics_listen=None, audit_sink=f"file:{folder}/audit")
        runner, proxy_port = await start(config, load_identity(config, {}))
        runners.extend([runner, upstream])
        rig.url = f"http://127.0.0.1:{proxy_port}/mcp"

    async def teardown() -> None:
        for runner in runners:
            await runner.cleanup()

    rig.run(setup())
    yield rig
    rig.run(teardown())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


# --- what clients send -------------------------------------------------------------------------------------------

ids = st.one_of(st.integers(-2, 3), st.sampled_from(["1", "2", "01", "1.0", "x"]))
names = st.sampled_from(["ok_read", "ok_other", "bad_write", "Ok_case", "ok", "bad_", "ok_\u202e"])
uris = st.sampled_from(["ok://a", "ok://b/c", "bad://a", "OK://a", "ok:/a"])


@st.composite
def client_message(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["call", "prompt", "read", "list", "ping", "note"]))
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": draw(ids)}
    if kind == "call":
        msg.update(method="tools/call", params={"name": draw(names), "arguments": {"q": draw(st.text(max_size=3))}})
    elif kind == "prompt":
        msg.update(method="prompts/get", params={"name": draw(names)})
    elif kind == "read":
        msg.update(method="resources/read", params={"uri": draw(uris)})
    elif kind == "list":
        msg["method"] = draw(st.sampled_from(["tools/list", "prompts/list", "resources/list",
                                              "resources/templates/list"]))
    elif kind == "ping":
        msg["method"] = "ping"
    else:
        msg = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    return msg


# --- what the upstream answers -----------------------------------------------------------------------------------

@st.composite
def list_result(draw: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(list(ITEM_KEY)), min_size=1, max_size=2, unique=True)):
        items = []
        for _ in range(draw(st.integers(0, 4))):
            name = draw(names if ITEM_KEY[key] == "name" else uris)
            item = {ITEM_KEY[key]: name, "description": "fine" if allowed(key, name) else MARK}
            items.append(item)
        result[key] = items
    if draw(st.booleans()):
        result["nextCursor"] = "c"
    return result


@st.composite
def server_message(draw: Any) -> Any:
    kind = draw(st.sampled_from(["list", "list", "other", "note", "error"]))
    msg_id = draw(ids)
    if kind == "list":
        return {"jsonrpc": "2.0", "id": msg_id, "result": draw(list_result())}
    if kind == "other":
        return {"jsonrpc": "2.0", "id": msg_id, "result": {"content": [{"type": "text", "text": "ok"}]}}
    if kind == "note":
        return {"jsonrpc": "2.0", "method": draw(st.sampled_from(["notifications/progress",
                                                                  "notifications/tools/list_changed"]))}
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": -1, "message": "no"}}


@st.composite
def upstream_answer(draw: Any) -> tuple[int, str, list[bytes]]:
    messages = draw(st.lists(server_message(), min_size=1, max_size=4))
    if draw(st.booleans()):
        payload = messages if len(messages) > 1 or draw(st.booleans()) else messages[0]
        body = orjson.dumps(payload)
        content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8",
                                             "Application/JSON"]))
    else:
        eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
        events = []
        for n, message in enumerate(messages):
            lines = [b": comment"] if draw(st.booleans()) else []
            if draw(st.booleans()):
                lines.append(b"id: " + str(n).encode())
            lines += [b"event: message", b"data: " + orjson.dumps(message)]
            events.append(eol.join(lines) + eol + eol)
        body = b"".join(events)
        content_type = draw(st.sampled_from(["text/event-stream", "TEXT/event-stream; charset=utf-8"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if body[a:b]]
    return 200, content_type, chunks


# --- reading what the client got, independently of the proxy's own parser ----------------------------------------

def messages_in(content_type: str, body: bytes) -> list[Any]:
    if not body:
        return []
    if content_type.lower().startswith("text/event-stream"):
        found = []
        for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            if line.startswith(b"data:") and line[5:].strip():
                found.append(orjson.loads(line[5:]))
        return found
    return [orjson.loads(body)]


def hidden_items(payloads: list[Any]) -> list[Any]:
    leaked = []
    for payload in payloads:
        for msg in payload if isinstance(payload, list) else [payload]:
            result = msg.get("result") if isinstance(msg, dict) else None
            if isinstance(result, dict):
                for key, item_key in ITEM_KEY.items():
                    for item in result.get(key) or []:
                        if not allowed(key, item.get(item_key)):
                            leaked.append(item)
    return leaked


def denied_calls(received: list[tuple[str, bytes]]) -> list[Any]:
    denied = []
    for method, body in received:
        if method != "POST" or not body:
            continue
        payload = orjson.loads(body)
        for msg in payload if isinstance(payload, list) else [payload]:
            params = msg.get("params") or {}
            if msg.get("method") in ("tools/call", "prompts/get") and not allowed("tools", params.get("name")):
                denied.append(msg)
            if msg.get("method") == "resources/read" and not allowed("resources", params.get("uri")):
                denied.append(msg)
    return denied


async def exchange(rig: Rig, request: Any) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {rig.token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        if request is None:  # the server's GET stream
            async with http.get(rig.url, headers=headers) as resp:
                body = await resp.read()
        else:  # no MCP-Protocol-Version: 2025-03-26, where batches are allowed
            async with http.post(rig.url, data=orjson.dumps(request), headers=headers) as resp:
                body = await resp.read()
        assert b"Traceback" not in body
        return resp.status, resp.headers.get("Content-Type", ""), body


requests = st.one_of(client_message(), st.lists(client_message(), min_size=1, max_size=4), st.none())


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(requests, upstream_answer()), min_size=1, max_size=3))
def test_no_denied_call_reaches_the_upstream_and_no_hidden_item_reaches_a_client(rig: Rig, steps: list) -> None:
    for request, answer in steps:
        rig.received.clear()
        rig.answers[:] = [answer]
        status, content_type, body = rig.run(exchange(rig, request))
        assert status != 500, body  # refusals (502, 503) are fine; a crash is not
        assert MARK.encode() not in body, body
        if status < 300:
            assert hidden_items(messages_in(content_type, body)) == []
        assert denied_calls(rig.received) == [], rig.received
