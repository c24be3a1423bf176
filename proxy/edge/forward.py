"""The MCP endpoint: admit, parse, guard, forward, relay. The HTTP and upstream I/O edge of the proxy.

Decisions live in the pipeline's steps; this module only moves bytes between the client and the one pooled
upstream session, and merges the guards' own answers with the upstream's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Config
from proxy.edge.budget import Budget
from proxy.edge.converse import converse
from proxy.edge.errors import REQUEST_ID, log_failure
from proxy.edge.event_ids import EventIds
from proxy.edge.framing import HEADER_MISMATCH, FrameError, header_problem, parse_body
from proxy.edge.headers import client_response_headers, upstream_request_headers
from proxy.edge.openings import Openings
from proxy.edge.relay import ServerMessages, Unreadable, id_key, relay_json, relay_sse, sse_event
from proxy.edge.sse import BOM, event_data
from proxy.edge.upstream_http import HeaderRefused, HeadTimeout, Pool, Response, UpstreamBroken
from proxy.exchange import Answer, Conversation, Exchange, Outcome
from proxy.guards.list_filter import LISTS
from proxy.guards.pipeline import Pipeline, StampFailed
from proxy.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    JSON,
    Message,
    dumps,
    dumps_kept,
    error,
    is_request,
    rpc_error,
)
from proxy.ops.audit import AuditWriter
from proxy.ops.metrics import AUTH_REASONS, Metrics, bounded
from proxy.store import StoreUnavailable

log = logging.getLogger("scopegate.forward")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def json_media(content_type: str | None) -> bool:
    """Whether a POST's Content-Type is JSON (`application/json`, any parameters, any case)."""
    return content_type is not None and content_type.partition(";")[0].strip().lower() == JSON


def error_message(response: web.StreamResponse) -> str:
    """The JSON-RPC error message of one of our own refusals: the refusing check's words, for the audit record."""
    try:
        message = orjson.loads(response.body)["error"]["message"]  # type: ignore[attr-defined]
    except (AttributeError, TypeError, KeyError, orjson.JSONDecodeError):
        message = None
    return message if isinstance(message, str) else f"HTTP {response.status}"


UPSTREAM_TIMEOUT = -32001  # no answer from the upstream in time (an implementation-defined server error)
CUT_SHORT = "upstream stream ended before the response"


class BodyTooLarge(Exception):
    pass


class UpstreamStalled(Exception):
    """A JSON body stopped coming for longer than the read timeout."""


def long_lived(request: web.Request) -> bool:
    """A stream that may stay open for hours: a GET, or a 2026-07-28 subscriptions/listen (a POST whose Mcp-Method
    header says so; a client that mislabels its request only moves it to the other capped budget)."""
    return request.method == "GET" or request.headers.get("Mcp-Method") == "subscriptions/listen"


def awaits_nothing(http_method: str, status: int, asked: dict[tuple[str, Any], str], local: list[Message]) -> bool:
    """A 2xx answer to a POST that forwarded no request (only notifications or the client's responses) and has none
    of the guards' answers to merge: nothing in its body answers anything. The spec's answer is 202 with no body,
    and clients discard whatever body comes (the SDKs cancel it unread), so scopegate relays the status without the
    body, neither parsed nor passed on: a server's `null` there is no error, and no unchecked text reaches a
    client. Pure."""
    return http_method == "POST" and 200 <= status < 300 and not asked and not local


