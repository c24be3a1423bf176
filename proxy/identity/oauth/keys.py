"""scopegate's own signing keys for the OAuth access tokens it issues.

Keys are PEM private keys in files (a mounted Secret): EC P-256 (ES256) or Ed25519 (EdDSA). The first file signs;
every file's public key is published in the JWKS, so a rotation is: add the new key second, wait for caches
(the JWKS is served with a short max-age), swap the order, and drop the old key once its tokens (30 min) expired.
The key id is the RFC 7638 thumbprint, so it never has to be configured and two replicas agree on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

ALGORITHMS = ("ES256", "EdDSA")


class KeyFileError(Exception):
    """A key file that cannot be used; one line, no key material."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any = field(repr=False)
    jwk: dict[str, str] = field(repr=False)


def _thumbprint(jwk: dict[str, str]) -> str:
    # RFC 7638: the required members only, sorted, no whitespace.
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def signing_key(pem: bytes, where: str = "key") -> SigningKey:
    try:
        private = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where}: not an unencrypted PEM private key ({type(exc).__name__})") from None
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
        alg = "ES256"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    else:
        raise KeyFileError(f"{where}: expected an EC P-256 (ES256) or Ed25519 (EdDSA) private key")
    jwk = json.loads(jwt.get_algorithm_by_name(alg).to_jwk(private.public_key()))
    kid = _thumbprint(jwk)
    return SigningKey(kid=kid, alg=alg, private=private, jwk={**jwk, "kid": kid, "alg": alg, "use": "sig"})


def load_keys(paths: tuple[str, ...]) -> tuple[SigningKey, ...]:
    keys = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                keys.append(signing_key(handle.read(), path))
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from None
    if not keys:
        raise KeyFileError("no signing key")
    if len({k.kid for k in keys}) != len(keys):
        raise KeyFileError("the same key is listed twice")
    return tuple(keys)


class KeyRing:
    """The signing key (first) and every published key; also a KeySource for the JWT verifier."""

    def __init__(self, keys: tuple[SigningKey, ...]) -> None:
        self.keys = keys
        self._public = {k.kid: jwt.PyJWK.from_dict(k.jwk) for k in keys}

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.current
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"})

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.jwk for k in self.keys]}

    async def key(self, kid: str | None, alg: str) -> Any:
        from proxy.identity.jwks import KeyError_

        found = self._public.get(kid or "")
        if found is None:
            raise KeyError_("unknown kid")
        return found
