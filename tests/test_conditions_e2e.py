"""Conditions end to end: the SDK client in both modes through scopegate to the demo ledger. A small posting goes
straight through; one above the amount is held for the person at the client (who is told why) and applied once;
one in a closed year is refused with the policy's reason and never reaches the ledger; a condition that cannot be
evaluated (a field missing) refuses too. Every effect is asserted on what the upstream received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp.shared.exceptions import MCPError

from tests.conftest import MODES, POLICIES, Recorder
from tests.test_human_approval import ENTRY, TOOL, Person, client, posted

BIG = {**ENTRY, "memo": "machine", "lines": [{"account": "6000", "debit": 5000}, {"account": "1000", "credit": 5000}]}
OLD = {**ENTRY, "date": "2025-12-31", "memo": "late"}


def conditions_policy(tmp_path: Path) -> str:
    """pat-workspaces with the posting let through unconfirmed, except where its conditions say otherwise."""
    policy = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    for entry in policy["tools"]:
        if entry["match"] == TOOL:
            entry.update({"confirm": "none", "fallback": "refuse", "conditions": [
                {"when": "args.lines.exists(l, has(l.debit) && l.debit > 1000)", "then": "human",
                 "reason": "postings above 1,000 need a person's approval"},
                {"when": 'args.date < "2026-01-01"', "then": "deny", "reason": "2025 is closed: post in 2026"},
            ]})
    path = tmp_path / "conditions.yaml"
    path.write_text(yaml.safe_dump(policy))
    return str(path)


@pytest.mark.parametrize("mode", MODES)
async def test_a_condition_holding_and_not_holding(mode: str, start_proxy: Any, upstream: Any, recorder: Recorder,
                                                   tmp_path: Path) -> None:
    url = await start_proxy(upstream.url, policy=conditions_policy(tmp_path))
    person = Person("accept", approve=True)
    async with client(url, mode, person) as sdk:
        assert TOOL in {t.name for t in (await sdk.list_tools()).tools}  # some call could be allowed: listed
        small = await sdk.call_tool(TOOL, ENTRY)
        assert not small.is_error and small.structured_content["posted"]["memo"] == "supplies"
        assert person.shown == []  # nobody was asked: no condition held
        big = await sdk.call_tool(TOOL, BIG)
        assert not big.is_error and big.structured_content["posted"]["memo"] == "machine"
        (shown,) = person.shown
        assert "postings above 1,000 need a person's approval" in shown.message and '"machine"' in shown.message
        with pytest.raises(MCPError) as refused:
            await sdk.call_tool(TOOL, OLD)
        assert "2025 is closed: post in 2026" in str(refused.value)
        with pytest.raises(MCPError) as broken:  # `date` missing: the condition cannot be evaluated, so refused
            await sdk.call_tool(TOOL, {k: v for k, v in ENTRY.items() if k != "date"})
        assert "could not be evaluated" in str(broken.value) and "date" in str(broken.value)
    assert posted(recorder) == [ENTRY, BIG]  # each once; the old-year and the broken one never arrived


async def test_a_person_declining_a_held_call_forwards_nothing(start_proxy: Any, upstream: Any,
                                                               recorder: Recorder, tmp_path: Path) -> None:
    url = await start_proxy(upstream.url, policy=conditions_policy(tmp_path))
    async with client(url, "auto", Person("decline", None)) as sdk:
        result = await sdk.call_tool(TOOL, BIG)
    assert result.is_error and posted(recorder) == []


async def test_the_audit_trail_and_metrics_name_the_condition_and_the_limit(start_proxy: Any, upstream: Any,
                                                                            recorder: Recorder,
                                                                            tmp_path: Path) -> None:
    import orjson

    from tests.test_audit import flush
    from tests.test_rate_limits import _metrics

    policy = yaml.safe_load(Path(conditions_policy(tmp_path)).read_text())
    policy["limits"] = [{"name": "one_read", "match": "list_accounts", "rate": 1, "period_seconds": 60}]
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(policy))
    trail = tmp_path / "audit.jsonl"
    url = await start_proxy(upstream.url, policy=str(path), audit_sink=f"file:{trail}")
    async with client(url, "auto", Person("accept")) as sdk:
        with pytest.raises(MCPError):
            await sdk.call_tool(TOOL, OLD)
        assert not (await sdk.call_tool("list_accounts", {"workspaceId": "acme"})).is_error
        with pytest.raises(MCPError):
            await sdk.call_tool("list_accounts", {"workspaceId": "acme"})
    await flush(start_proxy)
    records = [r for r in map(orjson.loads, trail.read_text().splitlines()) if "decision" in r]
    index = next(i for i, rule in enumerate(policy["tools"]) if rule["match"] == TOOL)
    (denied,) = [r for r in records if r["target"] == TOOL]
    assert (denied["decision"], denied["reason"]) == ("deny", f"condition tools[{index}].conditions[1]")
    limited = [r for r in records if r["target"] == "list_accounts" and r["decision"] == "limited"]
    assert [r["reason"] for r in limited] == ["one_read"]
    metrics = await _metrics(start_proxy)
    assert 'scopegate_rate_limited_total{limit="one_read"} 1.0' in metrics
