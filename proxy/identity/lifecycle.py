"""The credential tree's live state: who revoked what, when, and what that ended; last use.

Credentials form a tree: person -> credential (PAT, admin key, an OIDC sign-in) -> OAuth grant (one per consent)
-> refresh family and access tokens. Every request checks its token's own node and its parent (`Authenticate`), so a
revoked or expired parent ends its children on every replica from the next request on, whether or not anything was
written for them. Revoking a node also writes each descendant's revocation (`cascaded`), so that what ended can be
seen and stays ended. Records live in the durable state (`proxy/durable.py`): they survive restarts.

A revocation record's key is the one PAT revocations have always used (`scopegate:pat:revoked:<id>`, whatever the
credential's kind); an older record holds "1" and reads as a revocation with no details.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import orjson

from proxy.durable import Durable
from proxy.identity.principal import OAUTH_GRANT_PREFIX

log = logging.getLogger("scopegate.auth")

REVOKED_KEY = "scopegate:pat:revoked:"
LAST_USED_KEY = "scopegate:pat:last_used:"
CHILDREN_KEY = "scopegate:cred:children:"  # a set: the credential ids signed in with this one
MAX_DEPTH = 4  # person -> credential -> grant; deeper is a loop in the index, never followed forever


@dataclass(frozen=True)
class Revocation:
    credential_id: str
    at: int  # Unix time
    by: str  # who: "cli:<login>", "page:<person> (<credential>)", "token endpoint", ...
    reason: str
    cascaded: tuple[str, ...] = ()  # descendants this revocation ended
    parent: str | None = None  # set when this node was ended by its parent's revocation

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, credential_id: str, raw: str) -> Revocation:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):  # "1": written before revocations said who and when
            return cls(credential_id, 0, "unknown", "revoked")
        return cls(credential_id, int(data.get("at", 0)), str(data.get("by", "unknown")),
                   str(data.get("reason", "revoked")), tuple(data.get("cascaded") or ()), data.get("parent"))


class Tree:
    def __init__(self, state: Durable, child_ttl: int | None = None) -> None:
        self.state = state
        self.child_ttl = child_ttl  # how long a descendant's revocation is kept (its longest possible life)

    async def revoked_any(self, credential_ids: Sequence[str]) -> bool:
        """The request path's check: one read (a dict lookup, or one Redis EXISTS for all of them)."""
        return await self.state.any_exists([REVOKED_KEY + c for c in credential_ids])

    async def revocation(self, credential_id: str) -> Revocation | None:
        raw = await self.state.get(REVOKED_KEY + credential_id)
        return Revocation.from_json(credential_id, raw) if raw is not None else None

    async def revocations(self, credential_ids: Iterable[str]) -> dict[str, Revocation]:
        ids = list(dict.fromkeys(credential_ids))
        found = await self.state.get_many([REVOKED_KEY + c for c in ids])
        return {c: Revocation.from_json(c, raw) for c, raw in zip(ids, found, strict=True) if raw is not None}

    async def adopt(self, parent: str, child: str) -> None:
        await self.state.add(CHILDREN_KEY + parent, child)

    async def disown(self, parent: str, child: str) -> None:
        await self.state.remove(CHILDREN_KEY + parent, child)

    async def children(self, credential_id: str) -> list[str]:
        return await self.state.members(CHILDREN_KEY + credential_id)

    async def revoke(self, credential_id: str, *, by: str, reason: str, ttl: int | None = None) -> Revocation:
        """Revoke a node and every descendant. Revoking again keeps the first record (who and when) and still ends
        descendants added since (a grant made in a race with the revocation)."""
        now = int(time.time())
        earlier = await self.revocation(credential_id)
        ended = await self._descendants(credential_id)
        already = await self.revocations(ended)
        fresh = [c for c in ended if c not in already]
        for child in fresh:
            record = Revocation(child, now, by, f"ended with {credential_id}: {reason}", parent=credential_id)
            await self.state.set(REVOKED_KEY + child, record.to_json(), ttl=self.child_ttl)
        if earlier is not None:
            if fresh:
                earlier = Revocation(earlier.credential_id, earlier.at, earlier.by, earlier.reason,
                                     tuple(dict.fromkeys([*earlier.cascaded, *fresh])), earlier.parent)
                await self.state.set(REVOKED_KEY + credential_id, earlier.to_json(), ttl=ttl)
            return earlier
        record = Revocation(credential_id, now, by, reason, tuple(fresh))
        await self.state.set(REVOKED_KEY + credential_id, record.to_json(), ttl=ttl)
        if not await self.state.settle():
            log.warning("revocation of %s is not yet on a replica: it would not survive losing the primary now",
                        credential_id)
        log.info("credential revoked", extra={"credential_id": credential_id, "cascaded": len(fresh)})
        return record

    async def descendants(self, credential_id: str) -> list[str]:
        """What revoking this node would end (a dry run of `revoke`)."""
        return await self._descendants(credential_id)

    async def _descendants(self, credential_id: str) -> list[str]:
        found: list[str] = []
        level = [credential_id]
        for _ in range(MAX_DEPTH):
            following = []
            for node in level:
                for child in await self.children(node):
                    if child != credential_id and child not in found:
                        found.append(child)
                        following.append(child)
            if not following:
                break
            level = following
        return found

    async def stamp(self, credential_id: str) -> None:
        # A credential's stamp as long as it may still be used (one an operator made: kept; a grant: its lifetime).
        ttl = self.child_ttl if credential_id.startswith(OAUTH_GRANT_PREFIX) else None
        await self.state.set(LAST_USED_KEY + credential_id, str(int(time.time())), ttl=ttl)

    async def last_used(self, credential_ids: Iterable[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(credential_ids))
        found = await self.state.get_many([LAST_USED_KEY + c for c in ids])
        return {c: int(raw) for c, raw in zip(ids, found, strict=True) if raw is not None and raw.isdigit()}
