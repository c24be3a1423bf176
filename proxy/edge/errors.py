"""The last line of defence at the edge: no exception reaches aiohttp's default 500 page, and no log line carries
request data.

- `catch_all` (around every route's handler: build_app wraps each as it is added, and a test holds that none is
  left out) answers any exception a step did not handle with a JSON-RPC 500 and logs only where it happened
  (exception type, file and line): an exception's message may quote a header, an argument or a token, so it is
  never logged. A wrapper rather than a middleware: aiohttp runs middlewares as two more coroutine layers per
  request.
- `scrub_aiohttp_logs` does the same for aiohttp's own loggers: a malformed request line or header (a token with a
  control character, a header past the size limit) makes aiohttp log an error whose text quotes the raw bytes.
- `answer_parser_errors` does it for aiohttp's own answer to such a request: aiohttp writes the parser's message
  as a text/plain 400, and that message quotes the start of the offending bytes (an `Authorization` header's token,
  say) back to whoever is on the connection, and to every log and proxy on the way. Its answer is a JSON-RPC error
  like every other refusal, built from the status alone.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any

from aiohttp import web, web_protocol

from proxy.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, rpc_error

log = logging.getLogger("scopegate.edge")

REQUEST_ID = web.RequestKey("scopegate.request_id", str)  # the request id the forwarder chose
_AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal", "aiohttp.client")


def where(exc: BaseException) -> str:
    """`Type at file:line` of the innermost frame: enough to find the bug, nothing from the request."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {os.path.basename(last.filename)}:{last.lineno}"


def log_failure(logger: logging.Logger, what: str, exc: BaseException, request_id: str | None) -> None:
    logger.error("%s: %s", what, where(exc), extra={"request_id": request_id})


def catch_all(handler: web.Handler) -> web.Handler:
    """`handler`, with every exception it does not handle answered as a JSON-RPC 500."""

    async def caught(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise  # aiohttp's own answers (404, 405): no request data in them
        except Exception as exc:  # this is the one place every unexpected failure ends
            request_id = request.get(REQUEST_ID)
            log_failure(log, "request failed", exc, request_id)
            if request.writer is not None and request.writer.output_size > 0:
                # A stream had started: no second response can be sent; end the connection quietly.
                raise ConnectionResetError("response already started") from None
            return rpc_error(500, INTERNAL_ERROR, "internal error", request_id=request_id or "")

    caught.catches_all = True  # type: ignore[attr-defined]  # what the test that no route is left out looks for
    return caught


class _Scrub(logging.Filter):
    """Keeps the first words of an aiohttp log message and the exception's type; drops its arguments and text."""

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg).split("%", 1)[0].strip().rstrip(":") or "aiohttp"
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = f"{template} ({type(exc).__name__})" if exc is not None else template
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


_SCRUB = _Scrub()


def scrub_aiohttp_logs() -> None:
    for name in _AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _SCRUB not in logger.filters:
            logger.addFilter(_SCRUB)


_AIOHTTP_HANDLE_ERROR = web_protocol.RequestHandler.handle_error


def parser_error_answer(status: int) -> web.Response:
    """aiohttp's answer to a request it could not parse (or a failure outside every handler), from the status only:
    nothing of the request's bytes is in it."""
    if status >= 500:
        answer = rpc_error(status, INTERNAL_ERROR, "internal error" if status != 504 else "request timed out")
    elif status == 413:
        answer = rpc_error(status, INVALID_REQUEST, "request too large")
    elif status == 431:
        answer = rpc_error(status, INVALID_REQUEST, "request header fields too large")
    else:
        answer = rpc_error(status, INVALID_REQUEST, "malformed HTTP request")
    answer.force_close()  # as aiohttp does: the connection cannot be trusted to be in step any more
    return answer


def _handle_error(self: web_protocol.RequestHandler, request: Any, status: int = 500, exc: BaseException | None = None,
                  message: str | None = None) -> web.StreamResponse:
    # aiohttp's own first: it logs (scrubbed, above) and raises when a response has already started. Its text
    # answer is dropped unread; `message` (the parser's words, quoting the request) is never used.
    _AIOHTTP_HANDLE_ERROR(self, request, status, exc, None)
    return parser_error_answer(status)


def answer_parser_errors() -> None:
    """Make aiohttp's own error answers JSON-RPC errors that echo nothing (process-wide, as its loggers are: aiohttp
    builds them in its connection handler, outside any application, with no setting to choose another class)."""
    web_protocol.RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
