"""`python bench/conditions.py [--redis-url URL]`: what a rule's conditions and a rate limit cost one small call, in
process, in microseconds (timeit, best of several repeats; the machine's other work only ever adds).

- scope guard, no condition:     the decision as today (remembered per scopes and name);
- scope guard, five conditions:  the same rule with bench/run.py's five conditions on it (arguments, principal and
                                 time; each false for this call), evaluated per call;
- rate limits, memory:           the rate-limit guard with one limit on the tool, counting in memory;
- rate limits, Redis:            the same in Redis (one Lua script: a round trip), with --redis-url.

`make bench POLICY_FEATURES=1 [BENCH_REDIS_URL=unix:///path/redis.sock]` measures the same end to end (CPU and
req/s per small call against the same policy without them, in the same rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from multidict import CIMultiDict

from proxy.exchange import Exchange
from proxy.guards.catalog import Catalog
from proxy.guards.limits import RateLimits
from proxy.guards.scope import ScopeGuard
from proxy.identity.principal import Principal
from proxy.policy.decide import Rules
from proxy.policy.model import Limit, Policy, Rule, When
from proxy.policy.reload import LivePolicy
from proxy.store import MemoryStore, RedisStore, Store

PERSON = Principal("bench", "pat_0123456789ab", "bench", "pat", frozenset({"mcp:read"}))
FIVE = (
    When(when="has(args.amount) && args.amount > 1000", then="human", reason="big"),
    When(when='args.period < "2020-01"', then="deny", reason="closed"),
    When(when='args.workspaceId == "frozen"', then="deny", reason="frozen"),
    When(when='principal.kind == "oauth" && principal.client == "unknown"', then="deny", reason="client"),
    When(when='now < timestamp("2020-01-01T00:00:00Z")', then="deny", reason="past"),
)
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "get_period_status", "arguments": {"workspaceId": "acme", "period": "2026-10"}}}


def _live(conditions: tuple[When, ...] = (), limits: tuple[Limit, ...] = ()) -> LivePolicy:
    policy = Policy(version=1, scopes=("mcp:read",), limits=limits, tools=(
        Rule(match="get_period_status", scopes=("mcp:read",), workspace="none", conditions=conditions),))
    return LivePolicy(policy, Rules(policy))


def _exchange() -> Exchange:
    return Exchange("0123456789abcdef", None, "2026-07-28", CIMultiDict(), principal=PERSON)


async def _per_call(guard: Any, number: int, repeat: int) -> float:
    """µs per guarded call, less making its Exchange and message."""
    async def calls(n: int, guarded: bool) -> float:
        start = time.perf_counter()
        for _ in range(n):
            exchange, message = _exchange(), {**CALL, "params": {**CALL["params"]}}
            if guarded:
                assert await guard(exchange, message) is message
        return time.perf_counter() - start

    best = min([await calls(number, True) for _ in range(repeat)])
    base = min([await calls(number, False) for _ in range(repeat)])
    return (best - base) / number * 1e6


async def measure(number: int = 20000, repeat: int = 5, redis_url: str | None = None) -> dict[str, float]:
    catalog = Catalog(None)
    out = {
        "scope guard, no condition": await _per_call(ScopeGuard(_live(), catalog), number, repeat),
        "scope guard, five conditions": await _per_call(ScopeGuard(_live(FIVE), catalog), number, repeat),
    }
    limit = Limit(name="bench", match="get_period_status", per=("credential", "tool", "workspace"), rate=10**6,
                  period_seconds=1)
    stores: list[tuple[str, Store]] = [("memory", MemoryStore())]
    if redis_url:
        stores.append(("Redis", RedisStore(redis_url)))
    for name, store in stores:
        try:
            out[f"rate limits, {name}"] = await _per_call(RateLimits(_live(limits=(limit,)), store),
                                                          number if name == "memory" else max(1, number // 10),
                                                          repeat)
        finally:
            await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help="a Redis of your own that may be written to (keys scopegate:rate:bench:*)")
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.number, redis_url=args.redis_url))
    for name, us in figures.items():
        print(f"{name:<32}{us:8.2f} us per call")
    print(f"\nfive conditions add {figures['scope guard, five conditions'] - figures['scope guard, no condition']:.2f} "
          "us to a call; compare with the CPU per small call `make bench` prints for scopegate")


if __name__ == "__main__":
    main()
