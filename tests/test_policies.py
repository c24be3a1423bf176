"""The policy engine: the pure decision, then the four example policies end to end through the proxy (SDK client in
both protocol modes, raw HTTP for the refusals), asserting on what the upstream received."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from yarl import URL

from proxy.identity.pats import create_record, write_records
from proxy.policy.decide import Rules, decide
from proxy.policy.model import Policy, Rule, load_policy
from tests.conftest import MODERN_META, MODES, POLICIES, Recorder, sdk_client, wait_until

# --- the decision, pure ------------------------------------------------------------------------------------------


def _rules(**policy: Any) -> Rules:
    return Rules(Policy(version=1, **policy))


def test_exact_name_wins_over_an_earlier_glob() -> None:
    rules = _rules(tools=(Rule(match="list_*", scopes=("a",)), Rule(match="list_secrets", scopes=("b",))))
    assert decide(rules, frozenset({"a"}), "tool", "list_accounts").allowed
    secret = decide(rules, frozenset({"a"}), "tool", "list_secrets")
    assert not secret.allowed and secret.missing == ("b",) and secret.because == 'tools[1] match "list_secrets"'


def test_default_deny_and_delegated_annotations() -> None:
    denied = decide(_rules(), frozenset({"x"}), "tool", "anything")
    assert not denied.allowed and denied.because.startswith("default: deny")
    rules = _rules(scopes=("r", "w"), default="annotations", read_scope="r", write_scope="w",
                   tools=(Rule(match="wipe", scopes=("w",), effect="write"),))
    assert decide(rules, frozenset({"r"}), "tool", "peek", read_only_hint=True).allowed
    unknown = decide(rules, frozenset({"r"}), "tool", "peek", read_only_hint=None)  # no list seen yet: a write
    assert not unknown.allowed and unknown.missing == ("w",) and unknown.confirm
    # A rule always wins over the hint, even a hint claiming read-only.
    assert not decide(rules, frozenset({"r"}), "tool", "wipe", read_only_hint=True).allowed


def test_superscope_and_prefixes() -> None:
    rules = Rules(Policy(version=1, superscope="admin", tools=(Rule(match="*", scopes=("x", "y")),)),
                  tool_prefixes=("list_", "get_"))
    assert decide(rules, frozenset({"admin"}), "tool", "list_a").allowed
    outside = decide(rules, frozenset({"admin"}), "tool", "delete_a")
    assert not outside.allowed and outside.because == "outside SCOPEGATE_TOOL_PREFIX"


def test_example_policies_load_and_the_skills_table_holds() -> None:
    for path in POLICIES.glob("*.yaml"):
        load_policy(path)
    ledger = Rules(load_policy(POLICIES / "ledger-scopes.yaml"))
    need = {r.match: set(r.scopes) for r in ledger.policy.prompts}
    assert need == {
        "process_incoming_invoice": {"payables:read", "payables:write", "journal:read", "journal:write"},
        "process_outgoing_invoice": {"receivables:read", "receivables:write", "journal:write", "bank:read",
                                     "bank:write"},
        "reconcile_bank_transactions": {"bank:read", "bank:write", "journal:read"},
        "tenant_setup_migration": {"admin"},
    }


# --- end to end ----------------------------------------------------------------------------------------------------


def _headers(token: str, method: str, name: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
           "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28",
           "Mcp-Method": method}
    if name:
        out["Mcp-Name"] = name
    return out


async def raw(url: str, token: str, method: str, params: dict | None = None, name: str | None = None,
              msg_id: int = 1) -> tuple[int, dict[str, str], Any]:
    body = orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method,
                         "params": {**(params or {}), "_meta": MODERN_META}})
    name = name or (params or {}).get("name") or (params or {}).get("uri")  # Mcp-Name says what the body names
    async with aiohttp.ClientSession() as http, http.post(url, data=body,
                                                          headers=_headers(token, method, name)) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


async def visible(url: str, token: str, mode: str) -> tuple[set[str], set[str]]:
    async with sdk_client(url, mode, token=token) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        prompts = {p.name for p in (await client.list_prompts()).prompts}
    return tools, prompts


def assert_refused(status: int, headers: dict, answer: dict, name: str, missing: list[str]) -> None:
    assert status == 403
    assert answer["error"]["code"] == -32003 and answer["error"]["data"]["name"] == name
    assert answer["error"]["data"]["missing_scopes"] == missing
    if missing:
        assert headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope", scope="')
        assert '/.well-known/oauth-protected-resource/mcp"' in headers["WWW-Authenticate"]
        assert all(scope in answer["error"]["message"] for scope in missing)
    else:
        assert "WWW-Authenticate" not in headers


@pytest.mark.parametrize("mode", MODES)
async def test_ledger_scopes(mode: str, start_proxy: Any, upstream: Any, recorder: Recorder, issue: Any) -> None:
    bookkeeper = issue("bookkeeper", ["journal:read", "journal:write", "payables:read", "payables:write"])
    admin_key = issue("tenant", ["admin"], kind="admin_key")
    url = await start_proxy(upstream.url, policy=str(POLICIES / "ledger-scopes.yaml"), pat_file=issue.path)

    tools, prompts = await visible(url, bookkeeper, mode)
    assert tools == {"list_accounts", "list_journal_entries", "create_journal_entry", "delete_journal_entry",
                     "create_vendor"}
    assert prompts == {"process_incoming_invoice"}
    tools, prompts = await visible(url, admin_key, mode)
    assert "change_billing_plan" in tools and "tenant_setup_migration" in prompts and len(tools) == 12

    recorder.received.clear()
    status, headers, answer = await raw(url, bookkeeper, "tools/call",
                                        {"name": "get_trial_balance", "arguments": {"workspaceId": "acme"}},
                                        name="get_trial_balance")
    assert_refused(status, headers, answer, "get_trial_balance", ["reports:read"])
    status, headers, answer = await raw(url, bookkeeper, "prompts/get",
                                        {"name": "reconcile_bank_transactions"}, name="reconcile_bank_transactions")
    assert_refused(status, headers, answer, "reconcile_bank_transactions", ["bank:read", "bank:write"])
    assert recorder.received == []


async def test_oauth_never_sees_admin_or_config(start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    secret = "dev-secret-for-tests-0123456789abcdef"
    audience = "https://mcp.test/mcp"
    url = await start_proxy(upstream.url, policy=str(POLICIES / "ledger-scopes.yaml"), jwt_issuer="https://as.test",
                            jwt_dev_hs256_secret=secret, public_url=URL(audience))
    claims = {"iss": "https://as.test", "aud": audience, "sub": "agent", "exp": int(time.time()) + 60,
              "scope": "admin config:write config:read journal:read"}
    token = jwt.encode(claims, secret, algorithm="HS256")
    tools, prompts = await visible(url, token, "auto")
    assert tools == {"list_accounts", "list_journal_entries"}  # journal:read only: admin and config:* withheld
    assert "tenant_setup_migration" not in prompts
    status, headers, answer = await raw(url, token, "tools/call", {"name": "change_billing_plan",
                                                                   "arguments": {"plan": "team"}})
    assert_refused(status, headers, answer, "change_billing_plan", ["config:write"])


@pytest.mark.parametrize("mode", MODES)
async def test_pat_workspaces(mode: str, start_proxy: Any, upstream: Any, recorder: Recorder, issue: Any) -> None:
    reader = issue("review script", ["mcp:read"], workspace="acme")
    writer = issue("agent", ["mcp:read", "mcp:write"])
    url = await start_proxy(upstream.url, pat_file=issue.path)  # pat-workspaces.yaml is the default policy
    reads = {"list_accounts", "list_journal_entries", "get_trial_balance", "list_bank_transactions",
             "get_period_status", "run_month_end_report"}
    tools, _ = await visible(url, reader, mode)
    assert tools == reads
    tools, _ = await visible(url, writer, mode)
    assert tools == reads | {"create_journal_entry", "reconcile_bank_transaction", "create_vendor", "lock_period",
                             "delete_journal_entry"}  # org tools: no rule names them, denied by default
    recorder.received.clear()
    status, headers, answer = await raw(url, reader, "tools/call", {"name": "lock_period", "arguments": {
        "workspaceId": "acme", "period": "2026-10"}}, name="lock_period")
    assert_refused(status, headers, answer, "lock_period", ["mcp:write"])
    status, headers, answer = await raw(url, writer, "tools/call", {"name": "invite_member", "arguments": {
        "email": "x@example.com"}}, name="invite_member")
    assert_refused(status, headers, answer, "invite_member", [])  # unknown to the policy: no step-up offered
    assert recorder.received == []


@pytest.mark.parametrize("mode", MODES)
async def test_app_token_with_prefix_allow_list(mode: str, start_proxy: Any, app_token_upstream: str,
                                                issue: Any) -> None:
    clerk = issue("clerk", ["store:read", "store:write"])
    url = await start_proxy(app_token_upstream, policy=str(POLICIES / "app-token.yaml"), pat_file=issue.path,
                            tool_prefix=("list_", "get_"), env={"SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN":
                                                                "commerce-app-token-42"})
    tools, _ = await visible(url, clerk, mode)
    assert tools == {"list_accounts", "list_journal_entries", "get_trial_balance", "list_bank_transactions",
                     "get_period_status"}  # the upstream accepted the proxy's app token; the prefixes narrowed it
    status, headers, answer = await raw(url, clerk, "tools/call", {"name": "create_vendor", "arguments": {
        "workspaceId": "acme", "name": "Paper Co"}}, name="create_vendor")
    assert_refused(status, headers, answer, "create_vendor", [])


def test_app_token_policy_refuses_to_start_without_the_token(tmp_path: Path) -> None:
    from proxy.config import Config, ConfigError
    from proxy.identity.loader import load_identity

    record, _ = create_record(kind="pat", label="x", subject="x", scopes=[], workspace=None, workspaces=None,
                              role=None, expires_in=60)
    write_records(tmp_path / "p.yaml", [record])
    config = Config(upstream=URL("http://127.0.0.1:1/mcp"), policy=str(POLICIES / "app-token.yaml"),
                    pat_file=str(tmp_path / "p.yaml"))
    with pytest.raises(ConfigError, match="SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN"):
        load_identity(config, {})


@pytest.mark.parametrize("mode", MODES)
async def test_org_ceiling(mode: str, start_proxy: Any, upstream: Any, recorder: Recorder, issue: Any) -> None:
    viewer = issue("viewer", role="viewer", permissions={"acme": "write"})
    member = issue("member", role="member", permissions={"acme": "write"},
                   org_capabilities={"can_manage_kg": True, "can_manage_billing": True})
    owner = issue("owner", role="owner", permissions={"acme": "admin"},
                  org_capabilities={"can_manage_billing": True, "can_lifecycle": True})
    url = await start_proxy(upstream.url, policy=str(POLICIES / "org-ceiling.yaml"), pat_file=issue.path)
    reads = {"list_accounts", "list_journal_entries", "get_trial_balance", "list_bank_transactions",
             "get_period_status", "run_month_end_report"}
    writes = {"create_journal_entry", "reconcile_bank_transaction", "create_vendor"}
    assert (await visible(url, viewer, mode))[0] == reads  # the grant says write; the role says read
    assert (await visible(url, member, mode))[0] == reads | writes | {"rebuild_knowledge_graph"}
    assert (await visible(url, owner, mode))[0] == reads | writes | {
        "delete_journal_entry", "lock_period", "change_billing_plan"}
    recorder.received.clear()
    # The member's credential carries the billing flag, but members lack it: accessDenied, and no self-escalation.
    status, headers, answer = await raw(url, member, "tools/call", {"name": "change_billing_plan", "arguments": {
        "plan": "enterprise"}}, name="change_billing_plan")
    assert_refused(status, headers, answer, "change_billing_plan", ["can_manage_billing"])
    assert recorder.received == []


async def test_batch_only_the_refused_element_is_answered(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                          issue: Any) -> None:
    reader = issue("reader", ["mcp:read"])
    url = await start_proxy(upstream.url, pat_file=issue.path)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_journal_entry",
                                                                       "arguments": {"workspaceId": "acme",
                                                                                     "entry_id": "je-1"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 42}},
    ]
    headers = {"Authorization": f"Bearer {reader}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}  # no version header: 2025-03-26, batches allowed
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(batch), headers=headers) as resp:
        answers = orjson.loads(await resp.read())
    (received,) = recorder.posts()
    assert received.json() == [batch[1]]  # only the allowed element went upstream
    by_id = {a.get("id"): a for a in answers}
    assert by_id[1]["error"]["code"] == -32003 and by_id[3]["error"]["code"] == -32602
    # The SDK upstream refuses arrays; its answer is kept beside the proxy's own.
    assert any(a.get("id") is None and "error" in a for a in answers)


async def test_lists_are_private_and_resources_gated(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                     issue: Any) -> None:
    payables = issue("payables clerk", ["payables:read", "payables:write"])
    journal = issue("journal reader", ["journal:read"])
    url = await start_proxy(upstream.url, policy=str(POLICIES / "ledger-scopes.yaml"), pat_file=issue.path)
    status, _, answer = await raw(url, payables, "tools/list", name=None)
    assert status == 200 and answer["result"]["cacheScope"] == "private"
    assert [t["name"] for t in answer["result"]["tools"]] == ["create_vendor"]
    status, _, answer = await raw(url, payables, "resources/templates/list")
    assert answer["result"]["resourceTemplates"] == []
    status, _, answer = await raw(url, journal, "resources/templates/list")
    assert [t["uriTemplate"] for t in answer["result"]["resourceTemplates"]] == [
        "ledger://{workspaceId}/chart-of-accounts"]
    uri = "ledger://acme/chart-of-accounts"
    status, headers, answer = await raw(url, payables, "resources/read", {"uri": uri}, name=uri)
    assert_refused(status, headers, answer, uri, ["journal:read"])
    status, _, answer = await raw(url, journal, "resources/read", {"uri": uri}, name=uri)
    assert status == 200 and "Bank" in answer["result"]["contents"][0]["text"]


async def test_task_augmented_call_is_gated(proxy_url: str, recorder: Recorder) -> None:
    from tests.conftest import TOKENS

    recorder.received.clear()
    status, headers, answer = await raw(proxy_url, TOKENS["reader"], "tools/call", {
        "name": "create_vendor", "arguments": {"workspaceId": "acme", "name": "X"}, "task": {"ttl": 60000}},
        name="create_vendor")
    assert_refused(status, headers, answer, "create_vendor", ["mcp:write"])
    assert recorder.received == []


# --- policy check / explain / hot reload -----------------------------------------------------------------------


def _cli(*args: str) -> Any:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    return subprocess.run([sys.executable, "-m", "proxy", *args], env=env, capture_output=True, text=True,
                          timeout=30)


def test_policy_check(tmp_path: Path) -> None:
    for path in sorted(POLICIES.glob("*.yaml")):
        done = _cli("policy", "check", str(path))
        assert done.returncode == 0 and ": ok (" in done.stdout, done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nscopes: [a]\ntools:\n  - {match: x, scopes: [b], effect: maybe}\n"
                   "  - {match: y, scopes: [a], confirm: sometimes}\nprompts: nope\n")
    done = _cli("policy", "check", str(bad))
    assert done.returncode == 2
    errors = done.stderr.strip().splitlines()
    assert f"{bad}:4:29: tools.0.effect: expected 'read' or 'write'" in errors
    assert any(line.startswith(f"{bad}:5:29: tools.1.confirm:") for line in errors)
    assert f"{bad}:6:1: prompts: expected a list" in errors
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("version: 1\nscopes: [a]\ntools:\n  - {match: x, scopes: [b]}\n  - {match: x, scopes: [a]}\n")
    done = _cli("policy", "check", str(unknown))
    assert done.returncode == 2
    assert f"{unknown}:4:25: tools.0.scopes.0: scope 'b' is not in `scopes`" in done.stderr
    assert f"{unknown}:5:6: tools.1.match: 'x' is matched by an earlier rule already" in done.stderr


def test_policy_explain(issue: Any) -> None:
    ledger = str(POLICIES / "ledger-scopes.yaml")
    done = _cli("policy", "explain", "--policy", ledger, "--scopes", "journal:read payables:write",
                "--tool", "reconcile_bank_transaction")
    assert done.returncode == 1
    assert done.stdout.startswith("DENY tool reconcile_bank_transaction")
    assert 'rule:      tools[8] match "reconcile_bank_transaction"' in done.stdout
    assert "missing:   bank:write" in done.stdout
    done = _cli("policy", "explain", "--policy", ledger, "--scopes", "admin", "--kind", "oauth",
                "--prompt", "tenant_setup_migration")
    assert done.returncode == 1 and "effective: (no scopes)" in done.stdout
    token = issue("explained", ["payables:read", "payables:write", "journal:read", "journal:write"],
                  workspace="acme")
    done = _cli("policy", "explain", "--policy", ledger, "--token", token, "--pat-file", issue.path,
                "--prompt", "process_incoming_invoice", "--workspace", "globex")
    assert done.returncode == 0 and done.stdout.startswith("ALLOW prompt process_incoming_invoice")
    assert "workspace: globex is NOT one the credential holds" in done.stdout
    assert token not in done.stdout


async def test_hot_reload(start_proxy: Any, upstream: Any, recorder: Recorder, issue: Any, tmp_path: Path) -> None:
    from proxy.edge.app import RELOADER

    writer = issue("writer", ["mcp:read", "mcp:write"])
    path = tmp_path / "live-policy.yaml"
    original = (POLICIES / "pat-workspaces.yaml").read_text()
    path.write_text(original)
    url = await start_proxy(upstream.url, policy=str(path), pat_file=issue.path)
    assert "delete_journal_entry" in (await visible(url, writer, "auto"))[0]

    path.write_text(original.replace("  - {match: delete_journal_entry", "  # - {match: delete_journal_entry"))
    deadline = time.monotonic() + 5
    while "delete_journal_entry" in (await visible(url, writer, "auto"))[0]:
        assert time.monotonic() < deadline, "the changed policy was not picked up"
        await asyncio.sleep(0.2)
    status, _, _ = await raw(url, writer, "tools/call", {"name": "delete_journal_entry", "arguments": {
        "workspaceId": "acme", "entry_id": "je-1"}}, name="delete_journal_entry")
    assert status == 403  # lists and calls changed together

    path.write_text("version: 1\ntools: [{match: '*', effect: everything}]\n")  # invalid: refused
    reloader = start_proxy.runners[-1].app[RELOADER]
    assert await wait_until(lambda: reloader.results["failure"] >= 1)
    tools = (await visible(url, writer, "auto"))[0]
    assert "list_accounts" in tools and "delete_journal_entry" not in tools  # the last good policy stays

