"""Conditions on rules (CEL): the pure decision, table-driven; fail-closed properties over missing and ill-typed
fields; `policy check` naming the line and column of a bad expression; the memo never answers for a conditioned
rule by name alone."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.policy.conditions import ConditionError, compile_condition, principal_facts
from proxy.policy.decide import Decision, Rules, called, decide, remembered
from proxy.policy.model import Policy, PolicyError, Rule, When, load_policy

PRINCIPAL = principal_facts("alice", "pat", frozenset({"ledger:read", "ledger:write"}), "acme", "accountant", None,
                            "pat-1")
NOON = datetime(2026, 12, 8, 12, 0, tzinfo=UTC).timestamp()
NIGHT = datetime(2026, 12, 8, 23, 0, tzinfo=UTC).timestamp()


def _rules() -> Rules:
    return Rules(Policy(version=1, scopes=("ledger:read", "ledger:write", "ledger:admin"), tools=(
        Rule(match="post_entry", scopes=("ledger:write",), effect="write", confirm="none", conditions=(
            When(when="args.amount > 1000", then="human", reason="postings above 1,000 need a person"),
            When(when='args.period < "2026-01"', then="deny", reason="closed periods cannot be posted to"),
            When(when='args.memo == ""', then="token", reason="an entry without a memo is confirmed first"),
        )),
        Rule(match="create_vendor", scopes=("ledger:write",), effect="write", confirm="human", conditions=(
            When(when='args.iban != ""', then="token", reason="a vendor with a bank account is confirmed"),)),
        Rule(match="admin_*", scopes=("ledger:read",), conditions=(
            When(when='!("ledger:admin" in principal.scopes)', then="deny", reason="admins only"),
            When(when='principal.kind == "oauth" && principal.client != "console"', then="deny",
                 reason="only the console's OAuth client"),)),
        Rule(match="night_batch", scopes=("ledger:read",), conditions=(
            When(when="now.getHours() < 20", then="deny", reason="runs after 20:00 UTC only"),)),
        Rule(match="plain", scopes=("ledger:read",)),
    )))


HELD = frozenset({"ledger:read", "ledger:write"})
BASE = {"amount": 10, "period": "2026-03", "memo": "rent"}

# (name, tool, arguments, principal changes, time, allowed, confirm, confirmer, the condition that decided)
TABLE: list[tuple[str, str, dict[str, Any], dict[str, Any], float, bool, bool, str | None, str]] = [
    ("no condition holds", "post_entry", BASE, {}, NOON, True, False, None, ""),
    ("above the amount: a person", "post_entry", {**BASE, "amount": 1001}, {}, NOON, True, True, "human",
     "tools[0].conditions[0]"),
    ("at the amount: nothing", "post_entry", {**BASE, "amount": 1000}, {}, NOON, True, False, None, ""),
    ("a double above the amount", "post_entry", {**BASE, "amount": 1000.5}, {}, NOON, True, True, "human",
     "tools[0].conditions[0]"),
    ("closed period: deny wins over human", "post_entry", {**BASE, "amount": 5000, "period": "2025-12"}, {}, NOON,
     False, False, None, "tools[0].conditions[1]"),
    ("empty memo: token", "post_entry", {**BASE, "memo": ""}, {}, NOON, True, True, "token",
     "tools[0].conditions[2]"),
    ("token and human both hold: human", "post_entry", {**BASE, "memo": "", "amount": 2000}, {}, NOON, True, True,
     "human", "tools[0].conditions[0]"),
    ("missing field fails closed", "post_entry", {"period": "2026-03", "memo": "x"}, {}, NOON, False, False, None,
     "tools[0].conditions[0]"),
    ("wrong type fails closed", "post_entry", {**BASE, "amount": "1001"}, {}, NOON, False, False, None,
     "tools[0].conditions[0]"),
    ("a bool is not a number", "post_entry", {**BASE, "amount": True}, {}, NOON, False, False, None,
     "tools[0].conditions[0]"),
    ("rule's human stays human under a token condition", "create_vendor", {"iban": "DE89"}, {}, NOON, True, True,
     "human", "tools[1].conditions[0]"),
    ("principal without admin scope", "admin_reset", {}, {}, NOON, False, False, None, "tools[2].conditions[0]"),
    ("principal with admin scope", "admin_reset", {}, {"scopes": ["ledger:admin"]}, NOON, True, False, None, ""),
    ("oauth through another client", "admin_reset", {}, {"scopes": ["ledger:admin"], "kind": "oauth",
                                                          "client": "cli"}, NOON, False, False, None,
     "tools[2].conditions[1]"),
    ("oauth through the console", "admin_reset", {}, {"scopes": ["ledger:admin"], "kind": "oauth",
                                                       "client": "console"}, NOON, True, False, None, ""),
    ("before 20:00 UTC", "night_batch", {}, {}, NOON, False, False, None, "tools[3].conditions[0]"),
    ("after 20:00 UTC", "night_batch", {}, {}, NIGHT, True, False, None, ""),
]


@pytest.mark.parametrize(("name", "tool", "args", "who", "now", "allowed", "confirm", "confirmer", "condition"),
                         TABLE, ids=[row[0] for row in TABLE])
def test_decision_with_conditions(name: str, tool: str, args: dict[str, Any], who: dict[str, Any], now: float,
                                  allowed: bool, confirm: bool, confirmer: str | None, condition: str) -> None:
    rules = _rules()
    base = remembered(rules, HELD, "tool", tool)
    assert base.allowed and base.conditions  # listed: some call could be allowed
    decision = called(base, args, {**PRINCIPAL, **who}, now)
    assert (decision.allowed, decision.confirm, decision.confirmer, decision.condition) == \
        (allowed, confirm, confirmer, condition)
    if condition:
        assert condition in decision.because and decision.reason
    if not allowed and "fails closed" in name:
        assert "could not be evaluated" in decision.reason


def test_no_conditions_no_change_and_the_memo_holds_only_the_base() -> None:
    rules = _rules()
    plain = remembered(rules, HELD, "tool", "plain")
    assert plain.allowed and plain.conditions == ()
    held = called(remembered(rules, HELD, "tool", "post_entry"), {**BASE, "amount": 5000}, PRINCIPAL, NOON)
    assert held.confirm
    # The memo by scopes and name still holds the decision before conditions: a later small call is not held.
    again = remembered(rules, HELD, "tool", "post_entry")
    assert not again.confirm and again.conditions and called(again, BASE, PRINCIPAL, NOON) == again


def test_missing_scope_decides_before_any_condition() -> None:
    decision = decide(_rules(), frozenset({"ledger:read"}), "tool", "post_entry")
    assert not decision.allowed and decision.missing == ("ledger:write",) and decision.conditions == ()


def test_only_named_argument_members_are_converted() -> None:
    condition = compile_condition('args.amount > 1000 && has(args.memo)', "deny", "r", "w")
    assert condition.arg_names == ("amount", "memo") and condition.uses == frozenset({"args"})
    whole = compile_condition('"amount" in args', "deny", "r", "w")
    assert whole.arg_names is None
    quoted = compile_condition('args.memo == "args[0]"', "deny", "r", "w")
    assert quoted.arg_names == ("memo",)


# --- fail closed, whatever the arguments are ---------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(args=st.dictionaries(st.sampled_from(["amount", "period", "memo", "other"]), JSON, max_size=4))
def test_a_call_is_never_let_through_by_a_condition_it_breaks(args: dict[str, Any]) -> None:
    """Any arguments at all: the call is denied, or held, or allowed only when every condition was evaluated to
    false on fields present and of a type its operator takes: never allowed because a field was missing, null, or
    of a type `>` or `<` cannot compare. (CEL's `==` compares any two values: `[] == ""` is false, so `memo`, read
    only by `==`, may be any non-null value that is not "".)"""
    decision = called(remembered(_rules(), HELD, "tool", "post_entry"), args, PRINCIPAL, NOON)
    amount, period, memo = args.get("amount"), args.get("period"), args.get("memo")
    well_typed = (type(amount) in (int, float) and not (isinstance(amount, float) and math.isnan(amount))
                  and isinstance(period, str) and memo is not None)
    if decision.allowed and not decision.confirm:
        assert well_typed and amount <= 1000 and period >= "2026-01" and memo != ""
    if not well_typed:
        assert not decision.allowed or decision.confirm
        if not decision.allowed:
            assert decision.reason


@settings(max_examples=200, deadline=None)
@given(value=JSON)
def test_ill_typed_principal_field_fails_closed(value: Any) -> None:
    decision = called(remembered(_rules(), HELD, "tool", "admin_reset"), {}, {**PRINCIPAL, "scopes": value}, NOON)
    if not isinstance(value, list) or "ledger:admin" not in value:
        assert not decision.allowed


def test_no_principal_fails_closed() -> None:
    decision = called(remembered(_rules(), HELD, "tool", "admin_reset"), {}, None, NOON)
    assert not decision.allowed and "could not be evaluated" in decision.reason


def test_a_result_that_is_not_a_bool_fails_closed() -> None:
    rules = Rules(Policy(version=1, tools=(Rule(match="t", conditions=(
        When(when="args.amount", then="token", reason="r"),)),)))
    decision = called(decide(rules, frozenset(), "tool", "t"), {"amount": 5}, PRINCIPAL, time.time())
    assert not decision.allowed and "not a bool" in decision.reason


# --- compiled at load: line and column ---------------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "message"), [
    ("args.amount >", "does not compile"),
    ("args.amount > limit", "unknown name 'limit'"),
    ("principal.email == 'x'", "principal has no field 'email'"),
    ("args.memo.lowerAscii() == 'x'", "unknown function 'lowerAscii'"),
])
def test_bad_expressions_are_refused(expression: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        compile_condition(expression, "deny", "r", "w")


def test_comprehension_names_are_not_unknown() -> None:
    condition = compile_condition("args.lines.exists(l, l.debit > 1000)", "human", "r", "w")
    assert condition.arg_names == ("lines",)


POLICY = """\
version: 1
scopes: [w]
tools:
  - match: post_entry
    scopes: [w]
    effect: write
    conditions:
      - when: "args.amount > 1000 &&"
        then: human
        reason: big
      - when: args.amount > 1000 && principal.mail == "x"
        then: deny
        reason: nope
      - when: |
          args.amount > 1000 &&
            nobody == 1
        then: deny
        reason: nope
