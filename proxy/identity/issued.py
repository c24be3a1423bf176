"""Credentials made or rotated at run time (the admin API, the console): kept in the durable state, layered over
the registry file by id (`pats.Registry` reads them), never written into the file, which stays what Git holds.

A record is stored whole (hash only, never a token) under RUNTIME_KEY + id, and its id in RUNTIME_INDEX. A
rotation stores the file's record (or the run-time one) again with a new hash and the replaced one as
`previous_hash`, valid until `previous_until`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pydantic import ValidationError

from proxy.durable import Durable
from proxy.identity.pats import RUNTIME_INDEX, RUNTIME_KEY, Record, new_token, token_hash

KEEP_AFTER_EXPIRY = 7 * 86400  # an expired run-time credential is still listed (as expired) this long


def _ttl(record: Record) -> int | None:
    if record.expires is None:
        return None
    return max(3600, int(record.expires.timestamp() - time.time()) + KEEP_AFTER_EXPIRY)


async def save(state: Durable, record: Record) -> None:
    await state.set(RUNTIME_KEY + record.id, record.model_dump_json(exclude_none=True), ttl=_ttl(record))
    await state.add(RUNTIME_INDEX, record.id)


async def find(state: Durable, cred_id: str) -> Record | None:
    raw = await state.get(RUNTIME_KEY + cred_id)
    if raw is None:
        return None
    try:
        return Record.model_validate_json(raw)
    except ValidationError:
        return None


async def every(state: Durable) -> list[Record]:
    """Every run-time record still kept; ids whose record is gone (expired long ago) leave the index."""
    ids = await state.members(RUNTIME_INDEX)
    found = []
    for cred_id, raw in zip(ids, await state.get_many([RUNTIME_KEY + i for i in ids]), strict=True):
        if raw is None:
            await state.remove(RUNTIME_INDEX, cred_id)
            continue
        try:
            found.append(Record.model_validate_json(raw))
        except ValidationError:
            continue
    return found


def rotated(record: Record, grace_seconds: int, now: float | None = None) -> tuple[Record, str]:
    """Pure apart from the new secret: the record with a new secret, and that secret's token (shown once). The
    replaced secret works `grace_seconds` more (0: not at all)."""
    _, token = new_token(record.kind, record.id)
    moment = now if now is not None else time.time()
    until = datetime.fromtimestamp(int(moment) + grace_seconds, UTC) if grace_seconds > 0 else None
    return record.model_copy(update={"hash": token_hash(token),
                                     "previous_hash": record.hash if until is not None else None,
                                     "previous_until": until}), token
