"""Guard: the policy's rate limits on tool calls (`limits:`), per credential, person, tool and workspace as each
limit names them, with a burst (GCRA: proxy/ratelimit.py; kept in the store, so replicas share one count through
Redis). A call past a limit is answered here: HTTP 429 with `Retry-After` and a JSON-RPC error naming the limit;
nothing reaches the upstream. When the store cannot answer, the call is refused (503): a limit is not waived.

It runs after the scope and workspace guards (a refused call costs nothing; the workspace is the one the call acts
in, injected or verified) and before confirmation: a preview counts, and the call that brings its token back (or a
person's answer to the proxy's own question) completes it without counting again; a forged token is refused by
the confirm guard and forwards nothing.
"""

from __future__ import annotations

import math
from typing import Any

from proxy.exchange import Answer, Exchange
from proxy.guards.approval import STATE_PREFIX
from proxy.guards.confirmation import TOKEN_ARGUMENT
from proxy.jsonrpc import INTERNAL_ERROR, Message, error
from proxy.policy.reload import LivePolicy
from proxy.ratelimit import Check, key
from proxy.store import Store, StoreUnavailable

LIMITED = -32029  # a server error of JSON-RPC's implementation-defined range: too many requests


def counted_per(per: tuple[str, ...], credential: str, person: str, tool: str, workspace: str) -> tuple[str, ...]:
    """What one limit counts this call under, in the order it names them. Pure."""
    facts = {"credential": credential, "person": person, "tool": tool, "workspace": workspace}
    return tuple(f"{name}={facts[name]}" for name in per)


def completes_a_held_call(params: dict[str, Any]) -> bool:
    """A call bringing back a preview's token, or a person's answer to the proxy's own question: the held call it
    completes was counted already."""
    arguments, meta, state = params.get("arguments"), params.get("_meta"), params.get("requestState")
    return ((isinstance(arguments, dict) and TOKEN_ARGUMENT in arguments)
            or (isinstance(meta, dict) and TOKEN_ARGUMENT in meta)
            or (isinstance(state, str) and state.startswith(STATE_PREFIX)))


class RateLimits:
    def __init__(self, live: LivePolicy, store: Store) -> None:
        self.live = live
        self.store = store

    methods = frozenset({"tools/call"})

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        if message.get("method") != "tools/call":
            return message
        rules = self.live.of(exchange).rules
        if not rules.limits:  # no limit in the policy: nothing more than this
            return message
        params = message["params"]
        tool = params["name"]
        limits = rules.limits_of(tool)
        principal = exchange.principal
        if not limits or principal is None or completes_a_held_call(params):
            return message
        arguments = params.get("arguments")
        workspace = arguments.get(rules.policy.workspace_property) if isinstance(arguments, dict) else None
        workspace = workspace if isinstance(workspace, str) else principal.bound_workspace or ""
        checks = tuple(Check(key(limit.name, counted_per(limit.per, f"{principal.kind}:{principal.credential_id}",
                                                         principal.subject, tool, workspace)), interval, burst)
                       for limit, interval, burst in limits)
        msg_id = message.get("id")
        try:
            refused, wait = await self.store.rate(checks)
        except StoreUnavailable:
            return Answer(error(msg_id, INTERNAL_ERROR, "rate limit store unavailable: the call was not made; retry "
                                "shortly", {"requestId": exchange.request_id}), http_status=503,
                          decision="refuse", reason="store unavailable")
        if refused < 0:
            return message
        limit = limits[refused][0]
        seconds = max(1, math.ceil(wait))
        text = (f"rate limit {limit.name!r} reached ({limit.rate} calls per {limit.period_seconds:g} s"
                f"{' per ' + ', '.join(limit.per) if limit.per else ''}): retry in {seconds} s")
        data = {"limit": limit.name, "retryAfter": seconds, "requestId": exchange.request_id}
        return Answer(error(msg_id, LIMITED, text, data), http_status=429, headers=(("Retry-After", str(seconds)),),
                      decision="limited", reason=limit.name)
