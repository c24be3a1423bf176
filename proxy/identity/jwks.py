"""Verification keys for JWT issuers: a static key, or a JWKS fetched with aiohttp and cached.

JWKS rules: the set is fetched once at first use and again when older than its TTL; a token with an unknown `kid`
triggers at most one refetch per interval (an attacker minting random kids cannot make us hammer the issuer); one
fetch in flight at a time. Symmetric keys in a JWKS are ignored: HS* is never accepted for keys from a URL.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import aiohttp
import jwt
import orjson

MAX_JWKS_BYTES = 1 << 20


class KeyError_(Exception):
    """No usable key for this token (unknown kid, or the issuer's key set could not be had)."""


class KeySource(Protocol):
    async def key(self, kid: str | None, alg: str) -> Any: ...


class StaticKey:
    """A PEM public key from a file (or, for development only, an HS256 secret)."""

    def __init__(self, key: Any) -> None:
        self._key = key

    @classmethod
    def from_pem_file(cls, path: str) -> StaticKey:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        with open(path, "rb") as handle:
            return cls(load_pem_public_key(handle.read()))

    async def key(self, kid: str | None, alg: str) -> Any:
        return self._key


class JwksKeys:
    def __init__(
        self, session: aiohttp.ClientSession, url: str, *, ttl: float = 300.0, refetch_interval: float = 30.0
    ) -> None:
        self.session = session
        self.url = url
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=3)
        async with self.session.get(self.url, timeout=timeout, headers={"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise KeyError_(f"JWKS answered {resp.status}")
            body = await resp.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise KeyError_("JWKS larger than 1 MiB")
        keys: dict[str | None, jwt.PyJWK] = {}
        for item in orjson.loads(body).get("keys", []):
            if not isinstance(item, dict) or item.get("kty") == "oct":
                continue
            try:
                key = jwt.PyJWK.from_dict(item)
            except jwt.PyJWTError:
                continue  # a key we cannot use is skipped, not fatal
            keys[item.get("kid")] = key
        self._keys = keys

    async def _refresh(self, kid: str | None) -> None:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if kid in self._keys and age < self.ttl:
                return  # another task refreshed while we waited
            if age < self.refetch_interval and self._fetched_at != float("-inf"):
                return  # rate limit: an unknown kid does not cause a fetch per request
            self._fetched_at = time.monotonic()
            try:
                await self._fetch()
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError) as exc:
                raise KeyError_(f"JWKS fetch failed: {type(exc).__name__}") from None

    async def key(self, kid: str | None, alg: str) -> Any:
        if kid not in self._keys or time.monotonic() - self._fetched_at >= self.ttl:
            try:
                await self._refresh(kid)
            except KeyError_:
                if kid not in self._keys:
                    raise
                # The issuer is unreachable but the key is known: keep using it until the issuer answers again.
        found = self._keys.get(kid)
        if found is None:
            raise KeyError_("unknown kid")
        return found
