"""Signing a person in through the organisation's OpenID Connect provider (authorization code flow with PKCE).

The provider says who the person is (`subject_claim`) and which groups they are in (`role_claim`); the policy's
`oauth.oidc.roles` maps a claim value to one of its roles, whose ceiling is then everything the person may grant.
Someone whose claims map to no role cannot sign in. The ID token is verified with the provider's JWKS (the same
cached fetcher the JWT verifier uses), its `aud` must be our client id, its `nonce` the one we sent.

Login CSRF: the `state` we send is stored server-side with a hash of a random value we also put in a short-lived
cookie; the callback is accepted only in the browser that started it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import jwt
import orjson

from proxy.identity.jwks import JwksKeys, KeyError_
from proxy.identity.oauth.grants import digest
from proxy.identity.principal import Principal, matches_any
from proxy.store import Store

STATE_TTL = 600
STATE_KEY = "scopegate:oauth-oidc:"  # anyone may start a sign-in: a bounded group of its own, oldest out first
STATE_GROUP = "scopegate:anonymous-oidc"
MAX_STATES = 10_000
TIMEOUT = aiohttp.ClientTimeout(total=5)
COOKIE = "scopegate_oidc"


class SignInFailed(Exception):
    """Why the provider's answer cannot sign anyone in, in one line (never a token)."""


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    name: str
    scopes: tuple[str, ...]
    subject_claim: str
    role_claim: str
    roles: tuple[tuple[str, str], ...]  # (claim value, policy role), first match wins
    client_secret: str | None = field(default=None, repr=False)


def issuer_problem(issuer: str) -> str | None:
    parts = urlsplit(issuer)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        try:
            if parts.hostname == "localhost" or ip_address(parts.hostname).is_loopback:
                return None  # a provider on this machine (development, tests)
        except ValueError:
            pass
    return "the OIDC issuer must be an https:// URL (http only on loopback)"


def role_of(claims: dict[str, Any], settings: OidcSettings) -> str | None:
    """Pure: the policy role the person's claims map to, or None."""
    value = claims.get(settings.role_claim)
    values = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, list) else []
    for claim_value, role in settings.roles:
        if claim_value in values:
            return role
    return None


def person_of(claims: dict[str, Any], settings: OidcSettings) -> str:
    """Pure: who the person is here. `sub` (or another claim) is unique only at its issuer, so it is qualified by it;
    an e-mail address names a person only when the provider says it verified it (anyone may type any address into
    many providers).
    Raises SignInFailed otherwise: a sign-in that cannot say who it is signs nobody in."""
    claim = settings.subject_claim
    if claim == "sub":
        return f"{claims['sub']}@{settings.issuer}"
    value = claims.get(claim)
    if not isinstance(value, str) or not value:
        raise SignInFailed(f"the provider's answer lacks the {claim!r} claim that names people here")
    if claim == "email":
        if claims.get("email_verified") is not True:
            raise SignInFailed("the provider has not verified this e-mail address")
        return value
    # Any other claim (a name, a username) is the provider's to vouch for, often the person's to edit: qualified
    # by the issuer, like `sub`, so it can never take another person's subject (their PATs, grants and quotas).
    return f"{value}@{settings.issuer}"


def held_scopes(offered: tuple[str, ...], ceiling: tuple[str, ...] | None) -> frozenset[str]:
    """Pure: what a person of that role may grant: the offered scopes under the role's ceiling."""
    return frozenset(s for s in offered if ceiling is not None and matches_any(s, ceiling))