def holder(exchange: Exchange) -> str:
    principal = exchange.principal
    return f"{principal.kind}:{principal.credential_id}" if principal is not None else ""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused as soon as it passes `limit` bytes (client_max_size does not cover request.content)."""
    if request.content_length is not None:
        if request.content_length > limit:
            raise BodyTooLarge
        if request.content.is_eof():  # all of it arrived (Content-Length bytes, checked above): take it as it is
            return request.content.read_nowait()
        return await request.read()  # bounded by Content-Length, and by client_max_size (the same limit)
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


@dataclass(slots=True)
class Outgoing:
    """What a request sends upstream once its guards are done, and what relaying the answer needs."""

    payload: bytes | None
    messages: ServerMessages
    answers: list[Message]  # the guards' own answers, merged into the upstream's
    is_batch: bool | None
    lists_asked: bool = False
    opening: asyncio.Future[None] | None = None  # a GET's: set once its answer head arrived (edge/openings.py)


class Forwarder:
    def __init__(self, config: Config, pipeline: Pipeline, session: Pool,
                 metrics: Metrics | None = None, audit: AuditWriter | None = None,
                 event_ids: EventIds | None = None, stream_session: Pool | None = None) -> None:
        self.upstream: URL = config.upstream
        self.config = config
        self.pipeline = pipeline
        self.session = session  # calls (POST, DELETE) have their own upstream connections ...
        self.stream_session = stream_session or session  # ... apart from long-lived streams'
        self.budgets = {"streams": Budget(config.max_streams_per_credential),
                        "calls": Budget(config.max_calls_per_credential)}
        self.metrics = metrics or Metrics()
        self.audit = audit
        self.event_ids = event_ids or EventIds(os.urandom(32))
        self.open_streams: set[Response] = set()
        self.openings = Openings()  # GET streams being opened: the session's POSTs wait for them
        self._rid_prefix = os.urandom(8).hex()
        self._rid_count = itertools.count()

    def _exchange(self, request: web.Request) -> Exchange:
        rid = request.headers.get("X-Request-Id", "")
        if not _REQUEST_ID.fullmatch(rid):
            # Unique, not secret (a client may choose its own): a random prefix per process and a counter, which
            # spares a getrandom call on every request.
            rid = f"{self._rid_prefix}{next(self._rid_count):016x}"
        request[REQUEST_ID] = rid  # for the edge's last-resort error answer
        return Exchange(
            request_id=rid,
            session_id=request.headers.get("Mcp-Session-Id"),
            protocol_version=request.headers.get("MCP-Protocol-Version"),
            upstream_headers=upstream_request_headers(
                request.headers, (("X-Request-Id", rid), *self.pipeline.upstream_headers)
            ),
            http_method=request.method,
        )

    async def _end_session(self, exchange: Exchange, session_id: str) -> None:
        """The upstream opened a session the store could not bind: nobody may use it, so it is ended at once rather
        than left open upstream until it times out. Best effort: the client is refused either way."""
        headers = CIMultiDict(exchange.upstream_headers)  # the server-side headers too: the upstream may need them
        for name in ("Content-Type", "Content-Length", "Mcp-Method"):
            headers.popall(name, None)
        headers["Mcp-Session-Id"] = session_id
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                ended = await self.session.request("DELETE", headers=headers)
                try:
                    await ended.read()
                finally:
                    ended.release()  # reused when it was read whole, else closed
        except (TimeoutError, UpstreamBroken, ValueError, OSError):
            log.warning("could not end an unbound upstream session", extra={"request_id": exchange.request_id})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        exchange = self._exchange(request)
        # Registered before anything awaits, so a POST of the session received after this GET cannot overtake it.
        opening = self.openings.opening(exchange.session_id) if request.method == "GET" else None
        response: web.StreamResponse | None = None
        try:
            refusal = response = await self.pipeline.admit(request, exchange)
            if refusal is not None:
                if exchange.auth_failure is not None:
                    self.metrics.auth_failures.labels(bounded(exchange.auth_failure, AUTH_REASONS)).inc()
                    self._refused(exchange, "unauthenticated", exchange.auth_failure)
                else:  # Host/Origin, a secret header, another credential's session: the check's own words
                    self._refused(exchange, "deny", error_message(refusal))
                return refusal
            refusal = response = self._resume_from(request, exchange)
            if refusal is not None:
                return refusal
            kind = "streams" if long_lived(request) else "calls"
            budget, who = self.budgets[kind], holder(exchange)
            if not budget.acquire(who):
                self.metrics.limit(kind)
                self._refused(exchange, "deny", f"{kind} limit")
                what = "open streams" if kind == "streams" else "requests in flight"
                response = rpc_error(429, INVALID_REQUEST, f"too many {what} for this credential (limit "
                                     f"{budget.limit}); retry shortly", request_id=exchange.request_id,
                                     headers={"Retry-After": "1"})
                return response
            try:
                if request.method == "POST":
                    # _post returns what to forward rather than forwarding itself, so that its frame (the body,
                    # the parsed frame, its lists) is gone while a stream it opened stays open for hours.
                    prepared = await self._post(request, exchange)
                    if isinstance(prepared, web.StreamResponse):
                        response = prepared
                        return response
                else:
                    self.metrics.message(request.method, "allow")
                    self._outcome(exchange, {"method": request.method}, "allow", "")
                    prepared = Outgoing(None, ServerMessages(self.pipeline, exchange), [], None, opening=opening)
                response = await self._forward(request, exchange, prepared)
                return response
            finally:
                budget.release(who)
        finally:
            self.openings.opened(exchange.session_id, opening)  # (refused, or it ended; once open it was set)
            if not exchange.outcomes:  # every request leaves a record, whichever way it ended
                status = response.status if response is not None else None
                self._refused(exchange, "error", f"HTTP {status}" if status else "no answer")
            latency = time.perf_counter() - started
            self.metrics.took(request.method, latency)
            if exchange.outcomes and self.audit is not None:
                self.audit.add(exchange, latency)

    def _resume_from(self, request: web.Request, exchange: Exchange) -> web.Response | None:
        """Unwrap `Last-Event-ID` for the upstream; refuse one this proxy did not mint for this caller and session
        (another credential's, another session's, or the upstream's raw id): it is never forwarded."""
        given = request.headers.getall("Last-Event-ID", [])
        if not given:
            return None
        upstream_id = self.event_ids.unseal(exchange, given[0]) if len(given) == 1 else None
        if upstream_id is None:
            self._refused(exchange, "refuse", "last-event-id")
            return rpc_error(400, INVALID_REQUEST, "Last-Event-ID was not issued to this caller for this session",
                             request_id=exchange.request_id)
        exchange.upstream_headers["Last-Event-ID"] = upstream_id
        return None

    @staticmethod
    def _outcome(exchange: Exchange, message: Message, decision: str, reason: str) -> None:
        exchange.outcomes.append(Outcome(message, decision, reason))  # audited later, in a batch

    def _refused(self, exchange: Exchange, decision: str, reason: str) -> None:
        """A request refused before any message was read: counted and audited like every decision."""
        self.metrics.message(exchange.http_method, decision)
        self._outcome(exchange, {"method": exchange.http_method}, decision, reason)

    def _count(self, exchange: Exchange, message: Message, outcome: Message | Answer) -> None:
        method = message.get("method", "response")
        if isinstance(outcome, Answer):
            decision, reason = outcome.decision, outcome.reason
        elif str(message.get("id")) in exchange.confirmed:
            decision, reason = "confirm", ""
        else:
            decision, reason = "allow", ""
        self.metrics.message(method, decision)
        if decision in ("preview", "confirm", "refuse"):
            self.metrics.confirmation(decision, reason)
        elif decision == "limited":
            self.metrics.rate_limited(reason)  # the policy's limit's name
        self._outcome(exchange, message, decision, reason)

    async def _post(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | Outgoing:
        rid = exchange.request_id
        headers = request.headers
        content_type = headers.get("Content-Type")
        if content_type != JSON:
            if not json_media(content_type):
                # MCP bodies are JSON: anything else is the client's mistake, said here (not an upstream failure).
                self._refused(exchange, "invalid", "content type")
                return rpc_error(415, INVALID_REQUEST, "Content-Type must be application/json", request_id=rid)
            exchange.upstream_headers["Content-Type"] = JSON  # what goes upstream is JSON the proxy serialised
        limit = self.config.max_body_bytes
        try:
            if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
                body = await read_body(request, limit)
            else:
                async with asyncio.timeout(self.config.body_timeout):  # a client that trickles holds nothing long
                    body = await read_body(request, limit)
        except BodyTooLarge:
            self._refused(exchange, "invalid", "body too large")
            return rpc_error(413, INVALID_REQUEST, f"request body exceeds {limit} bytes", request_id=rid)
        except TimeoutError:
            self.metrics.limit("body_timeout")
            self._refused(exchange, "invalid", "body timeout")
            refusal = rpc_error(408, INVALID_REQUEST, f"request body not received within "
                                f"{self.config.body_timeout:g} s", request_id=rid)
            refusal.force_close()
            return refusal
        try:
            frame = parse_body(
                body,
                max_depth=self.config.max_depth,
                max_batch=self.config.max_batch,
                protocol_version=exchange.protocol_version,
            )
        except FrameError as exc:
            self._refused(exchange, "invalid", exc.message)
            return rpc_error(exc.http_status, exc.code, exc.message, msg_id=exc.msg_id, request_id=rid)
        if "Mcp-Method" in headers or "Mcp-Name" in headers:  # 2026-07-28 routing headers: they must tell the truth
            problem = header_problem(headers.getall("Mcp-Method", []), headers.getall("Mcp-Name", []), frame)
            if problem is not None:
                self._refused(exchange, "invalid", "header mismatch")
                msg_id = None if frame.is_batch else frame.messages[0].get("id")
                return rpc_error(400, HEADER_MISMATCH, problem, msg_id=msg_id, request_id=rid)

        answers: list[Message] = list(frame.answers)
        last_answer: Answer | None = None
        forward: list[Message] = []
        asked: dict[tuple[str, Any], str] = {}
        self.pipeline.pin(exchange)  # every message of this request is decided by the policy in force now
        for message in frame.messages:
            try:
                outcome = await self.pipeline.guard(exchange, message)
            except Exception as exc:
                # A guard that fails must not let the message through: answer it, forward nothing of this request.
                log_failure(log, "guard failed", exc, rid)
                self.metrics.message(message.get("method", "response"), "error")
                self._outcome(exchange, message, "error", "guard failed")
                return rpc_error(500, INTERNAL_ERROR, "internal error", msg_id=message.get("id"), request_id=rid)
            if isinstance(outcome, Conversation):  # the guard must ask the client first, on this request's stream
                if not frame.is_batch:
                    return await converse(self, request, exchange, message, outcome)
                outcome = outcome.alone
            self._count(exchange, message, outcome)
            if isinstance(outcome, Answer):
                last_answer = outcome
                if outcome.response is not None:
                    answers.append(outcome.response)
                continue
            forward.append(outcome)
            if is_request(outcome):
                asked.setdefault(id_key(outcome["id"]), outcome["method"])

        if not forward:
            return self._answer_locally(frame.is_batch, answers, last_answer, rid)
        payload = dumps_kept(forward if frame.is_batch else forward[0])  # held as long as the upstream answers
        lists_asked = any(method in LISTS for method in asked.values())
        return Outgoing(payload, ServerMessages(self.pipeline, exchange, asked), answers, frame.is_batch, lists_asked)

    @staticmethod
    def _answer_locally(is_batch: bool, answers: list[Message], last: Answer | None, rid: str) -> web.Response:
        headers = {"X-Request-Id": rid}
        if not answers:
            return web.Response(status=202, headers=headers)
        if is_batch:
            return web.Response(body=dumps(answers), content_type=JSON, headers=headers)
        status = last.http_status if last is not None else 200
        headers.update(last.headers if last is not None else ())
        return web.Response(status=status, body=dumps(answers[0]), content_type=JSON, headers=headers)

    async def _forward(self, request: web.Request, exchange: Exchange, out: Outgoing) -> web.StreamResponse:
        started = time.perf_counter()
        session = self.stream_session if long_lived(request) else self.session
        messages, answers = out.messages, out.answers
        if request.method == "POST" and (opened := self.openings.pending(exchange.session_id)) is not None:
            await self.openings.after(exchange.session_id, opened)  # the session's GET reaches the upstream first
        try:
            if (stamp := self.pipeline.stamp) is not None:
                await stamp(exchange)  # the caller's identity, once every guard has settled what it states
            upstream = await session.request(request.method, data=out.payload, headers=exchange.upstream_headers,
                                             head_timeout=self.config.response_timeout)
        except StampFailed:
            return rpc_error(502, INTERNAL_ERROR, "the caller's identity for the upstream is unavailable",
                             request_id=exchange.request_id)
        except HeaderRefused:  # a header the upstream request cannot carry (CR, LF or NUL; a name no HTTP token)
            return rpc_error(400, INVALID_REQUEST, "a request header cannot be forwarded",
                             request_id=exchange.request_id)
        except HeadTimeout:
            log.warning("upstream sent no response headers within %g s", self.config.response_timeout,
                        extra={"request_id": exchange.request_id})
            self.metrics.upstream_errors.labels("timeout").inc()
            return rpc_error(504, UPSTREAM_TIMEOUT, f"upstream did not answer within "
                             f"{self.config.response_timeout:g} s", request_id=exchange.request_id)
        except (TimeoutError, UpstreamBroken, OSError) as exc:
            log.warning("upstream unreachable: %s", type(exc).__name__, extra={"request_id": exchange.request_id})
            self.metrics.upstream_errors.labels("connect").inc()
            return rpc_error(502, INTERNAL_ERROR, "upstream unavailable", request_id=exchange.request_id)
        finally:
            self.openings.opened(exchange.session_id, out.opening)  # a GET's head arrived (or never will)
        self.metrics.upstream_duration.observe(time.perf_counter() - started)
        exchange.upstream_status = upstream.status
        exchange.upstream_headers = CIMultiDict()  # sent; nothing reads them again, and a stream lasts hours
        out.payload = None  # sent, and an open stream's frames hold `out` for hours

        headers = client_response_headers(upstream.headers)
        headers["X-Request-Id"] = exchange.request_id
        finished = False
        try:
            await self.pipeline.on_response(exchange, upstream.status, headers)
        except StoreUnavailable:
            upstream.close()
            opened = headers.get("Mcp-Session-Id")
            if opened and opened != exchange.session_id:
                await self._end_session(exchange, opened)
            return rpc_error(503, INTERNAL_ERROR, "session store unavailable, retry shortly",
                             request_id=exchange.request_id, headers={"Retry-After": "1"})
        messages.session = headers.get("Mcp-Session-Id") or exchange.session_id
        media = upstream.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        encoding = upstream.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            if request.method == "DELETE" or (upstream.status >= 300 and not out.lists_asked and not answers):
                # No list travels here, and clients rely on the upstream's own error bodies (a 2026-07-28 client
                # falls back to initialize on them): relayed as they are. (With the guards' own answers to merge
                # into a batch's reply, the body is read like any other.)
                response = web.Response(status=upstream.status, body=await self._read_whole(upstream),
                                        headers=headers)
            elif awaits_nothing(request.method, upstream.status, messages.asked, answers):
                upstream.content.read_nowait()  # what came with the head: the connection is reused if that was all
                headers.popall("Content-Type", None)
                response = web.Response(status=upstream.status, headers=headers)
            elif media == "text/event-stream" and encoding == "identity":
                response = web.StreamResponse(status=upstream.status, headers=headers)
                del headers  # the response copied them; this frame lives as long as the stream
                await self._stream(request, response, upstream, messages, answers)
            else:
                response = await self._whole(upstream, headers, messages, answers, out.is_batch, media, encoding)
            finished = True
            return response
        except Unreadable as exc:
            return self._unreadable(exchange, exc)
        except UpstreamStalled:
            log.warning("upstream body stalled for %g s", self.config.read_timeout,
                        extra={"request_id": exchange.request_id})
            self.metrics.upstream_errors.labels("stall").inc()
            return rpc_error(504, UPSTREAM_TIMEOUT, f"upstream stopped sending its answer for "
                             f"{self.config.read_timeout:g} s", request_id=exchange.request_id)
        except (TimeoutError, UpstreamBroken, OSError) as exc:
            # The upstream failed after it had started answering.
            log.warning("upstream failed mid-response: %s", type(exc).__name__,
                        extra={"request_id": exchange.request_id})
            self.metrics.upstream_errors.labels("response").inc()
            return rpc_error(502, INTERNAL_ERROR, "upstream failed", request_id=exchange.request_id)
        finally:
            if finished and upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()

    async def _whole(
        self,
        upstream: Response,
        headers: Any,
        messages: ServerMessages,
        answers: list[Message],
        is_batch: bool | None,
        media: str,
        encoding: str,
    ) -> web.Response:
        body = await self._read_whole(upstream)
        status = upstream.status
        if not body:
            if status == 202 and answers:
                # The upstream accepted the notifications; the client still needs the guards' answers.
                status, body = 200, dumps(answers if is_batch else answers[0])
                headers["Content-Type"] = JSON
            return web.Response(status=status, body=body, headers=headers)
        if encoding != "identity":
            raise Unreadable("compressed body")  # it was asked for identity: compressing anyway is not trusted
        if media != JSON:
            raise Unreadable("content type")
        # Local answers exist only for batches: they join the upstream's reply, whatever its status.
        relayed = relay_json(body, messages, answers)
        if messages.exchange.tasks is not None:
            await messages.settle()
        return web.Response(status=status, body=relayed, headers=headers)

    def _unreadable(self, exchange: Exchange, exc: Exception) -> web.Response:
        """An answer where a list may travel that the proxy cannot check: refused, never relayed raw."""
        log.warning("upstream answer refused: %s", exc, extra={"request_id": exchange.request_id})
        self.metrics.upstream_errors.labels("unreadable").inc()
        self._outcome(exchange, {"method": "response"}, "refuse", "unreadable answer")
        return rpc_error(502, INTERNAL_ERROR, "upstream answer not understood", request_id=exchange.request_id)

    async def _read_whole(self, upstream: Response) -> bytes:
        """The whole body, each wait bounded: an upstream that stops sending mid-body is given up on. What has
        already arrived is taken without a timer (a small answer usually comes with its headers)."""
        chunks = []
        content = upstream.content
        while True:
            if chunk := content.read_nowait():
                chunks.append(chunk)
                continue
            if content.at_eof():
                return b"".join(chunks)
            try:
                async with asyncio.timeout(self.config.read_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise UpstreamStalled from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        upstream: Response,
        messages: ServerMessages,
        answers: list[Message],
    ) -> None:
        await response.prepare(request)
        self.open_streams.add(upstream)
        self.metrics.open_streams.inc()
        cut = False
        try:
            for answer in answers:
                await response.write(sse_event(answer))
            await relay_sse(upstream, response, messages, self.event_ids)
        except Unreadable as exc:
            # The status line has gone out: the refusal is the end of the stream, before the event.
            self._unreadable(messages.exchange, exc)
        except ConnectionResetError:
            pass  # the client left; the caller closes the upstream response
        except UpstreamBroken:
            cut = True  # the upstream broke the stream off (or shutdown closed it)
        finally:
            self.open_streams.discard(upstream)
            self.metrics.open_streams.dec()
        if cut:
            await self._cut(request, response, messages)

    async def _cut(self, request: web.Request, response: web.StreamResponse, messages: ServerMessages) -> None:
        """The upstream's stream ended mid-way: the client must not mistake that for a finished stream. Requests
        of this POST still unanswered get an error; a stream with none waiting is cut off in turn."""
        self.metrics.upstream_errors.labels("cut").inc()
        log.warning("upstream stream cut off", extra={"request_id": messages.exchange.request_id})
        awaited = [msg_id for _, msg_id in messages.asked]  # answered ones were taken out as they came
        messages.asked.clear()
        try:
            if awaited:
                data = {"requestId": messages.exchange.request_id}
                await response.write(b"".join(sse_event(error(msg_id, INTERNAL_ERROR, CUT_SHORT, data))
                                              for msg_id in awaited))
            elif request.transport is not None:
                request.transport.close()  # no clean end of stream: the client sees it broken, as it was
        except ConnectionResetError:
            pass

    async def probe(self, exchange: Exchange, message: Message) -> Message | None:
        """Send one request upstream and return its response message (JSON or SSE), or None if there is none.
        Used for a write's dry run: the upstream's own preview, made with the caller's server-side headers."""
        up = None
        try:
            # Bounded as a whole: a dry run that never ends must not hold the preview (or the caller) forever.
            async with asyncio.timeout(self.config.response_timeout):
                up = await self.session.request("POST", data=dumps(message), headers=exchange.upstream_headers)
                body = await up.read()
            if not up.headers.get("Content-Type", "").startswith("text/event-stream"):
                found = orjson.loads(body) if body else None
                return found if isinstance(found, dict) else None
        except (UpstreamBroken, ValueError, TimeoutError, OSError, orjson.JSONDecodeError):
            return None
        finally:
            if up is not None:
                up.release()  # reused when it was read whole, else closed
        for event in body.removeprefix(BOM).replace(b"\r\n", b"\n").split(b"\n\n"):
            data = event_data(event)
            try:
                found = orjson.loads(data) if data else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(found, dict) and found.get("id") == message.get("id") and "method" not in found:
                return found
        return None

    async def close_streams(self) -> None:
        """On shutdown: end every open upstream stream so the handlers relaying them return at once."""
        for upstream in list(self.open_streams):
            upstream.close()
