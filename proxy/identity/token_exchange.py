"""RFC 8693 token exchange: a token of the upstream's own identity provider for the caller, in its `Authorization`.

Some upstreams trust only their own provider's tokens. With the policy's `upstream_identity.token_exchange:`
scopegate presents the caller's assertion (a subject token of type `urn:ietf:params:oauth:token-type:jwt`, signed
with the keys of /.well-known/jwks.json, `aud` the provider) at the provider's token endpoint, asks for an access
token for the configured `audience` / `resource` and the caller's effective scopes, and sends what it gets as
`Authorization: Bearer …` upstream (never the client's own token). The provider must trust scopegate's JWKS for
subject tokens; what it issues, and for whom, is its decision.

One exchange per person and scope set for the token's lifetime (`expires_in`; renewed when a tenth of it, at most
30 s, is left); concurrent requests of the same person wait for the one exchange under way. A provider that refuses,
answers nonsense or does not answer in time fails the request (502: nothing is forwarded without the identity the
policy asks for), and the reason is logged, never a token.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from proxy.memo import remember

if TYPE_CHECKING:
    from proxy.identity.assertion import Assertions
    from proxy.identity.principal import Principal

log = logging.getLogger("scopegate.identity")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token: all a Bearer header value may carry
_MEMO = 4096
TIMEOUT = 10.0
SUBJECT_TTL = 60  # seconds the subject token lives: it is used at once


class ExchangeFailed(Exception):
    """No token from the provider; the message says why (for the log: it holds no token)."""


@dataclass(frozen=True)
class Settings:
    token_endpoint: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    audience: str | None = None
    resource: str | None = None
    send_scopes: bool = True
    subject_audience: str | None = None


def form(settings: Settings, subject_token: str, scopes: frozenset[str]) -> dict[str, str]:
    """The token request's parameters (RFC 8693 §2.1). Pure."""
    body = {"grant_type": GRANT_TYPE, "subject_token": subject_token, "subject_token_type": JWT_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE}
    if settings.audience:
        body["audience"] = settings.audience
    if settings.resource:
        body["resource"] = settings.resource
    if settings.send_scopes and scopes:
        body["scope"] = " ".join(sorted(scopes))
    if settings.client_secret is None:
        body["client_id"] = settings.client_id  # a public client names itself in the body
    return body


def issued(answer: Any) -> tuple[str, float]:
    """The access token and its lifetime in seconds from a token response (RFC 8693 §2.2.1), or ExchangeFailed.
    Pure."""
    if not isinstance(answer, dict):
        raise ExchangeFailed("the token response is not a JSON object")
    token = answer.get("access_token")
    if not isinstance(token, str) or _TOKEN.fullmatch(token) is None or len(token) > 8192:
        raise ExchangeFailed("the token response has no usable access_token")
    kind = answer.get("token_type")
    if not isinstance(kind, str) or kind.lower() not in ("bearer", "n_a"):
        raise ExchangeFailed(f"token_type {str(kind)[:20]!r} is not Bearer")
    lifetime = answer.get("expires_in", 60)
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        raise ExchangeFailed("expires_in is not a positive number")
    return token, float(lifetime)


@dataclass
class TokenExchanger:
    settings: Settings
    assertions: Assertions
    http: aiohttp.ClientSession | None = None  # attached when the app starts
    clock: Callable[[], float] = time.time
    _tokens: dict[tuple[str, frozenset[str]], tuple[str, float]] = field(default_factory=dict, repr=False)
    _pending: dict[tuple[str, frozenset[str]], asyncio.Future[str]] = field(default_factory=dict, repr=False)

    async def token(self, principal: Principal) -> str:
        """The provider's access token for this person and scope set: cached, or exchanged now."""
        key = (principal.subject, principal.scopes)
        found = self._tokens.get(key)
        if found is not None and found[1] > self.clock():
            return found[0]
        pending = self._pending.get(key)
        if pending is not None:  # an exchange for this person is under way: its answer is this request's
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            token, lifetime = await self._exchange(principal)
            renew = self.clock() + lifetime - min(lifetime / 10, 30.0)
            remember(self._tokens, key, (token, renew), _MEMO)
            future.set_result(token)
            return token
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, ExchangeFailed) else ExchangeFailed(type(exc).__name__))
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[key]

    async def _exchange(self, principal: Principal) -> tuple[str, float]:
        s = self.settings
        if self.http is None:
            raise ExchangeFailed("no HTTP client attached")
        subject = self.assertions.subject_token(principal, s.subject_audience or s.token_endpoint, SUBJECT_TTL)
        headers = {"Accept": "application/json"}
        if s.client_secret is not None:  # RFC 6749 §2.3.1: both form-encoded before they are joined
            pair = f"{quote(s.client_id, safe='')}:{quote(s.client_secret, safe='')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        try:
            async with asyncio.timeout(TIMEOUT), self.http.post(
                    s.token_endpoint, data=form(s, subject, principal.scopes), headers=headers,
                    allow_redirects=False) as response:
                if response.status != 200:
                    raise ExchangeFailed(f"the token endpoint answered {response.status}")
                answer = await response.json(content_type=None)
        except TimeoutError:
            raise ExchangeFailed(f"the token endpoint did not answer within {TIMEOUT:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise ExchangeFailed(f"the token endpoint could not be read ({type(exc).__name__})") from None
        return issued(answer)
