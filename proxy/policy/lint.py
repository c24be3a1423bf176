"""Warnings about a valid policy that probably does not say what its author meant. Pure over the Policy.

- A glob rule that an earlier, broader glob always wins over can never decide anything (exact names are looked up
  before any glob, so only globs can be shadowed): `"*"` first makes every later glob dead.
- A write rule with `scopes: []` lets any authenticated caller write (after confirmation): legal, rarely meant.
"""

from __future__ import annotations

from pathlib import Path

from proxy.policy import source
from proxy.policy.model import Policy, load_located
from proxy.policy.source import Problem

_META = "*?["


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in _META)


def _literal_prefix(pattern: str) -> str:
    cut = min((pattern.index(ch) for ch in _META if ch in pattern), default=len(pattern))
    return pattern[:cut]


def _literal_suffix(pattern: str) -> str:
    cut = max((pattern.rindex(ch) for ch in "*?]" if ch in pattern), default=-1)
    return pattern[cut + 1 :]


def covers(earlier: str, later: str) -> bool:
    """Every name `later` matches, `earlier` matches too (decided for `*`, `prefix*` and `*suffix`; else False)."""
    if earlier == "*":
        return True
    body = earlier[1:] if earlier.startswith("*") else earlier[:-1] if earlier.endswith("*") else None
    if body is None or _is_glob(body):
        return False
    if earlier.endswith("*"):
        return _literal_prefix(later).startswith(body)
    return _literal_suffix(later).endswith(body)


def warnings(policy: Policy) -> list[Problem]:
    found: list[Problem] = []
    for section in ("tools", "prompts", "resources"):
        globs: list[tuple[int, str]] = []
        for index, rule in enumerate(getattr(policy, section)):
            if rule.effect == "write" and not rule.scopes:
                found.append(((section, index, "scopes"), "a write rule with no scopes: any authenticated caller "
                              "may make this call (after confirmation); name the scope it needs"))
            if not _is_glob(rule.match) or "{" in rule.match:
                continue
            shadow = next((i for i, earlier in globs if covers(earlier, rule.match)), None)
            if shadow is not None:
                found.append(((section, index, "match"), f"never decides anything: the earlier glob "
                              f"{section}.{shadow} ({getattr(policy, section)[shadow].match!r}) matches every name "
                              f"{rule.match!r} matches (globs are tried in file order); move it up"))
            globs.append((index, rule.match))
    return found


def check(path: str | Path) -> tuple[Policy, list[str]]:
    """Load the policy (PolicyError if it is invalid) and its warnings as `file:line:column: path: message` lines."""
    policy, located = load_located(path)
    return policy, source.report(Path(path), located, warnings(policy))
