"""Pins at run time: every tool, prompt and resource template the upstream describes is compared with its pin wherever
its definition travels, and handled as the policy's `pins:` says (proxy/policy/pins.py decides; this keeps count).

Two places ask: the list filter (every list, every page, JSON and SSE, `list_changed` refreshes, for whichever
client) and the scope guard on calls, which asks the proxy's own catalog (`catalog.py`: the upstream's tools as the
proxy itself fetched them, never a client's view). Each drift is reported once per change: per section, name and
definition digest, so a definition that changes again is reported again, and one seen on every list is reported
once (per process: each replica reports what it sees).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.policy.decide import Rules
from proxy.policy.model import Rule
from proxy.policy.pins import KIND, SECTIONS, Judgement, definition, item_digest, judge

SEEN_LIMIT = 10_000  # reported changes remembered; past it the memory starts again (reports repeat, none is lost)


@dataclass(frozen=True, slots=True)
class Drift:
    """One change, as reported (audit record, metric): `kind` tool | prompt | template."""

    kind: str
    name: str
    status: str  # drift | unpinned | unreadable
    action: str  # hide | hold | report | show (unpinned and allowed)
    changes: tuple[str, ...]


Report = Callable[[Drift], None]


class PinWatch:
    def __init__(self, report: Report | None = None, changed: Callable[[], None] | None = None) -> None:
        self.report = report
        self.changed = changed  # told of each new change seen (the catalog then fetches again before a call)
        self.reported = 0
        self._seen: set[tuple[str, str, str | None, str]] = set()

    def item(self, rules: Rules, section: str, item: dict[str, Any]) -> Judgement:
        """An item of a list the upstream sent, judged against the policy's pins (which must be on)."""
        defined = definition(section, item)
        return self.judged(rules, section, item[SECTIONS[section][0]], defined, item_digest(defined))

    def judged(self, rules: Rules, section: str, name: str, defined: dict[str, Any] | None,
               digest: str | None) -> Judgement:
        assert rules.pins is not None and rules.policy.pins is not None
        settings = rules.policy.pins
        found = judge(rules.pins, section, name, defined, digest, settings.on_drift, settings.unpinned)
        if found.status != "ok":
            self._note(section, name, digest, found)
        return found

    def _note(self, section: str, name: str, digest: str | None, found: Judgement) -> None:
        key = (section, name, digest, found.action)
        if key in self._seen:
            return
        if len(self._seen) >= SEEN_LIMIT:
            self._seen.clear()
        self._seen.add(key)
        self.reported += 1
        if self.changed is not None:
            self.changed()
        if self.report is not None:
            self.report(Drift(KIND[section], name, found.status, found.action, found.changes))


def held_rule(rules: Rules, tool: str, confirm: str) -> Rule:
    """The rule a held tool's calls are confirmed under: its own (dry run, redaction, lifetime kept), confirmed as
    `confirm` says (human | token); a tool no rule names is a write for this purpose."""
    found = rules.find("tool", tool)
    if found is None:
        return Rule(match=tool, effect="write", confirm=confirm)
    return found[1].model_copy(update={"confirm": confirm, "fallback": "refuse"})


def held_reason(changes: tuple[str, ...]) -> str:
    return "its definition no longer matches the reviewed pin (" + "; ".join(changes) + ")"
