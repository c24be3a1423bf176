"""The proxy's own `tools/list` of the upstream: every page, with the proxy's server-side headers, in whichever
protocol revision the upstream speaks. It feeds `guards/catalog.py`.

Its own session, never a caller's: the catalog is shared by every caller, so it must not be a view one caller's
session shaped (per-session state such as a module that caller switched on), and requests the proxy slipped into
a caller's session would share that caller's id space, event stream and history. So the proxy asks as a client of
its own: 2026-07-28 first (stateless: every request carries `_meta` and the `MCP-Protocol-Version` and `Mcp-Method`
headers); where the upstream refuses that (a 4xx, or a JSON-RPC error), 2025-11-25: `initialize`, then
`notifications/initialized`, then `tools/list` in that session, kept for later fetches and opened again when the
upstream forgets it (404). What cannot be read is an error, so the catalog stays unknown rather than wrong.

A 2026-07-28 upstream sends `notifications/tools/list_changed` only on `subscriptions/listen` streams, so the proxy
keeps one of its own open (`watch`), and every message on it goes to the pipeline's upstream watches like any
relayed one. Opening it, and losing it, count as a change: a notice may have been missed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import orjson
from yarl import URL

from proxy import __version__
from proxy.edge.sse import EventSplitter, EventTooLarge, event_data
from proxy.jsonrpc import JSON, Message, dumps

METHOD_NOT_FOUND = -32601
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
MAX_PAGES = 1000
MAX_BYTES = 64 * 1024 * 1024
ACCEPT = "application/json, text/event-stream"
CLIENT_INFO = {"name": "scopegate", "version": __version__}
# What clients commonly declare. Servers may register tools per client capability (server-everything lists
# trigger-sampling-request only to a client that can sample): the catalog, asked with no capabilities, would lack
# them, and delegated decisions would refuse them as unlisted to the callers whose sessions have them. The catalog
# never answers a server's request; what is asked of it there times out on the server's side, harmlessly.
CAPABILITIES = {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN,
               "io.modelcontextprotocol/clientCapabilities": CAPABILITIES,
               "io.modelcontextprotocol/clientInfo": CLIENT_INFO}
LISTEN_RETRY = 5.0  # the first wait before opening the listen stream again; it doubles with each failure ...
LISTEN_RETRY_MAX = 300.0  # ... up to this (an upstream without listen support costs one request per 5 minutes)
CHANGED: Message = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
log = logging.getLogger("scopegate.catalog")


class FetchFailed(Exception):
    """The upstream did not give a readable tool list."""


class NoSuchList(FetchFailed):
    """The upstream, in a revision it speaks, does not know this list method."""


class NotModern(Exception):
    """The upstream refused a 2026-07-28 request: ask in 2025-11-25."""


class UpstreamTools:
    def __init__(self, session: aiohttp.ClientSession, url: URL, headers: Iterable[tuple[str, str]]) -> None:
        self.session = session
        self.url = url
        self.headers = {"Content-Type": JSON, "Accept": ACCEPT, "Accept-Encoding": "identity",
                        "X-Request-Id": "scopegate-catalog", **dict(headers)}
        self.revision: str | None = None  # MODERN or LEGACY, once one worked
        self.session_id: str | None = None  # the proxy's own legacy session
        self.negotiated = LEGACY
        self._ids = itertools.count(1)
        self._modern = asyncio.Event()  # set once the upstream answered in 2026-07-28

    async def __call__(self) -> list[Any]:
        return await self.fetch("tools/list", "tools")

    async def lists(self) -> dict[str, list[Any]]:
        """Every tool, prompt and resource template the upstream lists (what `pins update` pins); a list the
        upstream answers with "method not found" (it has no prompts, say) is empty. Raises FetchFailed."""
        found = {"tools": await self.fetch("tools/list", "tools")}
        for method, key in (("prompts/list", "prompts"), ("resources/templates/list", "resourceTemplates")):
            try:
                found[key] = await self.fetch(method, key)
            except NoSuchList:
                found[key] = []
        return found

    async def fetch(self, method: str, key: str) -> list[Any]:
        """Every item of every page of one list, in whichever revision the upstream speaks."""
        if self.revision != LEGACY:
            try:
                items = await self._pages(MODERN, method, key)
                self.revision = MODERN
                self._modern.set()
                return items
            except NotModern:
                pass  # a server that never spoke it, or one replaced by an older version: ask in 2025-11-25
        self._modern.clear()
        if self.session_id is None:
            await self._initialize()
        try:
            items = await self._pages(LEGACY, method, key)
        except SessionGone:
            await self._initialize()
            items = await self._pages(LEGACY, method, key)
        self.revision = LEGACY  # only once it worked: a failure here tries 2026-07-28 again next time
        return items

    async def watch(self, saw: Callable[[Message], None]) -> None:
        """While the upstream speaks 2026-07-28, keep one `subscriptions/listen` stream of the proxy's own asking for
        `toolsListChanged`, and hand every message on it to `saw`: that revision sends the notice nowhere else. A
        stream that drops may have missed a notice, so a drop counts as a change. Attempts that do not open a stream
        are retried after `listen_delay` (an upstream without listen support is asked less and less often, and said
        so once; the catalog's maximum age keeps it fresh meanwhile). Runs until cancelled."""
        failures = 0  # attempts in a row that opened no stream
        while True:
            await self._modern.wait()
            if self.revision == MODERN:
                opened: list[bool] = []
                try:
                    await self._listen(saw, opened)
                    reason = "closed by the upstream"
                except Exception as exc:  # whatever ended it, the stream is opened again; the catalog stays safe
                    reason = str(exc) if isinstance(exc, FetchFailed) else type(exc).__name__
                if opened:
                    saw(CHANGED)
                    failures = 0
                    log.debug("the catalog's listen stream ended (%s); opening it again", reason)
                else:
                    failures += 1
                    # Said once per run of failures, not at every retry: an upstream that never supports it is
                    # not an incident every few minutes.
                    log.log(logging.INFO if failures == 1 else logging.DEBUG, "the catalog's listen stream cannot "
                            "be opened (%s); retrying in %g s, then less often", reason, listen_delay(failures))
            await asyncio.sleep(listen_delay(failures))

    async def _listen(self, saw: Callable[[Message], None], opened: list[bool]) -> None:
        body = dumps({"jsonrpc": "2.0", "id": f"scopegate-catalog-listen-{next(self._ids)}",
                      "method": "subscriptions/listen",
                      "params": {"notifications": {"toolsListChanged": True}, "_meta": MODERN_META}})
        async with self.session.post(self.url, data=body, headers=self._headers(MODERN, "subscriptions/listen")) \
                as resp:
            if resp.status != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise FetchFailed(f"subscriptions/listen answered HTTP {resp.status}")
            opened.append(True)
            saw(CHANGED)  # whatever changed between the last fetch and now was not heard: fetch again
            splitter = EventSplitter(MAX_BYTES)
            while chunk := await resp.content.readany():
                for event in splitter.feed(chunk):
                    data = event_data(event)
                    payload = _loads(data) if data else None
                    for message in payload if isinstance(payload, list) else [payload]:
                        if isinstance(message, dict):
                            saw(message)

    async def close(self) -> None:
        """End the proxy's own 2025-11-25 session, if it opened one (best effort: the upstream expires it anyway)."""
        if self.session_id is None:
            return
        headers = self._headers(LEGACY, "")
        self.session_id = None
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self.session.delete(self.url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)):
                pass

    async def _pages(self, revision: str, method: str, key: str) -> list[Any]:
        tools: list[Any] = []
        cursor: Any = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            if revision == MODERN:
                params["_meta"] = MODERN_META
            result = await self._request(revision, method, params, first_page=cursor is None)
            page = result.get(key)
            if not isinstance(page, list):
                raise FetchFailed(f"{method} result without a {key} array")
            tools += page
            cursor = result.get("nextCursor")
            if cursor is None:
                return tools
            if not isinstance(cursor, str) or cursor in seen:
                raise FetchFailed(f"{method} pagination does not end")
            seen.add(cursor)
        raise FetchFailed(f"{method} has too many pages")

    async def _initialize(self) -> None:
        self.session_id = None
        params = {"protocolVersion": LEGACY, "capabilities": CAPABILITIES, "clientInfo": CLIENT_INFO}
        result = await self._request(LEGACY, "initialize", params, first_page=False)
        version = result.get("protocolVersion")
        self.negotiated = version if isinstance(version, str) else LEGACY
        headers = self._headers(LEGACY, "notifications/initialized")
        async with self.session.post(self.url, data=dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                                     headers=headers) as resp:
            await resp.read()
            if resp.status >= 400:
                raise FetchFailed(f"notifications/initialized answered {resp.status}")

    def _headers(self, revision: str, method: str) -> dict[str, str]:
        headers = dict(self.headers)
        if revision == MODERN:
            headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": method})
        elif method != "initialize":
            headers["MCP-Protocol-Version"] = self.negotiated
            if self.session_id is not None:
                headers["Mcp-Session-Id"] = self.session_id
        return headers

    async def _request(self, revision: str, method: str, params: dict[str, Any], *, first_page: bool) -> dict:
        msg_id = f"scopegate-catalog-{next(self._ids)}"
        body = dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        async with self.session.post(self.url, data=body, headers=self._headers(revision, method)) as resp:
            if revision == LEGACY and resp.status == 404 and method != "initialize":
                raise SessionGone
            if revision == MODERN and first_page and (400 <= resp.status < 500 or
                                                      (resp.status >= 500 and await _is_rpc_error(resp))):
                raise NotModern  # (some servers answer a revision they do not speak with a 500 and an error)
            if resp.status != 200:
                raise FetchFailed(f"{method} answered HTTP {resp.status}")
            if method == "initialize":
                self.session_id = resp.headers.get("Mcp-Session-Id")
            answer = await _response(resp, msg_id)
        if "error" in answer:
            code = answer["error"].get("code") if isinstance(answer["error"], dict) else None
            if code == METHOD_NOT_FOUND and self.revision == revision and method != "tools/list":
                raise NoSuchList(method)  # a revision it already spoke: it has no such list
            if revision == MODERN and first_page:
                raise NotModern
            raise FetchFailed(f"{method} answered a JSON-RPC error")
        result = answer.get("result")
        if not isinstance(result, dict):
            raise FetchFailed(f"{method} answered no result object")
        return result


