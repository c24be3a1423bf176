"""Relaying upstream answers to the client: JSON bodies whole, SSE streams event by event, unbuffered.

When nothing needs rewriting, SSE bytes are written on as they arrive, chunk by chunk. When a rewriter waits for a
response, the stream is split into events; only an event carrying a response to rewrite is rebuilt, every other
event leaves byte for byte as it came, at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import ClientResponse, web

from proxy.edge.sse import EventSplitter, event_data, replace_data
from proxy.exchange import Exchange
from proxy.guards.pipeline import Pipeline
from proxy.jsonrpc import Message, dumps, recognise_response, splice_response

MAX_EVENT_BYTES = 32 * 1024 * 1024


def id_key(msg_id: Any) -> tuple[str, Any]:
    # 1 and "1" are different JSON-RPC ids.
    return (type(msg_id).__name__, msg_id)


class Outstanding:
    """Requests whose POST stream ended before their response, per session, so a resumed GET stream that carries
    the response can still have it rewritten. Only methods with a rewriter are remembered. Bounded, oldest first
    out, so a response that never comes cannot grow it.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._methods: OrderedDict[tuple[str, str, Any], str] = OrderedDict()
        self._limit = limit

    def add(self, session_id: str, msg_id: Any, method: str) -> None:
        self._methods[(session_id, type(msg_id).__name__, msg_id)] = method
        while len(self._methods) > self._limit:
            self._methods.popitem(last=False)

    def take(self, session_id: str, msg_id: Any) -> str | None:
        try:
            return self._methods.pop((session_id, type(msg_id).__name__, msg_id))
        except (KeyError, TypeError):  # TypeError: an unhashable id from a misbehaving upstream
            return None

    def __len__(self) -> int:
        return len(self._methods)


class ResponseRewrite:
    """Chooses, for each response message coming back, the rewriters of the method its request had."""

    def __init__(
        self, pipeline: Pipeline, exchange: Exchange, pending: dict[tuple[str, Any], str], outstanding: Outstanding
    ) -> None:
        self.pipeline = pipeline
        self.exchange = exchange
        self.pending = pending  # this POST's forwarded requests whose method has a rewriter
        self.outstanding = outstanding  # earlier requests of the session whose POST stream ended first

    @property
    def active(self) -> bool:
        return (bool(self.pending) or bool(self.pipeline.upstream_watches)
                or (self.exchange.session_id is not None and len(self.outstanding) > 0))

    def __call__(self, msg: Message) -> Message | None:
        """The rewritten response, or None when `msg` is not a response waiting for a rewriter. Every message
        the upstream sent that `raw` did not take passes here once, parsed: the pipeline's upstream watches see it
        first."""
        for watch in self.pipeline.upstream_watches:
            watch(msg)
        if "method" in msg or "id" not in msg:
            return None
        try:
            method = self.pending.pop(id_key(msg["id"]), None)
        except TypeError:  # an unhashable id from a misbehaving upstream: nothing of ours
            return None
        if method is None and self.exchange.session_id is not None:
            method = self.outstanding.take(self.exchange.session_id, msg["id"])
        if method is None:
            return None
        return self.pipeline.rewrite(self.exchange, method, msg)

    def raw(self, data: bytes) -> bytes | None:
        """`data` rewritten when it is plainly one response (`recognise_response`), without parsing more than its
        rewriter needs: a list seen before is not parsed at all, a response nothing rewrites passes unparsed (the
        upstream watches look for announcements, which a response is not). None: parse it whole, the usual path."""
        found = recognise_response(data)
        if found is None:
            return None
        key = id_key(found.msg_id)
        method = self.pending.get(key)
        parked = None
        if method is None and self.exchange.session_id is not None:
            method = parked = self.outstanding.take(self.exchange.session_id, found.msg_id)
        if method is None:
            return data  # a response, but to nothing with a rewriter: it passes as it came
        try:
            result = self.pipeline.rewrite_raw(self.exchange, method, found)
        except orjson.JSONDecodeError:  # not one JSON value after all: the whole path decides
            if parked is not None and self.exchange.session_id is not None:
                self.outstanding.add(self.exchange.session_id, found.msg_id, parked)
            return None
        self.pending.pop(key, None)
        return splice_response(found.msg_id, result)

    def park_unanswered(self) -> None:
        """The POST stream ended before some responses: a resumed GET stream may still carry them."""
        if self.exchange.session_id is not None:
            for (_, msg_id), method in self.pending.items():
                self.outstanding.add(self.exchange.session_id, msg_id, method)
        self.pending.clear()


def _apply(payload: Any, rewrite: Callable[[Message], Message | None]) -> Any | None:
    """Rewrite one message or each message of a batch; None when nothing changed."""
    if isinstance(payload, dict):
        return rewrite(payload)
    if isinstance(payload, list):
        changed = False
        out = []
        for item in payload:
            new = rewrite(item) if isinstance(item, dict) else None
            changed = changed or new is not None
            out.append(item if new is None else new)
        return out if changed else None
    return None


def rewrite_json(body: bytes, rewrite: ResponseRewrite, local: list[Message]) -> bytes:
    """An upstream JSON body with responses rewritten and the proxy's own answers merged in."""
    if not local and (fast := rewrite.raw(body)) is not None:
        return fast
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # not ours to judge; the client sees what the upstream said
    new = _apply(payload, rewrite)
    if new is not None:
        payload = new
    if local:
        payload = [*local, *(payload if isinstance(payload, list) else [payload])]
    elif new is None:
        return body
    return dumps(payload)


def _rewrite_event(event: bytes, rewrite: ResponseRewrite) -> bytes:
    data = event_data(event)
    if not data:
        return event
    if (fast := rewrite.raw(data)) is not None:
        return event if fast is data else replace_data(event, fast)
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return event
    new = _apply(payload, rewrite)
    return event if new is None else replace_data(event, dumps(new))


def sse_event(msg: Message) -> bytes:
    return b"event: message\ndata: " + dumps(msg) + b"\n\n"


async def relay_sse(upstream: ClientResponse, client: web.StreamResponse, rewrite: ResponseRewrite) -> None:
    """Copy an SSE stream to the client as it arrives. Returns when the upstream ends it."""
    content = upstream.content
    if not rewrite.active:
        while chunk := await content.readany():
            await client.write(chunk)
        return
    splitter = EventSplitter(MAX_EVENT_BYTES)
    while chunk := await content.readany():
        if not rewrite.active:
            pending = splitter.rest()
            await client.write(pending + chunk if pending else chunk)
            while chunk := await content.readany():
                await client.write(chunk)
            return
        events = [_rewrite_event(event, rewrite) for event in splitter.feed(chunk)]
        if events:
            await client.write(b"".join(events))
    tail = splitter.rest()
    if tail:
        await client.write(_rewrite_event(tail, rewrite))
