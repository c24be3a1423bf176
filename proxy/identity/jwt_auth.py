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

from proxy.identity.jwks import KeyError_, KeySource
from proxy.identity.principal import Principal, ceiling_scopes, effective_scopes, problem_in_permissions
from proxy.policy.model import Issuer, Policy

LEEWAY_SECONDS = 30


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


def principal_from_claims(claims: Mapping[str, Any], issuer: Issuer, policy: Policy) -> Principal:
    """Pure: verified claims in, Principal out."""
    permissions = claims.get("permissions") or {}
    problem = problem_in_permissions(permissions)
    if problem:
        raise TokenRejected(problem)
    capabilities = claims.get("org_capabilities") or {}
    if not isinstance(capabilities, Mapping):
        raise TokenRejected("org_capabilities must be an object")
    grant = claim_scopes(claims) | ceiling_scopes(permissions, capabilities)
    bound = claims.get("workspace")
    workspaces = [bound] if isinstance(bound, str) else _strings(claims.get("workspaces"))
    projects = _strings(claims.get("projects"))
    role = claims.get(issuer.role_claim)
    client = claims.get("client_id") or claims.get("azp")
    # One stable id per (issuer, subject, client): a refreshed token keeps its sessions; it carries no secret.
    digest = hashlib.sha256(f"{claims['iss']}\0{claims['sub']}\0{client or ''}".encode()).hexdigest()[:16]
    return Principal(
        subject=str(claims["sub"]),
        credential_id=f"{issuer.kind}-{digest}",
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
    )


class JwtVerifier:
    def __init__(self, issuers: list[TrustedIssuer], policy: Policy) -> None:
        self.issuers = {i.config.issuer: i for i in issuers}
        self.policy = policy

    def follow(self, policy: Policy) -> Callable[[], None]:
        """A policy reload's follower: later tokens are read through the new policy's roles and exclusions."""
        return lambda: setattr(self, "policy", policy)

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            # Read unverified only to pick the issuer's keys; everything is verified below with those keys.
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("malformed") from None
        trusted = self.issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if trusted is None:
            raise TokenRejected("unknown issuer", "unknown issuer")
        alg = header.get("alg")
        if alg not in trusted.config.algorithms:
            raise TokenRejected(f"algorithm {alg!r} not allowed")
        try:
            key = await trusted.keys.key(header.get("kid"), alg)
        except KeyError_ as exc:
            raise TokenRejected(str(exc)) from None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(trusted.config.algorithms),
                audience=trusted.audience,
                issuer=trusted.config.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"], "strict_aud": True},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(type(exc).__name__) from None
        return principal_from_claims(claims, trusted.config, self.policy)
