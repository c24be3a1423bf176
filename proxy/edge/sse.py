"""Incremental Server-Sent Events framing, for rewriting a stream event by event as it arrives.

The splitter hands back each complete event as the exact bytes it arrived as (terminator included), so an event the
proxy does not rewrite leaves byte for byte as it came: `id:`, `event:`, `retry:` and comment lines intact.
Only when a rewriter changes an event's JSON payload is that event rebuilt, keeping every non-data line in place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# An event ends at a blank line; the SSE spec allows CRLF, LF and CR line endings, mixed.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE = re.compile(rb"\r\n|\r|\n")


class EventSplitter:
    """Feed it chunks; it yields complete events. What is left at the end of the stream is returned by `rest`."""

    def __init__(self, max_event_bytes: int) -> None:
        self._buf = bytearray()
        self._scan_from = 0
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        while True:
            # A terminator may straddle chunks: rescan the last two bytes of what was already scanned.
            match = _EVENT_END.search(self._buf, max(self._scan_from - 3, 0))
            if match is None:
                self._scan_from = len(self._buf)
                if len(self._buf) > self._max:
                    raise EventTooLarge(len(self._buf))
                return
            end = match.end()
            # A lone CR at the very end of the buffer may be the first half of a CRLF still in flight.
            if self._buf[end - 1 : end] == b"\r" and end == len(self._buf):
                self._scan_from = len(self._buf)
                return
            event = bytes(self._buf[:end])
            del self._buf[:end]
            self._scan_from = 0
            yield event

    def rest(self) -> bytes:
        rest, self._buf = bytes(self._buf), bytearray()
        return rest


class EventTooLarge(Exception):
    pass


def event_data(event: bytes) -> bytes | None:
    """The event's data (data lines joined with LF, as the SSE spec says), or None when it has no data line."""
    parts: list[bytes] = []
    for line in _LINE.split(event):
        if line.startswith(b"data"):
            if line == b"data":
                parts.append(b"")
            elif line[4:5] == b":":
                value = line[5:]
                parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def replace_data(event: bytes, data: bytes) -> bytes:
    """The same event with its data lines replaced by one `data:` line holding `data` (which has no newline)."""
    out: list[bytes] = []
    placed = False
    for line in _LINE.split(event):
        if line == b"data" or line.startswith(b"data:"):
            if not placed:
                out.append(b"data: " + data)
                placed = True
        elif line:
            out.append(line)
    return b"\n".join(out) + b"\n\n"
