"""The one authorization decision: may this principal use this tool, prompt or resource, and under which rule?

Pure over plain data. The same function filters `tools/list`, `prompts/list`, `resources/list` results and gates
`tools/call`, `prompts/get`, `resources/read`, so a caller can call exactly what it can see.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from fnmatch import translate
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote_to_bytes

from proxy.memo import remember
from proxy.policy.conditions import Facts, RuleConditions, Verdict, compile_condition
from proxy.policy.model import WORKSPACE_SEGMENT, Limit, Policy, Rule
from proxy.policy.pins import PinSet

Kind = Literal["tool", "prompt", "resource"]
_SECTION = {"tool": "tools", "prompt": "prompts", "resource": "resources"}
_CACHE_LIMIT = 20_000


def pattern(match: str) -> re.Pattern[str]:
    """A rule's `match` as a regular expression: a glob (`*`, `?`, `[...]`), where `{workspace}` stands for one URI
    segment (no `/`, `?` or `#`), captured."""
    parts = [translate(part)[4:-3] for part in match.split(WORKSPACE_SEGMENT)]  # "(?s:" ... ")\\Z"
    return re.compile("(?s:" + "(?P<workspace>[^/?#]+)".join(parts) + r")\Z")


def segment_workspace(segment: str) -> str | None:
    """The workspace a URI segment names, percent-decoded as an upstream decodes it (`glob%65x` is `globex`); None
    when it cannot be decoded, so it is refused rather than read two ways. Pure."""
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        return None


def satisfies(held: frozenset[str], required: Iterable[str], superscope: str | None) -> bool:
    """All of `required` are held, or the superscope is (which the ceiling has already had its say on)."""
    if superscope is not None and superscope in held:
        return True
    return all(scope in held for scope in required)


class Decision(NamedTuple):  # a NamedTuple: made for every listed item, and a frozen dataclass costs 4x as much
    allowed: bool
    kind: Kind
    name: str
    required: tuple[str, ...]
    missing: tuple[str, ...]
    effect: Literal["read", "write"]
    confirm: bool
    workspace: str | None  # the rule's `workspace:`; None where it says none (the upstream's schema decides)
    because: str  # the rule that decided, in words: `tools[3] match "create_*"`, `default: deny`, ...
    # What the rule still asks of each call (allowed decisions only): `called` evaluates them. Empty: the decision
    # is the same for every call of this name by these scopes, and may be remembered by them.
    conditions: RuleConditions | tuple[()] = ()
    confirmer: Literal["token", "human"] | None = None  # who confirms, where a rule or a condition says so
    reason: str = ""  # a condition's reason, for the caller
    condition: str = ""  # the condition that decided: `tools[3].conditions[0]` (for the audit trail)


class Rules:
    """A policy's rules, ready for lookups: exact names first, then globs in file order; answers remembered."""

    def __init__(self, policy: Policy, tool_prefixes: tuple[str, ...] = ()) -> None:
        self.policy = policy
        self.tool_prefixes = tool_prefixes
        self._exact: dict[Kind, dict[str, tuple[int, Rule]]] = {}
        self._globs: dict[Kind, list[tuple[int, Rule, re.Pattern[str]]]] = {}
        for kind, section in _SECTION.items():
            rules = list(enumerate(getattr(policy, section)))
            self._exact[kind] = {r.match: (i, r) for i, r in rules if not _is_glob(r.match)}
            self._globs[kind] = [(i, r, pattern(r.match)) for i, r in rules if _is_glob(r.match)]
        # Each rule's conditions, compiled once (the model checked they compile): by rule index, per section.
        self.conditions: dict[Kind, dict[int, RuleConditions]] = {
            kind: {i: RuleConditions(tuple(compile_condition(c.when, c.then, c.reason,
                                                             f"{section}[{i}].conditions[{n}]")
                                           for n, c in enumerate(rule.conditions)))
                   for i, rule in enumerate(getattr(policy, section)) if rule.conditions}
            for kind, section in _SECTION.items()}
        # Rate limits on tool calls: each with its pattern, and per tool name the ones that count it (remembered).
        self.limits = tuple((limit, pattern(limit.match), limit.period_seconds / limit.rate, limit.burst or limit.rate)
                            for limit in policy.limits)
        self._limits_of: dict[str, tuple[tuple[Limit, float, int], ...]] = {}
        # Need to know: the tool rules that mask fields of results, and per (tool or None, scopes) what is masked.
        self.masks = tuple((i, rule.mask) for i, rule in enumerate(policy.tools) if rule.mask is not None)
        self._masked: dict[tuple[str | None, frozenset[str]], dict[str, int]] = {}
        self._found: dict[tuple[Kind, str], Outcome | None] = {}
        # The pin file loaded with the policy; a policy that asks for pins without one (made in code, not loaded)
        # pins nothing, so everything counts as unpinned: fail closed.
        self.pins: PinSet | None = None if policy.pins is None else (policy.pin_set or PinSet({}))
        # allowed(...) answers, per scope set: lists repeat the same names for the same callers. Lives as long as
        # this Rules object, which a policy reload replaces, so no answer outlives its policy.
        self.listing_memo: dict[tuple[frozenset[str], Kind, str, bool | None], Decision] = {}

    def find(self, kind: Kind, name: str) -> tuple[int, Rule] | None:
        found = self._exact[kind].get(name)
        if found is None:
            found = next(((i, r) for i, r, regex in self._globs[kind] if regex.match(name)), None)
        return found

    def limits_of(self, tool: str) -> tuple[tuple[Limit, float, int], ...]:
        """The limits that count calls of `tool`: (limit, interval, burst) each."""
        found = self._limits_of.get(tool)
        if found is None:
            found = tuple((limit, interval, burst) for limit, regex, interval, burst in self.limits
                          if regex.match(tool))
            if len(self._limits_of) < _CACHE_LIMIT:  # names come from clients: bounded
                self._limits_of[tool] = found
        return found

    def masked_fields(self, tool: str | None, held: frozenset[str]) -> dict[str, int]:
        """Field name -> characters kept visible, for a result of `tool` seen by a caller holding `held`; a result
        whose tool is not known (a resumed stream, a task's result) gets every mask the caller lacks the scope of."""
        key = (tool, held)
        found = self._masked.get(key)
        if found is not None:
            return found
        if tool is None:
            masks = [mask for _, mask in self.masks]
        else:
            rule = self.find("tool", tool)
            masks = [rule[1].mask] if rule is not None and rule[1].mask is not None else []
        found = {}
        for mask in masks:
            if not satisfies(held, (mask.unless,), self.policy.superscope):
                for name in mask.fields:
                    # two masks on one name: the one that shows less
                    found[name] = min(found.get(name, mask.keep_last), mask.keep_last)
        return remember(self._masked, key, found, _CACHE_LIMIT)

    def resource_workspace(self, uri: str) -> tuple[bool, str | None]:
        """(whether the rule for this URI names a workspace segment, the workspace it names there). Pure."""
        if self._exact["resource"].get(uri) is not None:
            return False, None
        for _, rule, regex in self._globs["resource"]:
            found = regex.match(uri)
            if found is not None:
                if WORKSPACE_SEGMENT not in rule.match:
                    return False, None
                return True, segment_workspace(found.group("workspace"))
        return False, None

    def outcome(self, kind: Kind, name: str) -> Outcome | None:
        """What the rule for this name asks, worked out once per name."""
        key = (kind, name)
        try:
            return self._found[key]
        except KeyError:
            pass
        found = self.find(kind, name)
        result = None
        if found is not None:
            index, rule = found
            because = f'{_SECTION[kind]}[{index}] match "{rule.match}"'
            result = Outcome(rule.scopes, rule.effect, rule.needs_confirmation, rule.workspace, because,
                             self.conditions[kind].get(index, ()),
                             rule.confirmer if rule.needs_confirmation else None)
        if len(self._found) < _CACHE_LIMIT:  # names come from clients too: never let them grow this unbounded
            self._found[key] = result
        return result


