"""Relaying upstream answers to the client: JSON bodies whole, SSE streams event by event as they arrive.

Every message the upstream sends a client is parsed and passes the pipeline's upstream watches and rewriters,
wherever it travels (POST answer, GET stream, resumed stream, replay, batch), whatever its id: nothing is relayed
on the strength of an id matching a request. What cannot be read where a list may travel (a body that is not
JSON, an SSE event whose data is not JSON, a list the filter cannot read) raises `Unreadable`, and the answer is
refused instead of relayed. Everything relayed is re-serialised from what was checked, so no parser difference
(duplicate keys, odd numbers) shows the client something the proxy did not see. SSE is never held: each event
leaves as soon as it is complete, its `id:` sealed to the caller and the session.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import ClientResponse, web

from proxy.edge.event_ids import EventIds
from proxy.edge.sse import EventSplitter, EventTooLarge, event_data, event_id, rebuild
from proxy.exchange import Exchange
from proxy.guards.list_filter import UnreadableList
from proxy.guards.pipeline import Pipeline
from proxy.jsonrpc import Message, dumps, recognise_response, splice_response

MAX_EVENT_BYTES = 32 * 1024 * 1024
# Below this size a body is parsed whole: cheaper than recognising it in its bytes (measured crossover about 2 KB:
# a one-tool list 20 us recognised vs 13 us parsed, an eight-tool list 28 us vs 64 us).
PLAIN_MIN_BYTES = 2048


class Unreadable(Exception):
    """An answer (or an event of it) the proxy cannot check: refused, never relayed."""


def id_key(msg_id: Any) -> tuple[str, Any]:
    # 1 and "1" are different JSON-RPC ids.
    return (type(msg_id).__name__, msg_id)


class ServerMessages:
    """What happens to each message the upstream sends on one answer: hooks see it, rewriters may change it.

    `asked` maps the ids of the requests this POST forwarded to their methods; an answer matched by exact id (type
    included) is the first for that id; rewriters are told the method then, and None for everything else.
    """

    __slots__ = ("asked", "exchange", "pipeline", "session")  # one per open stream

    def __init__(self, pipeline: Pipeline, exchange: Exchange, asked: dict[tuple[str, Any], str] | None = None,
                 session: str | None = None) -> None:
        self.pipeline = pipeline
        self.exchange = exchange
        self.asked = asked or {}
        self.session = session  # what the relayed event ids are sealed to

    def one(self, msg: Message) -> Message:
        for watch in self.pipeline.upstream_watches:
            watch(msg)
        tasks = self.pipeline.tasks
        if "result" not in msg and "error" not in msg:
            # a request or notification from the server: no result to filter; ids of the upstream's tasks sealed
            return tasks.from_server(self.exchange, self.session, msg) if tasks is not None else msg
        method = None
        if "method" not in msg:
            try:
                method = self.asked.pop(id_key(msg.get("id")), None)
            except TypeError:  # an unhashable id from a misbehaving upstream: answers nothing of ours
                method = None
        try:
            msg = self.pipeline.rewrite(self.exchange, msg, method)
        except UnreadableList as exc:
            raise Unreadable(f"list not understood: {exc}") from None
        if self.exchange.tasks is not None and tasks is not None:  # this request touched tasks: seal their ids
            msg = tasks.answer(self.exchange, self.session, msg, method)
        return msg

    async def settle(self) -> None:
        """Before what was just relayed leaves: the upstream tasks it created are recorded for their caller (so
        the client's first `tasks/get` finds them). Called only when the request touched tasks."""
        if self.pipeline.tasks is not None:
            await self.pipeline.tasks.record(self.exchange, self.session)

    def plain(self, data: bytes) -> bytes | None:
        """`data` checked without parsing more than needed when it is plainly one response (`recognise_response`):
        its result goes to `Pipeline.rewrite_raw` (a list seen before is not parsed again) and the id is spliced
        back. A plain response announces nothing, so the watches need not see it. None: parse it whole (always for a
        small body: there the whole parse is the cheaper one)."""
        if len(data) < PLAIN_MIN_BYTES or self.exchange.tasks is not None:
            return None  # (an answer about tasks is parsed whole: its task ids are sealed)
        found = recognise_response(data)
        if found is None:
            return None
        key = id_key(found.msg_id)
        try:
            result = self.pipeline.rewrite_raw(self.exchange, found, self.asked.get(key))
        except orjson.JSONDecodeError:  # not one JSON value after all: the whole path decides (and refuses)
            return None
        except UnreadableList as exc:
            raise Unreadable(f"list not understood: {exc}") from None
        self.asked.pop(key, None)
        return splice_response(found.msg_id, result)

    def payload(self, payload: Any) -> Any:
        """One message or a batch of them, each checked; anything else is not a JSON-RPC answer."""
        if isinstance(payload, dict):
            return self.one(payload)
        if isinstance(payload, list) and all(isinstance(item, dict) for item in payload):
            return [self.one(item) for item in payload]
        raise Unreadable("not a JSON-RPC message or batch")


def relay_json(body: bytes, messages: ServerMessages, local: list[Message]) -> bytes:
    """An upstream JSON body checked and re-serialised, with the proxy's own answers merged in."""
    if not local and (fast := messages.plain(body)) is not None:
        return fast
    try:
        payload = messages.payload(orjson.loads(body))
    except orjson.JSONDecodeError:
        raise Unreadable("body is not JSON") from None
    if local:
        payload = [*local, *(payload if isinstance(payload, list) else [payload])]
    return dumps(payload)


def relay_event(event: bytes, messages: ServerMessages, event_ids: EventIds) -> bytes:
    """One SSE event as the client gets it: data checked and re-serialised, id sealed, other lines kept."""
    data = event_data(event)
    if data and (fast := messages.plain(data)) is not None:
        data = fast
    elif data:
        try:
            data = dumps(messages.payload(orjson.loads(data)))
        except orjson.JSONDecodeError:
            raise Unreadable("event data is not JSON") from None
    upstream_id = event_id(event)
    sealed = event_ids.seal(messages.exchange, messages.session, upstream_id) if upstream_id else upstream_id
    return rebuild(event, data, sealed)


def sse_event(msg: Message) -> bytes:
    return b"event: message\ndata: " + dumps(msg) + b"\n\n"


def _relay_chunk(chunk: bytes, splitter: EventSplitter, messages: ServerMessages,
                 event_ids: EventIds) -> tuple[bytes, Exception | None]:
    """The events `chunk` completes, relayed, and what stopped them if something did. A function of its own so that
    nothing it touched (the chunk's events, in and out) outlives it while the stream waits for the next."""
    events: list[bytes] = []
    try:
        for event in splitter.feed(chunk):
            events.append(relay_event(event, messages, event_ids))
    except EventTooLarge:
        return b"".join(events), Unreadable("event too large")
    except Exception as exc:  # raised by the caller once what came before it is written
        return b"".join(events), exc
    return b"".join(events), None


async def relay_sse(upstream: ClientResponse, client: web.StreamResponse, messages: ServerMessages,
                    event_ids: EventIds) -> None:
    """Copy an SSE stream to the client event by event, as each completes. Returns when the upstream ends it; an
    unfinished event at the end is dropped (clients drop it too). Raises Unreadable on an event it cannot check:
    the caller ends the stream there."""
    splitter = EventSplitter(MAX_EVENT_BYTES)
    content = upstream.content
    while chunk := await content.readany():
        out, failure = _relay_chunk(chunk, splitter, messages, event_ids)
        if messages.exchange.tasks is not None:
            await messages.settle()
        if out:  # the events before a bad one still go: the stream ends at the bad one, not before
            await client.write(out)
        if failure is not None:
            raise failure
        del chunk, out  # an idle stream waits in readany() for hours: it holds neither meanwhile
    last = splitter.finish()
    if last is not None:
        out = relay_event(last, messages, event_ids)
        if messages.exchange.tasks is not None:
            await messages.settle()
        await client.write(out)
