"""Rate limits: the generic cell rate algorithm (GCRA), pure, and the keys it is kept under.

A limit of `rate` requests per `period` with a `burst` lets `burst` requests through at once, then one every
`period / rate` seconds (the emission interval). One number per key is kept: the theoretical arrival time (TAT) of
the next request. A request at `now` is let through when `max(tat, now) + interval - burst * interval <= now`, and
then the TAT moves on by one interval; otherwise it is refused, and may retry when that difference has passed.
Several limits on one request are judged together: if any refuses, none is charged (store.py does it atomically:
one Lua script in Redis, one step in memory).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple


class Check(NamedTuple):
    key: str  # scopegate:rate:<name>:<digest of what it is counted per>
    interval: float  # seconds between requests, on average: period / rate
    burst: int  # requests let through at once


def gcra(tat: float | None, now: float, interval: float, burst: int) -> tuple[float | None, float]:
    """(the new TAT when the request is let through, else None; seconds to wait when refused, else 0). Pure."""
    start = now if tat is None or tat < now else tat
    new_tat = start + interval
    allow_at = new_tat - burst * interval
    if now < allow_at:
        return None, allow_at - now
    return new_tat, 0.0


def key(name: str, parts: tuple[str, ...]) -> str:
    """The store key of one limit for one combination of what it counts by: hashed, so ids and workspace names
    (which clients choose) never shape a key."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
    return f"scopegate:rate:{name}:{digest}"


def parse_rate(value: str) -> tuple[int, float] | None:
    """`N/S`: N requests per S seconds (a burst of N); `0`: off (None). ValueError when it is neither."""
    if value.strip() == "0":
        return None
    count, _, seconds = value.partition("/")
    requests, period = int(count), float(seconds)
    if requests < 1 or not 0 < period <= 86400:
        raise ValueError("expected N/S with N >= 1 and 0 < S <= 86400, or 0 for off")
    return requests, period