class Outcome(NamedTuple):
    required: tuple[str, ...]
    effect: Literal["read", "write"]
    confirm: bool
    workspace: str | None  # the rule's `workspace:`; None where it says none (the upstream's schema decides)
    because: str
    conditions: RuleConditions | tuple[()] = ()
    confirmer: Literal["token", "human"] | None = None


def _is_glob(match: str) -> bool:
    return any(ch in match for ch in "*?[") or WORKSPACE_SEGMENT in match


def decide(rules: Rules, held: frozenset[str], kind: Kind, name: str, read_only_hint: bool | None = None) -> Decision:
    policy = rules.policy
    if kind == "tool" and rules.tool_prefixes and not name.startswith(rules.tool_prefixes):
        return Decision(False, kind, name, (), (), "write", False, "none", "outside SCOPEGATE_TOOL_PREFIX")
    found = rules.outcome(kind, name)
    conditions: RuleConditions | tuple[()] = ()
    confirmer: Literal["token", "human"] | None = None
    if found is not None:
        required, effect, confirm, workspace, because, conditions, confirmer = found
    elif policy.default == "annotations":
        # Delegated to the upstream's hint, and only where no rule speaks: a missing hint counts as a write.
        read = kind != "tool" or read_only_hint is True
        required = (policy.read_scope if read else policy.write_scope,)  # type: ignore[assignment]
        effect = "read" if read else "write"
        confirm, workspace = not read, None
        because = f"default: annotations (readOnlyHint {read_only_hint})" if kind == "tool" else "default: annotations"
    else:
        return Decision(False, kind, name, (), (), "write", False, "none", "default: deny (no rule names it)")
    if satisfies(held, required, policy.superscope):
        return Decision(True, kind, name, required, (), effect, confirm, workspace, because, conditions, confirmer)
    missing = tuple(s for s in required if s not in held)
    return Decision(False, kind, name, required, missing, effect, confirm, workspace, because)


