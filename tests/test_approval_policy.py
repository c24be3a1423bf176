"""`confirm: human` with `approve:`: who approves and where. The loader (and so `scopegate policy check`) explains
every mistake with its file position; today's rules, without `approve`, mean what they meant (`via: client`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.policy.model import PolicyError, load_policy

HEAD = """version: 1
scopes: [journal:read, journal:write]
roles: {accountant: [journal:read, journal:write], controller: [journal:read, journal:write]}
"""
OAUTH = "oauth: {sign_in: [pat, admin_key]}\n"


def write(tmp_path: Path, rule: str, oauth: str = OAUTH) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + oauth + "tools:\n  - " + rule + "\n")
    return path


def problems(path: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return str(caught.value)


def test_page_approval_loads_with_approvers_and_four_eyes(tmp_path: Path) -> None:
    rule = ("{match: post, scopes: [journal:write], effect: write, confirm: human, approve: {via: page, "
            "approvers: {roles: [controller], subjects: [cfo@example.com]}, four_eyes: true, fresh_seconds: 60}}")
    found = load_policy(write(tmp_path, rule)).tools[0]
    assert found.on_page and found.approve is not None and found.approve.four_eyes
    assert found.approve.approvers.roles == ("controller",)
    # Without `approve` a human rule is today's: the client's own form.
    plain = load_policy(write(tmp_path, "{match: post, effect: write, confirm: human}", oauth="")).tools[0]
    assert plain.confirmer == "human" and not plain.on_page


@pytest.mark.parametrize(("rule", "oauth", "said"), [
    ("{match: post, effect: write, confirm: human, approve: {via: page, approvers: {roles: [auditor]}}}", OAUTH,
     "tools.0.approve.approvers.roles.0: role 'auditor' is not one of the policy's roles (accountant, controller)"),
    ("{match: post, effect: write, confirm: human, approve: {via: page}}", "",
     "tools.0.approve.via: `via: page` needs a way for the approver to sign in"),
    ("{match: post, effect: write, confirm: token, approve: {via: page}}", OAUTH,
     "only a rule with `confirm: human` has an `approve` section"),
    ("{match: post, effect: write, confirm: human, approve: {via: client, four_eyes: true}}", OAUTH,
     "approvers, four_eyes and fresh_seconds need `via: page`"),
    ("{match: post, effect: write, confirm: human, fallback: token, approve: {via: page}}", OAUTH,
     "tools.0.fallback: `fallback: token` would let the agent confirm"),
    ("{match: post, effect: write, confirm: human, approve: {via: email}}", OAUTH, "tools.0.approve.via"),
])
def test_mistakes_are_explained_where_they_are(tmp_path: Path, rule: str, oauth: str, said: str) -> None:
    path = write(tmp_path, rule, oauth)
    text = problems(path)
    assert said in text and text.startswith(f"{path}:"), text


def test_policy_check_names_the_mistake(tmp_path: Path) -> None:
    path = write(tmp_path, "{match: post, effect: write, confirm: human, approve: {via: page, "
                 "approvers: {roles: [auditor]}}}", oauth="")
    done = subprocess.run([sys.executable, "-m", "proxy", "policy", "check", str(path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "role 'auditor' is not one of the policy's roles" in done.stderr
    assert "`via: page` needs a way for the approver to sign in" in done.stderr
    assert "Traceback" not in done.stderr

