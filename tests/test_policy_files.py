"""Policy files as an operator edits them: every error names its line and column, once, with a did-you-mean for a
misspelt key; repeated keys are refused; dead and risky rules are warned about; the published JSON Schema is the
model's and every example points editors at it; and each example policy has decision cases `policy test` runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from proxy.policy.lint import covers
from proxy.policy.model import PolicyError, load_policy, schema_text

POLICIES = Path(__file__).resolve().parent.parent / "policies"
EXAMPLES = sorted(POLICIES.glob("*.yaml"))


def scopegate(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    return subprocess.run([sys.executable, "-m", "proxy", *args], env=env, capture_output=True, text=True, timeout=60)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return [line.removeprefix(f"{path}:") for line in str(caught.value).splitlines()]


def test_every_error_has_line_column_and_a_did_you_mean(tmp_path: Path) -> None:
    text = ("version: 1\n"
            "scopes: [a]\n"
            "tools:\n"
            "  - match: x\n"
            "    scopes: [a]\n"
            "    efect: write\n"
            "  - {match: y, workspace: injct}\n"
            "superscop: a\n")
    assert errors_of(tmp_path, text) == [
        "6:5: tools.0.efect: unknown key `efect` (did you mean `effect`?)",
        "7:16: tools.1.workspace: expected 'none', 'inject', 'require' or 'verify'",
        "8:1: superscop: unknown key `superscop` (did you mean `superscope`?)",
    ]


def test_one_message_per_problem(tmp_path: Path) -> None:
    text = ("version: 1\nscopes: [mcp:read]\ntools:\n"
            "  - {match: a, scopes: [mcp:reed]}\n  - {match: b, scopes: [mcp:reed]}\n"
            "  - {match: c, scopes: [mcp:reed]}\n")
    assert errors_of(tmp_path, text) == [
        "4:25: tools.0.scopes.0: scope 'mcp:reed' is not in `scopes` (also at lines 5, 6)"]


@pytest.mark.parametrize("text", [
    "version: 1\nscopes: [a]\ntools: []\nscopes: [b]\n",  # the second list would silently win
    "version: 1\ntools:\n  - {match: x, scopes: [a], scopes: []}\n",
])
def test_duplicate_keys_are_refused(tmp_path: Path, text: str) -> None:
    (line,) = errors_of(tmp_path, text)
    assert "duplicate key (first at line" in line and line[0].isdigit()


def test_yaml_syntax_errors_have_a_position(tmp_path: Path) -> None:
    (line,) = errors_of(tmp_path, "version: 1\ntools:\n  - {match: x,\n")
    assert line.startswith("4:1: not valid YAML")


def test_shadowed_rules_and_scopeless_writes_are_warned(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nscopes: [a]\ntools:\n"
                    "  - {match: list_x, scopes: [a]}\n"
                    "  - {match: '*', scopes: [a]}\n"
                    "  - {match: 'get_*', scopes: [a]}\n"  # never decides: '*' comes first
                    "  - {match: exact_name, scopes: [a]}\n"  # exact names win over globs: fine
                    "  - {match: wipe, effect: write}\n")
    done = scopegate("policy", "check", str(path))
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"warning: {path}:6:6: tools.2.match: never decides anything: the earlier glob "
                                  "tools.1 ('*')")
    assert warnings[1].startswith(f"warning: {path}:8:5: tools.4.scopes: a write rule with no scopes")


@pytest.mark.parametrize(("earlier", "later", "shadowed"), [
    ("*", "get_*", True), ("list_*", "list_acc*", True), ("list_*", "list_[ab]*", True), ("*_read", "*x_read", True),
    ("list_*", "li*", False), ("list_*", "*_list", False), ("a*b", "a*xb", False), ("*_read", "*_readers", False),
])
def test_which_globs_shadow_which(earlier: str, later: str, shadowed: bool) -> None:
    assert covers(earlier, later) is shadowed


def test_the_published_schema_is_the_models_and_every_example_uses_it() -> None:
    published = (POLICIES / "policy.schema.json").read_text()
    assert published == schema_text() + "\n", "regenerate: scopegate policy schema > policies/policy.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(published))
    for example in EXAMPLES:
        text = example.read_text()
        assert text.startswith("# yaml-language-server: $schema=./policy.schema.json\n"), example.name
        assert [e.message for e in validator.iter_errors(yaml.safe_load(text))] == [], example.name
    broken = {"version": 1, "tools": [{"match": "x", "efect": "write"}]}
    assert not validator.is_valid(broken)  # an editor flags what the loader refuses
    for confirm in (True, False, "human"):  # ... and accepts what the loader accepts
        assert validator.is_valid({"version": 1, "tools": [{"match": "x", "effect": "write", "confirm": confirm}]})
    assert not validator.is_valid({"version": 1, "tools": [{"match": "x", "confirm": "maybe"}]})


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_policy_passes_its_cases(policy: Path) -> None:
    cases = POLICIES / "cases" / policy.name
    assert cases.exists(), f"every example policy has decision cases: {cases}"
    done = scopegate("policy", "test", str(policy), str(cases))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and done.stdout.strip().endswith("cases pass")


def test_a_failing_case_names_itself_and_exits_1(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - name: readers write\n    credential: {scopes: [mcp:read], workspace: acme}\n"
                     "    call: create_vendor\n    expect: confirm\n"
                     "  - name: bound readers list\n    credential: {scopes: [mcp:read], workspace: acme}\n"
                     "    call: list_accounts\n    expect: allow\n    workspace: globex\n")
    done = scopegate("policy", "test", str(POLICIES / "pat-workspaces.yaml"), str(cases))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("FAIL  readers write: expected confirm, got deny (")
    assert lines[1].startswith("FAIL  bound readers list: expected allow in globex, got allow in acme")
    cases.write_text("cases:\n  - {name: x, call: y, expct: allow}\n")
    done = scopegate("policy", "test", str(POLICIES / "pat-workspaces.yaml"), str(cases))
    assert done.returncode == 2 and f"{cases}:2:24: cases.0.expct: unknown key `expct` (did you mean `expect`?)" \
        in done.stderr