def remembered(rules: Rules, held: frozenset[str], kind: Kind, name: str,
               read_only_hint: bool | None = None) -> Decision:
    """decide(...), remembered: what list filtering asks of every item of every list."""
    key = (held, kind, name, read_only_hint)
    memo = rules.listing_memo
    try:
        return memo[key]
    except KeyError:
        return remember(memo, key, decide(rules, held, kind, name, read_only_hint), _CACHE_LIMIT * 5)


def called(decision: Decision, args: dict[str, Any], principal: Facts, now: float,
           key: Hashable | None = None) -> Decision:
    """An allowed decision with conditions, for this very call: denied, or held for confirmation by whom the
    strictest condition that holds says, or as it was when none holds. A condition that cannot be evaluated for
    this call denies it. Pure (given `now`; `key` names the caller's facts, so their conversion is reused)."""
    assert isinstance(decision.conditions, RuleConditions)
    verdict = decision.conditions.judge(args, principal, decision.name, now, key)
    if verdict is None:
        return decision
    because = f"{decision.because}, {_said(verdict)}"
    if verdict.then == "deny":
        return decision._replace(allowed=False, because=because, reason=verdict.reason, conditions=(),
                                 condition=verdict.condition.where)
    # Never weaker than the rule: a person's approval stays a person's when a condition asks for a token.
    confirmer = "human" if verdict.then == "human" or decision.confirmer == "human" else "token"
    return decision._replace(confirm=True, confirmer=confirmer, because=because, reason=verdict.reason,
                             conditions=(), condition=verdict.condition.where)


def _said(verdict: Verdict) -> str:
    condition = verdict.condition
    if verdict.failure is not None:
        return f"{condition.where} ({condition.source}) could not be evaluated: {verdict.failure}"
    return f"{condition.where} ({condition.source}) holds: {verdict.then}"
