"""The activity view: the audit trail read back, searched, each record with its chain status, and the whole trail
verified with a public key. Pure functions over the records; reading the sink is `read`.

A record's status, walking its chain from its genesis: `sealed` (its hash matches its content, it links to the one
before it, and a later seal (checkpoint) whose signature verifies with the key covers it), `unsealed` (whole and
linked, but no seal after it yet: provable only once one comes), `broken` (edited, out of order, not linked, or
after a break in its chain: what follows a break proves nothing). Without a key, seals count unsigned, and the
answer says so. `verify` (ops/trail.py) is the whole-trail check `scopegate audit verify` runs.
"""

from __future__ import annotations

import base64
import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proxy.ops.sinks import TrailUnreadable, read_file, read_stream
from proxy.ops.trail import SEALS, record_hash

MAX_RESULTS = 500


async def read(sink: str, redis_url: str | None) -> list[Any]:
    """Every record of the configured trail (`file:<path>` or `redis`); TrailUnreadable when it cannot be read
    (stdout cannot be read back)."""
    if sink.startswith("file:"):
        return read_file(sink[5:])
    if sink == "redis" and redis_url:
        return await read_stream(redis_url)
    raise TrailUnreadable("the audit trail goes to stdout here: set SCOPEGATE_AUDIT_SINK to file:<path> or redis "
                          "to search it")


def _signed(record: dict[str, Any], key: Ed25519PublicKey | None) -> bool:
    if key is None:
        return True
    try:
        key.verify(base64.b64decode(str(record.get("signature")), validate=True), str(record.get("hash")).encode())
    except (InvalidSignature, ValueError):
        return False
    return True


def statuses(records: Sequence[Any], key: Ed25519PublicKey | None) -> list[str]:
    """Pure: each record's status (see the module's words), in trail order."""
    out = ["broken"] * len(records)
    heads: dict[str, tuple[int, str]] = {}  # chain -> (seq, hash) of its newest whole record
    broken: set[str] = set()
    waiting: dict[str, list[int]] = {}  # chain -> positions of whole records not yet sealed
    for position, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(chain := record.get("chain"), str):
            continue
        if chain in broken:
            continue
        seq = record.get("seq")
        whole = record.get("hash") == record_hash(record)
        if chain not in heads:
            whole = whole and record.get("type") == "genesis" and seq == 1 and _signed(record, key)
        else:
            last_seq, last_hash = heads[chain]
            whole = whole and seq == last_seq + 1 and record.get("prev") == last_hash
        if not whole:
            broken.add(chain)
            waiting.pop(chain, None)
            continue
        heads[chain] = (seq, record["hash"])  # type: ignore[assignment]
        if record.get("type") in SEALS:
            if not _signed(record, key):
                broken.add(chain)
                waiting.pop(chain, None)
                continue
            for earlier in waiting.pop(chain, []):
                out[earlier] = "sealed"
            out[position] = "sealed"
        else:
            out[position] = "unsealed"
            waiting.setdefault(chain, []).append(position)
    return out


@dataclass(frozen=True)
class Search:
    subject: str = ""
    credential: str = ""
    tool: str = ""  # the target: a tool, prompt or resource
    workspace: str = ""
    decision: str = ""
    since: float | None = None  # Unix time
    until: float | None = None
    limit: int = 100

    def matches(self, record: dict[str, Any]) -> bool:
        if record.get("type") in SEALS:
            return False
        for wanted, field in ((self.subject, "subject"), (self.credential, "credential_id"), (self.tool, "target"),
                              (self.workspace, "workspace"), (self.decision, "decision")):
            if wanted and record.get(field) != wanted:
                return False
        if self.since is not None or self.until is not None:
            at = when(record.get("time"))
            if at is None or (self.since is not None and at < self.since) or \
                    (self.until is not None and at > self.until):
                return False
        return True


def when(stamp: Any) -> float | None:
    """A record's `time` (2026-01-02T03:04:05.678Z) as Unix time; None when it is not one."""
    if not isinstance(stamp, str):
        return None
    try:
        whole, _, millis = stamp.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000
    except (ValueError, OverflowError):
        return None


def parse_time(text: str) -> float | None:
    """`2026-01-02`, `2026-01-02T03:04` or `2026-01-02T03:04:05` (UTC) as Unix time; ValueError otherwise."""
    text = text.strip().rstrip("Z")
    for form in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text, form)))
        except ValueError:
            continue
    raise ValueError(f"expected a time such as 2026-01-02 or 2026-01-02T03:04 (UTC), got {text[:40]!r}")


def search(records: Sequence[Any], query: Search, key: Ed25519PublicKey | None) -> list[dict[str, Any]]:
    """Pure: the newest `limit` records that match, newest first, each with its status."""
    marks = statuses(records, key)
    found = [{"record": r, "status": s} for r, s in zip(records, marks, strict=True)
             if isinstance(r, dict) and query.matches(r)]
    return list(reversed(found[-max(1, min(query.limit, MAX_RESULTS)):]))