def listen_delay(failures: int, first: float | None = None, most: float | None = None) -> float:
    """Seconds to wait before opening the listen stream again after `failures` attempts in a row that opened none
    (0: the last one opened, then ended): `first`, doubled for each failure after the first, never above `most`.
    Pure (the defaults are read when called, so tests may change them)."""
    first = LISTEN_RETRY if first is None else first
    most = LISTEN_RETRY_MAX if most is None else most
    return min(first * 2 ** min(max(failures - 1, 0), 32), most)  # (2**32: no float overflow after days)


class SessionGone(Exception):
    pass


async def _response(resp: aiohttp.ClientResponse, msg_id: str) -> Message:
    """The response to `msg_id`: the JSON body, or the SSE event that carries it (read until it arrives: a server
    may keep the stream open after it)."""
    media = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        found = _ours(await _json_body(resp, MAX_BYTES), msg_id)
        if found is not None:
            return found
    elif media == "text/event-stream":
        splitter = EventSplitter(MAX_BYTES)
        try:
            while chunk := await resp.content.readany():
                for event in splitter.feed(chunk):
                    data = event_data(event)
                    found = _ours(_loads(data), msg_id) if data else None
                    if found is not None:
                        return found
        except EventTooLarge:
            raise FetchFailed("answer too large") from None
    else:
        raise FetchFailed(f"unexpected content type {media!r}")
    raise FetchFailed("no response to the request in the answer")


async def _json_body(resp: aiohttp.ClientResponse, limit: int) -> Any:
    raw = bytearray()  # read(n) returns what has arrived, not n bytes: read to the end (or past the limit)
    while len(raw) <= limit and (chunk := await resp.content.readany()):
        raw += chunk
    if len(raw) > limit:
        raise FetchFailed("answer too large")
    return _loads(raw)


async def _is_rpc_error(resp: aiohttp.ClientResponse) -> bool:
    """The answer is a JSON body holding one JSON-RPC error (read at most 64 KiB of it)."""
    if resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower() != JSON:
        return False
    try:
        payload = await _json_body(resp, 64 * 1024)
    except FetchFailed:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("error"), dict)


def _ours(payload: Any, msg_id: str) -> Message | None:
    for message in payload if isinstance(payload, list) else [payload]:
        if isinstance(message, dict) and message.get("id") == msg_id and "method" not in message:
            return message
    return None


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FetchFailed("an answer that is not JSON") from None
