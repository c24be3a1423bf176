"""A POST answered as a conversation: a guard asks the client something on the request's own SSE stream first.

2025-11-25 lets a server send its own requests (e.g. `elicitation/create`) on the SSE stream of the POST they
concern, before the response. When a guard answers a message with a `Conversation`, the edge opens that stream at
once, lets the guard speak and wait, and then either writes the guard's answer or forwards the message it let
through and relays the upstream's answer on the same stream. Nothing reaches the upstream before the guard says so;
if the client leaves meanwhile, the handler is cancelled and nothing is forwarded at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

from proxy.edge.relay import ServerMessages, Unreadable, id_key, relay_sse, sse_event
from proxy.edge.upstream_http import UpstreamBroken
from proxy.exchange import Answer, Conversation, Exchange
from proxy.guards.pipeline import StampFailed
from proxy.jsonrpc import INTERNAL_ERROR, Message, dumps, error

if TYPE_CHECKING:
    from proxy.edge.forward import Forwarder

log = logging.getLogger("scopegate.forward")

KEEPALIVE_SECONDS = 15.0


async def converse(forwarder: Forwarder, request: web.Request, exchange: Exchange, message: Message,
                   conversation: Conversation) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Request-Id": exchange.request_id})
    await response.prepare(request)

    writing = asyncio.Lock()  # the keep-alive and the guard share the stream: one write at a time

    async def send(out: Message) -> None:
        async with writing:
            await response.write(sse_event(out))

    async def keep_alive() -> None:
        # A person may take minutes: an SSE comment now and then keeps idle-timeout proxies from cutting the stream.
        try:
            while True:
                await asyncio.sleep(KEEPALIVE_SECONDS)
                async with writing:
                    await response.write(b": waiting for the client\n\n")
        except (ConnectionResetError, aiohttp.ClientError):
            return  # the client left; the handler is being cancelled with it

    if conversation.opening is not None:
        forwarder._count(exchange, message, conversation.opening)
    beat = asyncio.create_task(keep_alive())
    try:
        outcome = await conversation.run(send)
    except (ConnectionResetError, aiohttp.ClientError):
        return response  # the client left before it could be asked: nothing was forwarded
    finally:
        beat.cancel()
    forwarder._count(exchange, message, outcome)  # the message's outcome is known only now
    try:
        if isinstance(outcome, Answer):
            if outcome.response is not None:
                await send(outcome.response)
        else:
            await _forward(forwarder, exchange, outcome, response)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientError):
        pass  # the client left: nothing more to tell it
    return response


async def _forward(forwarder: Forwarder, exchange: Exchange, message: Message, response: web.StreamResponse) -> None:
    """The message upstream; its answer (JSON or SSE) onto the stream the client already has."""
    msg_id = message.get("id")
    try:
        if (stamp := forwarder.pipeline.stamp) is not None:
            await stamp(exchange)  # the caller's identity, naming the approval just given
        upstream = await forwarder.session.request("POST", data=dumps(message), headers=exchange.upstream_headers)
    except StampFailed:
        await response.write(sse_event(error(msg_id, INTERNAL_ERROR, "the caller's identity for the upstream is "
                                             "unavailable")))
        return
    except (TimeoutError, UpstreamBroken, ValueError, OSError) as exc:
        log.warning("upstream unreachable: %s", type(exc).__name__, extra={"request_id": exchange.request_id})
        forwarder.metrics.upstream_errors.labels("connect").inc()
        await response.write(sse_event(error(msg_id, INTERNAL_ERROR, "upstream unavailable")))
        return
    exchange.upstream_status = upstream.status
    try:
        kind = upstream.headers.get("Content-Type", "")
        if upstream.headers.get("Content-Encoding", "identity").lower() != "identity":
            # Asked for identity; an answer compressed anyway cannot be read, nor joined to the stream as it is.
            forwarder.metrics.upstream_errors.labels("response").inc()
            await response.write(sse_event(error(msg_id, INTERNAL_ERROR, "upstream answered in an encoding the "
                                                 "proxy cannot read")))
            return
        messages = ServerMessages(forwarder.pipeline, exchange, {id_key(msg_id): message["method"]},
                                  exchange.session_id)
        media = kind.partition(";")[0].strip().lower()
        if upstream.status == 200 and media == "text/event-stream":
            forwarder.open_streams.add(upstream)
            try:
                await relay_sse(upstream, response, messages, forwarder.event_ids)
            except Unreadable:
                forwarder.metrics.upstream_errors.labels("unreadable").inc()  # the stream ends before it
            finally:
                forwarder.open_streams.discard(upstream)
            return
        body = await upstream.read()
        try:
            answer = orjson.loads(body) if upstream.status == 200 and media == "application/json" else None
            answer = messages.one(answer) if isinstance(answer, dict) else None  # checked like any other answer
        except (orjson.JSONDecodeError, Unreadable):
            answer = None
        if exchange.tasks is not None:
            await messages.settle()
        if not isinstance(answer, dict):
            # What the upstream said cannot travel as one SSE event unparsed: say so, in the call's own terms.
            forwarder.metrics.upstream_errors.labels("response").inc()
            answer = error(msg_id, INTERNAL_ERROR, f"upstream answered HTTP {upstream.status}")
        await response.write(sse_event(answer))
    except (TimeoutError, UpstreamBroken, OSError) as exc:
        log.warning("upstream failed mid-response: %s", type(exc).__name__, extra={"request_id": exchange.request_id})
        forwarder.metrics.upstream_errors.labels("response").inc()
        await response.write(sse_event(error(msg_id, INTERNAL_ERROR, "upstream failed")))
    finally:
        upstream.close()
