"""Incremental Server-Sent Events framing, for rewriting a stream event by event as it arrives.

The splitter hands back each complete event as the exact bytes it arrived as (terminator included). `rebuild` makes
the event the client gets: its data replaced by what the proxy checked, its id by the sealed one, and every other
line (`event:`, `retry:`, comments, fields it does not know) kept in place.

The splitter reads the stream as a client does: one UTF-8 byte-order mark at the very start of the stream is
dropped (the SSE spec tells clients to ignore it, and they do), so the first event is the one the client will read.
Left in place, it would hide the first line's field name (`\ufeffdata` is no `data` field to the proxy) while the
client reads that line as data: an answer relayed unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# An event ends at a blank line; the SSE spec allows CRLF, LF and CR line endings, mixed.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE = re.compile(rb"\r\n|\r|\n")
BOM = b"\xef\xbb\xbf"  # U+FEFF in UTF-8


class EventSplitter:
    """Feed it chunks; it yields complete events. What is left at the end of the stream is returned by `rest`."""

    __slots__ = ("_buf", "_max", "_scan_from", "_started")  # one per open stream

    def __init__(self, max_event_bytes: int) -> None:
        self._buf = bytearray()
        self._scan_from = 0
        self._max = max_event_bytes
        self._started = False  # whether the stream's first bytes (and a BOM among them) have been seen

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        if not self._started:
            if len(self._buf) < len(BOM) and BOM.startswith(self._buf):
                return  # maybe the start of a BOM split across chunks: wait for the rest
            if self._buf.startswith(BOM):
                del self._buf[: len(BOM)]
            self._started = True
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
            if end == len(self._buf):
                self._buf = bytearray()  # whole events, nothing left: drop the grown buffer (an idle stream keeps it)
            else:
                del self._buf[:end]
            self._scan_from = 0
            yield event

    def finish(self) -> bytes | None:
        """At the end of the stream: the event still held back when it is complete (it ended in a lone CR, which
        might have been half a CRLF), else None (an unfinished event, which clients drop too)."""
        rest = self.rest()
        match = _EVENT_END.search(rest)
        return rest if match is not None and match.end() == len(rest) else None

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


def _field(line: bytes) -> tuple[bytes, bytes]:
    """(name, value) of one line, as the SSE spec parses it: one optional space after the colon is dropped."""
    name, colon, value = line.partition(b":")
    if colon and value.startswith(b" "):
        value = value[1:]
    return name, value


def event_id(event: bytes) -> bytes | None:
    """The id the event sets (the last `id` field wins; one holding NUL is ignored, as clients do), or None."""
    found = None
    for line in _LINE.split(event):
        if line.startswith(b"id"):
            name, value = _field(line)
            if name == b"id" and b"\0" not in value:
                found = value
    return found


def rebuild(event: bytes, data: bytes | None, new_id: bytes | None) -> bytes:
    """The event with its data lines replaced by one `data:` line holding `data` (which has no newline; None: the
    event has none) and its id lines by one holding `new_id` where the last one was (None: none), every other line
    in place, line ends as the event's first one (LF when it has none)."""
    end = _LINE.search(event)
    eol = end.group() if end is not None else b"\n"
    out: list[bytes] = []
    id_at = None
    for line in _LINE.split(event):
        if not line:
            continue
        name = b"" if line.startswith(b":") else _field(line)[0]
        if name == b"data":
            if data is not None:
                out.append(b"data: " + data)
                data = None
        elif name == b"id":
            id_at = len(out)
        else:
            out.append(line)
    if new_id is not None:
        out.insert(len(out) if id_at is None else id_at, b"id: " + new_id)
    return eol.join(out) + eol + eol