"""


def test_policy_check_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    lines = str(raised.value).splitlines()
    assert len(lines) == 3, lines
    # `"args.amount > 1000 &&"`: the quote is column 15, the end of the expression (column 22 inside it) is 37
    assert lines[0].startswith(f"{path}:8:37: tools.0.conditions.0.when: does not compile"), lines[0]
    assert lines[1].startswith(f"{path}:11:47: tools.0.conditions.1.when: principal has no field 'mail'"), lines[1]
    assert lines[2].startswith(f"{path}:16:13: tools.0.conditions.2.when: unknown name 'nobody'"), lines[2]


def test_only_tools_conditions_may_confirm(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nprompts:\n  - match: p\n    conditions:\n      - {when: 'true', then: token, "
                    "reason: r}\n")
    with pytest.raises(PolicyError, match="only a tool's condition may ask for confirmation"):
        load_policy(path)


def test_decision_is_still_a_named_tuple_of_plain_fields() -> None:
    decision = decide(_rules(), HELD, "tool", "plain")
    assert isinstance(decision, Decision) and decision.reason == "" and decision.confirmer is None
    assert decide(_rules(), HELD, "tool", "create_vendor").confirmer == "human"


# --- explain and test: which condition or limit decided ----------------------------------------------------------

def test_explain_with_arguments_names_the_condition_and_the_limits() -> None:
    from tests.test_policies import _cli

    org = str(Path(__file__).resolve().parent.parent / "policies" / "org-ceiling.yaml")
    base = ("policy", "explain", "--policy", org, "--scopes", "perm:write", "--role", "member",
            "--tool", "create_journal_entry")
    listed = _cli(*base)
    assert listed.returncode == 0 and "tools[3].conditions[0]: when args.lines.exists" in listed.stdout
    assert "give the call's arguments" in listed.stdout
    assert "limit:     postings_per_person: 60 calls per 3600 s per person, workspace, 20 at once" in listed.stdout
    big = _cli(*base, "--args", '{"lines": [{"account": "6000", "debit": 5000}]}')
    assert big.returncode == 0 and "condition: tools[3].conditions[0] decided: postings above 1,000" in big.stdout
    assert "confirmation required, by the person at the client" in big.stdout
    small = _cli(*base, "--args", '{"lines": [{"account": "6000", "debit": 50}]}')
    assert "condition: none holds for these arguments" in small.stdout and "by token" in small.stdout
    broken = _cli(*base, "--args", '{"lines": 5}')
    assert broken.returncode == 1 and "could not be evaluated" in broken.stdout
    for bad in (("--args", "[1]"), ("--args", "{"), ("--at", "yesterday")):
        refused = _cli(*base, *bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr and "must be" in refused.stderr


def test_policy_test_cases_say_what_decided(tmp_path: Path) -> None:
    from tests.test_policies import _cli

    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nscopes: [w]\ntools:\n  - match: night\n    scopes: [w]\n    workspace: none\n"
                      "    conditions:\n"
                      "      - {when: 'now.getHours() < 20', then: deny, reason: after 20:00 only}\n"
                      "      - {when: 'principal.subject == \"mallory\"', then: deny, reason: not mallory}\n"
                      "limits:\n  - {name: twice, match: night, per: [person], rate: 2, period_seconds: 60}\n")
    cases = tmp_path / "c.yaml"
    cases.write_text(
        "cases:\n"
        "  - {name: day, credential: {scopes: [w]}, call: night, at: '2026-12-08T12:00:00Z', expect: deny,"
        " decided_by: 'tools[0].conditions[0]'}\n"
        "  - {name: mallory, credential: {scopes: [w], subject: mallory}, call: night, at: '2026-12-08T22:00:00Z',"
        " expect: deny, decided_by: 'tools[0].conditions[1]'}\n"
        "  - {name: night, credential: {scopes: [w], subject: bob}, call: night, at: '2026-12-08T22:00:00Z',"
        " expect: allow}\n"
        "  - {name: third, credential: {scopes: [w], subject: bob}, call: night, at: '2026-12-08T22:00:00Z',"
        " repeat: 2, expect: limited, decided_by: twice}\n"
        "  - {name: wrong, credential: {scopes: [w], subject: eve}, call: night, at: '2026-12-08T22:00:00Z',"
        " expect: allow, decided_by: twice}\n")
    done = _cli("policy", "test", str(policy), str(cases))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["ok    day: deny by tools[0].conditions[0]", "ok    mallory: deny by tools[0].conditions[1]",
                         "ok    night: allow", "ok    third: limited by twice"]
    assert lines[4].startswith("FAIL  wrong: expected allow by twice, got allow") and lines[5] == "4 of 5 cases pass"


def test_a_reused_context_never_carries_one_calls_arguments_into_the_next() -> None:
    base = remembered(_rules(), HELD, "tool", "post_entry")
    key = ("pat", "pat-1")
    assert called(base, {**BASE, "amount": 5000}, PRINCIPAL, NOON, key).confirmer == "human"
    later = called(base, {"period": "2026-03", "memo": "x"}, PRINCIPAL, NOON, key)  # no amount this time
    assert not later.allowed and "amount" in later.reason
    broken = called(base, {**BASE, "amount": object()}, PRINCIPAL, NOON, key)  # CEL cannot hold it
    assert not broken.allowed and "could not be evaluated" in broken.reason
    assert called(base, BASE, PRINCIPAL, NOON, key) == base  # and the next call is judged on its own


def test_a_reused_context_is_one_callers() -> None:
    base = remembered(_rules(), HELD, "tool", "admin_reset")
    admin = {**PRINCIPAL, "scopes": ["ledger:admin"]}
    assert called(base, {}, admin, NOON, ("admin",)).allowed
    assert not called(base, {}, PRINCIPAL, NOON, ("plain",)).allowed
    assert called(base, {}, lambda: admin, NOON, ("admin",)).allowed
    night = remembered(_rules(), HELD, "tool", "night_batch")
    assert not called(night, {}, PRINCIPAL, NOON, ("admin",)).allowed
    assert called(night, {}, PRINCIPAL, NIGHT, ("admin",)).allowed  # `now` moves with each call


def test_a_null_argument_a_condition_reads_fails_closed() -> None:
    """Found by the property above: CEL's `args.memo == ""` is false, not an error, when memo is null."""
    decision = called(remembered(_rules(), HELD, "tool", "post_entry"), {**BASE, "memo": None}, PRINCIPAL, NOON)
    assert not decision.allowed and "'memo' is null" in decision.reason
