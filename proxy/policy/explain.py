"""Explaining one decision in words (what `scopegate policy explain` prints): the same function the proxy runs,
and the rule that made it. Pure."""

from __future__ import annotations

from proxy.policy.decide import Decision, Kind, Rules, decide
from proxy.policy.model import Policy


def explain(policy: Policy, held: frozenset[str], kind: Kind, name: str, who: str,
            tool_prefixes: tuple[str, ...] = ()) -> tuple[Decision, list[str]]:
    decision = decide(Rules(policy, tool_prefixes), held, kind, name)
    lines = [f"{'ALLOW' if decision.allowed else 'DENY'} {kind} {name} for {who}",
             f"  rule:      {decision.because}",
             f"  effective: {' '.join(sorted(held)) or '(no scopes)'}"]
    if decision.required:
        lines.append(f"  requires:  {' '.join(decision.required)} (all of them"
                     f"{', or the superscope ' + policy.superscope if policy.superscope else ''})")
    if decision.missing:
        lines.append(f"  missing:   {' '.join(decision.missing)}")
    if kind == "tool" and (decision.allowed or decision.required):
        found = Rules(policy, tool_prefixes).find(kind, name) if decision.confirm else None
        rule = found[1] if found else None
        if not decision.confirm:
            confirmation = "not required"
        elif rule is not None and rule.confirmer == "human":
            fallback = ", or a token where the client cannot ask" if rule.fallback == "token" else ""
            confirmation = f"required, by the person at the client (elicitation{fallback})"
        else:
            confirmation = "required, by token"
        lines.append(f"  effect:    {decision.effect}; confirmation {confirmation}; workspace "
                     f"{decision.workspace or 'as the upstream schema says'}")
    return decision, lines
