"""A credential checked without a running proxy (for `scopegate policy explain --token`): a PAT against its
registry file, or a JWT against the policy's issuers that have a static public key."""

from __future__ import annotations

import asyncio

from proxy.identity.jwks import StaticKey
from proxy.identity.jwt_auth import JwtVerifier, TokenRejected, TrustedIssuer
from proxy.identity.pats import Registry, RegistryError, looks_like_pat
from proxy.identity.principal import Principal
from proxy.policy.model import Policy


class CredentialProblem(Exception):
    """Why the credential gives no principal, in one line."""


def principal_for(token: str, policy: Policy, pat_file: str | None) -> Principal:
    if looks_like_pat(token):
        if not pat_file:
            raise CredentialProblem("a PAT needs --pat-file (or SCOPEGATE_PAT_FILE)")
        try:
            principal, reason = Registry(pat_file, policy).lookup(token)
        except RegistryError as exc:
            raise CredentialProblem(str(exc)) from None
        if principal is None:
            raise CredentialProblem(f"the token is {reason}")
        return principal
    trusted = [TrustedIssuer(i, StaticKey.from_pem_file(i.public_key_file), i.audience or "")
               for i in policy.issuers if i.public_key_file]
    if not trusted:
        raise CredentialProblem("JWTs can be explained for issuers with a public_key_file only")
    try:
        return asyncio.run(JwtVerifier(trusted, policy).verify(token))
    except TokenRejected as exc:
        raise CredentialProblem(f"token rejected ({exc})") from None
