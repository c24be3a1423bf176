"""SSE event ids sealed to the caller and the session, so a stream can be resumed only by whoever it was sent to.

The upstream's event ids are its own (often a global counter, and its event store may be global too): a client
that presents any of them as `Last-Event-ID` could have the upstream replay another caller's stream. So every `id:`
the proxy relays is `<upstream id, base64url>.<tag>`, the tag an HMAC over (credential, session, upstream id);
`Last-Event-ID` is unwrapped before it goes upstream, and one this proxy did not mint for this credential and this
session is refused, never forwarded.

The key: `SCOPEGATE_STREAM_KEY` when set (every replica the same); else one random key created once in the shared
store (Redis, `SET NX`), so replicas behind one Redis accept each other's ids; without Redis, a per-process key
(one replica: ids die with the process, and a client then starts a new stream).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os

import orjson

from proxy.exchange import Exchange
from proxy.guards.session_binding import owner
from proxy.store import Store, StoreUnavailable

log = logging.getLogger("scopegate.event_ids")

STORE_KEY = "scopegate:event-id-key"
_TAG_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class EventIds:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, exchange: Exchange, session: str, encoded: str) -> bytes:
        who = owner(exchange.principal) if exchange.principal is not None else ""
        message = orjson.dumps([who, session, encoded])  # unambiguous: no value can shift into another's place
        return hmac.digest(self._key, message, hashlib.sha256)[:_TAG_BYTES]

    def seal(self, exchange: Exchange, session: str | None, upstream_id: bytes) -> bytes:
        encoded = _b64(upstream_id)
        return f"{encoded}.{_b64(self._tag(exchange, session or '', encoded))}".encode("ascii")

    def unseal(self, exchange: Exchange, sealed: str) -> str | None:
        """The upstream's id, or None when this proxy did not mint `sealed` for this caller and session."""
        encoded, dot, tag = sealed.rpartition(".")
        if not dot:
            return None
        try:
            given = _unb64(tag)
            upstream_id = _unb64(encoded)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._tag(exchange, exchange.session_id or "", encoded)):
            return None
        return upstream_id.decode("utf-8", "replace")


async def load_key(setting: str | None, store: Store, shared: bool) -> bytes:
    """The sealing key (see the module's docstring for where it comes from)."""
    if setting is not None:
        return hmac.digest(setting.encode(), b"scopegate event ids", hashlib.sha256)
    mine = os.urandom(32).hex()
    if not shared:
        return bytes.fromhex(mine)
    try:
        return bytes.fromhex(await store.get_or_set(STORE_KEY, mine))
    except (StoreUnavailable, ValueError):
        # Fail closed on resumption, not on service: ids this process mints resume on this process only.
        log.warning("event id key not shared: the store did not answer; streams resume on this replica only")
        return bytes.fromhex(mine)
