"""Explaining one decision in words (what `scopegate policy explain` prints): the same function the proxy runs,
the rule that made it, and, given a call's arguments, the condition that decided; the rate limits that count the
call. Pure."""

from __future__ import annotations

import time
from typing import Any

from proxy.policy.decide import Decision, Kind, Rules, called, decide
from proxy.policy.model import Policy


def explain(policy: Policy, held: frozenset[str], kind: Kind, name: str, who: str,
            tool_prefixes: tuple[str, ...] = (), args: dict[str, Any] | None = None,
            principal: dict[str, Any] | None = None, now: float | None = None) -> tuple[Decision, list[str]]:
    """`args`: the call's arguments; given, the rule's conditions are evaluated for them (as the proxy would, with
    `principal` and `now`), else they are listed as what may still decide."""
    rules = Rules(policy, tool_prefixes)
    decision = decide(rules, held, kind, name)
    conditions = decision.conditions
    if conditions and args is not None:
        decision = called(decision, args, principal, time.time() if now is None else now)
    lines = [f"{'ALLOW' if decision.allowed else 'DENY'} {kind} {name} for {who}",
             f"  rule:      {decision.because}",
             f"  effective: {' '.join(sorted(held)) or '(no scopes)'}"]
    if decision.required:
        lines.append(f"  requires:  {' '.join(decision.required)} (all of them"
                     f"{', or the superscope ' + policy.superscope if policy.superscope else ''})")
    if decision.missing:
        lines.append(f"  missing:   {' '.join(decision.missing)}")
    if decision.condition:
        lines.append(f"  condition: {decision.condition} decided: {decision.reason}")
    elif conditions and args is not None:
        lines.append("  condition: none holds for these arguments")
    elif conditions:
        lines += [f"  condition: {c.where}: when {' '.join(c.source.split())} then {c.then} ({c.reason})"
                  for c in conditions]
        lines.append("             (give the call's arguments to see which holds)")
    if kind == "tool" and (decision.allowed or decision.required):
        if not decision.confirm:
            confirmation = "not required"
        elif decision.confirmer == "human":
            found = rules.find(kind, name)
            fallback = ", or a token where the client cannot ask" if found and found[1].fallback == "token" else ""
            confirmation = f"required, by the person at the client (elicitation{fallback})"
        else:
            confirmation = "required, by token"
        lines.append(f"  effect:    {decision.effect}; confirmation {confirmation}; workspace "
                     f"{decision.workspace or 'as the upstream schema says'}")
    if kind == "tool":
        for limit, _, burst in rules.limits_of(name):
            per = f" per {', '.join(limit.per)}" if limit.per else " for every caller together"
            lines.append(f"  limit:     {limit.name}: {limit.rate} calls per {limit.period_seconds:g} s{per}, "
                         f"{burst} at once")
    return decision, lines