class OidcSignIn:
    def __init__(self, settings: OidcSettings, store: Store, redirect_uri: str) -> None:
        self.settings = settings
        self.store = store
        self.redirect_uri = redirect_uri
        self._session: aiohttp.ClientSession | None = None
        self._discovery: dict[str, Any] | None = None
        self._keys: JwksKeys | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _metadata(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with self._http().get(url) as response:
                    if response.status != 200:
                        raise SignInFailed(f"provider discovery answered {response.status}")
                    document = orjson.loads(await response.content.read(1 << 20))
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                raise SignInFailed(f"provider discovery failed ({type(exc).__name__})") from None
            if not isinstance(document, dict) or document.get("issuer") != self.settings.issuer:
                raise SignInFailed("provider discovery names another issuer")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(document.get(name), str):
                    raise SignInFailed(f"provider discovery lacks {name}")
            self._discovery = document
            self._keys = JwksKeys(self._http(), document["jwks_uri"])
        return self._discovery

    async def start(self, request_id: str) -> tuple[str, str]:
        """(the provider's authorization URL, the value for our browser-binding cookie)."""
        metadata = await self._metadata()
        state, nonce, verifier, browser = (secrets.token_urlsafe(32) for _ in range(4))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        record = {"request": request_id, "nonce": nonce, "verifier": verifier, "browser": digest(browser)}
        await self.store.set_capped(STATE_KEY + digest(state), orjson.dumps(record).decode(), ttl=STATE_TTL,
                                    group=STATE_GROUP, limit=MAX_STATES)
        query = urlencode({"response_type": "code", "client_id": self.settings.client_id,
                           "redirect_uri": self.redirect_uri, "scope": " ".join(self.settings.scopes),
                           "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        return f"{metadata['authorization_endpoint']}?{query}", browser

    async def finish(self, query: dict[str, str], browser: str | None, offered: tuple[str, ...],
                     ceiling_of: Any) -> tuple[Principal, str]:
        """The signed-in person and the pending authorization request id (may be empty), or SignInFailed."""
        if "error" in query:
            raise SignInFailed(f"the provider said {query['error'][:100]}")
        state, code = query.get("state"), query.get("code")
        if not state or not code:
            raise SignInFailed("the provider's answer lacks state or code")
        raw = await self.store.take(STATE_KEY + digest(state))
        if raw is None:
            raise SignInFailed("unknown or expired sign-in (start again)")
        record = orjson.loads(raw)
        if browser is None or not hmac.compare_digest(digest(browser), record["browser"]):
            raise SignInFailed("this sign-in was started in another browser")
        if query.get("iss") not in (None, self.settings.issuer):  # RFC 9207
            raise SignInFailed("the answer came from another issuer")
        claims = await self._redeem(code, record["verifier"], record["nonce"])
        role = role_of(claims, self.settings)
        if role is None:
            raise SignInFailed("your account has no role here")
        subject = person_of(claims, self.settings)
        # One node per sign-in: revoking it ends what was consented in it; the person may sign in again.
        person = digest(f"{self.settings.issuer}\0{claims['sub']}")[:16]
        principal = Principal(
            subject=subject, credential_id=f"oidc-{person}-{secrets.token_hex(4)}",
            label=f"{self.settings.name} sign-in", kind="oauth", scopes=held_scopes(offered, ceiling_of(role)),
            role=role,
        )
        return principal, record["request"]

    async def _redeem(self, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        metadata = await self._metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": verifier, "client_id": self.settings.client_id}
        headers = {"Accept": "application/json"}
        if self.settings.client_secret is not None:  # client_secret_basic, RFC 6749 §2.3.1 (form-encoded parts)
            pair = f"{quote(self.settings.client_id, safe='')}:{quote(self.settings.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            async with self._http().post(metadata["token_endpoint"], data=form, headers=headers) as response:
                body = await response.content.read(1 << 20)
                if response.status != 200:
                    raise SignInFailed(f"the provider's token endpoint answered {response.status}")
            answer = orjson.loads(body)
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise SignInFailed(f"the provider's token endpoint failed ({type(exc).__name__})") from None
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise SignInFailed("the provider returned no ID token")
        try:
            header = jwt.get_unverified_header(id_token)
            alg = header.get("alg")
            if alg not in ("RS256", "PS256", "ES256", "EdDSA"):
                raise SignInFailed("the ID token's algorithm is not accepted")
            key = await self._keys.key(header.get("kid"), alg)  # type: ignore[union-attr]
            claims = jwt.decode(id_token, key, algorithms=[alg], audience=self.settings.client_id,
                                issuer=self.settings.issuer, leeway=30,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, KeyError_) as exc:
            raise SignInFailed(f"the ID token is not valid ({type(exc).__name__})") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInFailed("the ID token's nonce is not ours")
        return claims
