"""JWTs and OAuth access tokens: verify with pyjwt, then turn the claims into a Principal.

Required: `exp`, `iss`, `aud` (= SCOPEGATE_PUBLIC_URL, a single string), `sub`; a small leeway for clock skew.
Allowed algorithms are the issuer's (RS256, ES256, EdDSA by default); HS256 only for an issuer configured with an
explicit development secret. Scopes come from `scope` (space-separated) or `scp` (a list).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from proxy.identity.jwks import KeyError_, KeySource
from proxy.identity.principal import (
    OAUTH_GRANT_PREFIX,
    Principal,
    ceiling_scopes,
    effective_scopes,
    problem_in_permissions,
)
from proxy.policy.model import ALGORITHMS, Issuer, Policy

LEEWAY_SECONDS = 30
PARENT_CLAIM = "par"  # scopegate's own access tokens: the credential the person signed in with (the grant's parent)


class TokenRejected(Exception):
    """The reason is for logs, the code for metrics (a small fixed set); the client learns nothing but 401."""

    def __init__(self, reason: str, code: str = "invalid jwt") -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class TrustedIssuer:
    config: Issuer
    keys: KeySource
    audience: str
    # scopegate's own OAuth server names the grant (the refresh-token family) in this claim: the credential id
    # then is that grant's, so revoking the grant refuses its access tokens on the next request (Authenticate).
    grant_claim: str | None = None


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise TokenRejected("claim is not a list of strings")


def claim_scopes(claims: Mapping[str, Any]) -> set[str]:
    if isinstance(claims.get("scope"), str):
        return set(claims["scope"].split())
    return set(_strings(claims.get("scp")) or [])


def principal_from_claims(claims: Mapping[str, Any], issuer: Issuer, policy: Policy,
                          credential_id: str | None = None, parent: str | None = None) -> Principal:
    """Pure: verified claims in, Principal out.

    A token of scopegate's own OAuth server (`credential_id` given: its grant) holds exactly the scopes consented:
    its per-resource `permissions` only narrow (a `none` denies), they never add the level scopes they imply for
    the credentials that carry them directly (a PAT's, another issuer's token)."""
    permissions = claims.get("permissions") or {}
    problem = problem_in_permissions(permissions)
    if problem:
        raise TokenRejected(problem)
    capabilities = claims.get("org_capabilities") or {}
    if not isinstance(capabilities, Mapping):
        raise TokenRejected("org_capabilities must be an object")
    grant = claim_scopes(claims)
    if credential_id is None:
        grant |= ceiling_scopes(permissions, capabilities)
    bound = claims.get("workspace")
    workspaces = [bound] if isinstance(bound, str) else _strings(claims.get("workspaces"))
    projects = _strings(claims.get("projects"))
    role = claims.get(issuer.role_claim)
    client = claims.get("client_id") or claims.get("azp")
    # One stable id per (issuer, subject, client): a refreshed token keeps its sessions; it carries no secret.
    digest = hashlib.sha256(f"{claims['iss']}\0{claims['sub']}\0{client or ''}".encode()).hexdigest()[:16]
    return Principal(
        subject=str(claims["sub"]),
        credential_id=credential_id or f"{issuer.kind}-{digest}",
        label=str(client or claims["sub"]),
        kind=issuer.kind,
        scopes=effective_scopes(grant, issuer.kind, ceiling=policy.ceiling(role if isinstance(role, str) else None),
                                oauth_excluded=policy.oauth_excluded_scopes),
        workspaces=frozenset(workspaces) if workspaces is not None else None,
        bound_workspace=bound if isinstance(bound, str) else None,
        default_workspace=claims.get("default_workspace") if isinstance(claims.get("default_workspace"), str)
        else (bound if isinstance(bound, str) else None),
        projects=frozenset(projects) if projects is not None else None,
        permissions=dict(permissions),
        role=role if isinstance(role, str) else None,
        expires_at=float(claims["exp"]),
        parent=parent,
    )


_CURVE_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def key_fits(key: Any, alg: str) -> bool:
    """Whether `alg` is an algorithm for this kind of key. Pure. A token names its own algorithm; only the key's
    type may decide which one applies, or a mismatched pair reaches code that was never meant to see it."""
    if isinstance(key, jwt.PyJWK):
        key = key.key
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return _CURVE_ALGORITHM.get(key.curve.name) == alg
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return alg == "EdDSA"
    if isinstance(key, bytes):  # the development HS256 secret
        return alg == "HS256"
    return False


def _named(alg: object) -> str:
    """An algorithm's name for a log line: only names from the known set, never whatever a token carried."""
    return alg if isinstance(alg, str) and alg in (*ALGORITHMS, "HS256", "none") else "(unknown)"


class JwtVerifier:
    def __init__(self, issuers: list[TrustedIssuer], policy: Policy) -> None:
        self.issuers = {i.config.issuer: i for i in issuers}
        self.policy = policy

    def follow(self, policy: Policy) -> Callable[[], None]:
        """A policy reload's follower: later tokens are read through the new policy's roles and exclusions."""
        return lambda: setattr(self, "policy", policy)

    async def verify(self, token: str) -> Principal:
        """A Principal, or TokenRejected: whatever a token holds, nothing else escapes (a crafted token is a 401,
        never a 500)."""
        try:
            return await self._verify(token)
        except TokenRejected:
            raise
        except Exception as exc:  # a library's surprise about a hostile token is still a bad token
            raise TokenRejected(f"unverifiable token ({type(exc).__name__})", "malformed") from None

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            # Read unverified only to pick the issuer's keys; everything is verified below with those keys.
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("malformed", "malformed") from None
        trusted = self.issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if trusted is None:
            raise TokenRejected("unknown issuer", "unknown issuer")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in trusted.config.algorithms:
            raise TokenRejected(f"algorithm {_named(alg)} not allowed")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("kid is not a string", "malformed")
        try:
            key = await trusted.keys.key(kid, alg)
        except KeyError_ as exc:
            raise TokenRejected(str(exc)) from None
        if not key_fits(key, alg):
            raise TokenRejected(f"algorithm {_named(alg)} does not fit the issuer's key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=trusted.audience,
                issuer=trusted.config.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"], "strict_aud": True},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(type(exc).__name__) from None
        credential_id = parent = None
        if trusted.grant_claim is not None:
            grant, parent = claims.get(trusted.grant_claim), claims.get(PARENT_CLAIM)
            if not isinstance(grant, str) or not grant.isalnum() or len(grant) > 64:
                raise TokenRejected("no grant id")
            if not isinstance(parent, str) or not 0 < len(parent) <= 64:
                raise TokenRejected("no parent credential")
            credential_id = OAUTH_GRANT_PREFIX + grant
        return principal_from_claims(claims, trusted.config, self.policy, credential_id, parent)
