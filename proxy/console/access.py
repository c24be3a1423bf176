"""The access simulator: what a credential (or a scope set and workspace) would see and what each of its calls
would meet. Pure over the policy's own decision (`policy/decide.py`, what `scopegate policy explain` prints) and
the lists the proxy itself fetched from the upstream (`edge/upstream_tools.py`, the catalog's source).

Per tool: `allowed` (forwarded as it is), `held` (a write: confirmed by `token` or by the `person` first), or
`refused`, with the rule that decided and what is missing. Prompts and resources: shown or not.
"""

from __future__ import annotations

from typing import Any

from proxy.policy.decide import Kind, Rules, decide
from proxy.policy.explain import explain


def _hint(item: dict[str, Any]) -> bool | None:
    annotations = item.get("annotations")
    if isinstance(annotations, dict) and isinstance(annotations.get("readOnlyHint"), bool):
        return bool(annotations["readOnlyHint"])
    return None


def verdict(rules: Rules, held: frozenset[str], kind: Kind, item: dict[str, Any], who: str) -> dict[str, Any]:
    name = str(item.get("name") if kind != "resource" else item.get("uriTemplate") or item.get("uri"))
    decision = decide(rules, held, kind, name, _hint(item) if kind == "tool" else None)
    outcome = "refused"
    confirm_by = None
    if decision.allowed:
        outcome = "allowed"
        if kind == "tool" and decision.confirm:
            found = rules.find("tool", name)
            confirm_by = "person" if found is not None and found[1].confirmer == "human" else "token"
            outcome = "held"
    _, lines = explain(rules.policy, held, kind, name, who, rules.tool_prefixes)
    return {"name": name, "title": item.get("title") or item.get("description") or "", "outcome": outcome,
            "confirm_by": confirm_by, "effect": decision.effect, "rule": decision.because,
            "required": list(decision.required), "missing": list(decision.missing), "explain": lines}


def simulate(rules: Rules, held: frozenset[str], lists: dict[str, list[Any]], workspace: str | None,
             who: str) -> dict[str, Any]:
    """What `held` would see of `lists` (tools, prompts, resourceTemplates, resources)."""
    out: dict[str, Any] = {"scopes": sorted(held), "workspace": workspace}
    for key, kind in (("tools", "tool"), ("prompts", "prompt"), ("resources", "resource"),
                      ("resourceTemplates", "resource")):
        items = [i for i in lists.get(key, []) if isinstance(i, dict)]
        out[key] = [verdict(rules, held, kind, item, who) for item in items]  # type: ignore[arg-type]
    return out
