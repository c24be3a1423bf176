"""`python bench/assertion.py`: what the caller's identity assertion (policy `upstream_identity:`) costs one request,
in process, in microseconds (timeit, best of several repeats; the machine's other work only ever adds).

For each key type it times the request path's own work (`Assertions.stamp` on a small call's Exchange, less building
that Exchange) three ways, beside the naive way:

- naive:   `jwt.encode` of the whole claim set, every request (what signing every call would cost done plainly);
- own:     an assertion made for this request (a write, a confirmed call, or `reuse_seconds: 0`): the credential's
           part taken encoded from its cache, the request's part encoded, one signature;
- reused:  a read's assertion found in the cache (the same credential, scopes and workspace within
           `reuse_seconds`): no signature at all.

`make bench IDENTITY=1` measures the same end to end (CPU per small call with the assertion on and off, in the same
rounds); `python bench/cost.py --identity` counts instructions.
"""

from __future__ import annotations

import time
import timeit
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from multidict import CIMultiDict

from proxy.exchange import Exchange, WorkspaceFact
from proxy.identity.assertion import DEFAULT_HEADER, Assertions, Settings, credential_claims
from proxy.identity.oauth.keys import KeyRing, signing_key
from proxy.identity.principal import Principal
from proxy.policy.decide import Decision

PERSON = Principal("bench", "pat_0123456789ab", "Month-end review script", "pat", frozenset({"mcp:read"}),
                   expires_at=time.time() + 86400)
READ = Decision(True, "tool", "get_period_status", ("mcp:read",), (), "read", False, "inject", "tools[0]")


def _key(kind: str) -> Any:
    private = ec.generate_private_key(ec.SECP256R1()) if kind == "ES256" else ed25519.Ed25519PrivateKey.generate()
    return signing_key(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))


def measure(number: int = 20000, repeat: int = 5) -> dict[str, dict[str, float]]:
    """µs per request: {algorithm: {naive, own, reused}}."""
    out: dict[str, dict[str, float]] = {}
    for alg in ("ES256", "EdDSA"):
        key = _key(alg)

        def exchange() -> Exchange:
            made = Exchange("0123456789abcdef0000000000000001", None, "2026-07-28", CIMultiDict())
            made.principal, made.decision = PERSON, READ
            made.workspaces.append(WorkspaceFact("get_period_status", "inject", "injected", "acme"))
            return made

        def best(step: Any, n: int) -> float:
            return min(timeit.repeat(step, number=n, repeat=repeat)) / n * 1e6

        base = best(exchange, number)
        figures = {}
        for name, reuse in (("own", 0), ("reused", 30)):
            assertions = Assertions(Settings(KeyRing((key,)), "https://gate.example/mcp", "http://127.0.0.1:8080/mcp",
                                             DEFAULT_HEADER, 60, reuse))
            figures[name] = max(best(lambda a=assertions: a.stamp(exchange()), number // (10 if not reuse else 1))
                                - base, 0.0)

        def naive(key: Any = key) -> None:
            now = int(time.time())
            claims = {**credential_claims(PERSON, "https://gate.example/mcp", "http://127.0.0.1:8080/mcp"),
                      "iat": now, "exp": now + 60, "ws": "acme", "rid": "0123456789abcdef0000000000000001"}
            jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "scopegate-id+jwt"})

        out[alg] = {"naive": best(naive, number // 10), **figures}
    return out


def main() -> None:
    print("identity assertion, per request, in process (µs, best of 5):")
    print(f"{'key':<8}{'naive jwt.encode':>18}{'own (signed)':>14}{'reused':>9}")
    for alg, figures in measure().items():
        print(f"{alg:<8}{figures['naive']:18.1f}{figures['own']:14.1f}{figures['reused']:9.2f}")


if __name__ == "__main__":
    main()
