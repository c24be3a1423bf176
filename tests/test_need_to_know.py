"""Need to know: a tool rule's `mask:` masks named fields of its structuredContent (any depth) and the same values
in its text content, for callers without the rule's scope; masked, not dropped. Pure pieces, then the SDK client
through scopegate to the demo ledger (its outputSchema-checking client accepts the masked result), both modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from proxy.guards.need_to_know import mask_structured, mask_text, masked
from proxy.policy.decide import Rules
from proxy.policy.model import Mask, Policy, Rule
from tests.conftest import MODES, POLICIES, Recorder, sdk_client

IBAN = "DE89370400440532013000"


def test_masking_keeps_types_and_finds_values_at_any_depth() -> None:
    seen: dict[str, str] = {}
    data = {"vendor": {"name": "Acme", "iban": IBAN, "contacts": [{"email": "ap@acme.example", "phone": 5}]},
            "email": ["x@y.example", 3], "count": 2}
    out = mask_structured(data, {"iban": 4, "email": 0}, seen)
    assert out == {"vendor": {"name": "Acme", "iban": "***3000",
                              "contacts": [{"email": "***", "phone": 5}]},
                   "email": ["***", 3], "count": 2}
    assert data["vendor"]["iban"] == IBAN  # a new structure
    text = mask_text(orjson.dumps(data).decode() + f" and {IBAN} again", seen)
    assert IBAN not in text and "ap@acme.example" not in text and "x@y.example" not in text and "Acme" in text
    assert masked("abc", 4) == "***" and masked(IBAN, 4) == "***3000"


def test_which_fields_are_masked_for_whom() -> None:
    rules = Rules(Policy(version=1, scopes=("r", "pii", "admin"), superscope="admin", tools=(
        Rule(match="list_vendors", scopes=("r",), mask=Mask(fields=("iban", "email"), unless="pii", keep_last=4)),
        Rule(match="list_members", scopes=("r",), mask=Mask(fields=("email",), unless="pii")),
        Rule(match="plain", scopes=("r",)))))
    assert rules.masked_fields("list_vendors", frozenset({"r"})) == {"iban": 4, "email": 4}
    assert rules.masked_fields("list_vendors", frozenset({"r", "pii"})) == {}
    assert rules.masked_fields("list_vendors", frozenset({"admin"})) == {}  # the superscope
    assert rules.masked_fields("plain", frozenset({"r"})) == {}
    # Not known whose result: every mask the caller lacks, the one that shows less where two name a field.
    assert rules.masked_fields(None, frozenset({"r"})) == {"iban": 4, "email": 0}


def mask_policy(tmp_path: Path) -> str:
    policy = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    policy["scopes"].append("payables:iban")
    for entry in policy["tools"]:
        if entry["match"] == "create_vendor":
            entry.update({"confirm": "none", "mask": {"fields": ["iban"], "unless": "payables:iban",
                                                      "keep_last": 4}})
    path = tmp_path / "mask.yaml"
    path.write_text(yaml.safe_dump(policy))
    return str(path)


@pytest.mark.parametrize("mode", MODES)
async def test_a_caller_without_the_scope_sees_the_field_masked(mode: str, start_proxy: Any, upstream: Any,
                                                                recorder: Recorder, issue: Any,
                                                                tmp_path: Path) -> None:
    clerk = issue("clerk", ["mcp:read", "mcp:write"], workspace="acme")
    treasurer = issue("treasurer", ["mcp:read", "mcp:write", "payables:iban"], workspace="acme")
    url = await start_proxy(upstream.url, policy=mask_policy(tmp_path), pat_file=issue.path)
    async with sdk_client(url, mode, token=clerk) as client:
        result = await client.call_tool("create_vendor", {"name": "Acme", "iban": IBAN})
    assert not result.is_error  # the SDK checked it against the tool's outputSchema
    assert result.structured_content["vendor"]["iban"] == "***3000"
    assert result.structured_content["vendor"]["name"] == "Acme"
    assert all(IBAN not in item.text for item in result.content)
    assert [c["params"]["arguments"]["iban"] for c in recorder.calls("tools/call")] == [IBAN]  # the write was made
    async with sdk_client(url, mode, token=treasurer) as client:
        shown = await client.call_tool("create_vendor", {"name": "Acme", "iban": IBAN})
    assert shown.structured_content["vendor"]["iban"] == IBAN


async def test_a_result_whose_tool_is_not_known_gets_every_mask(start_proxy: Any, upstream: Any, issue: Any,
                                                                tmp_path: Path) -> None:
    """The rewriter alone, as a resumed stream or a task's result reaches it: no call of this request named it."""
    from proxy.edge.app import FORWARDER
    from proxy.exchange import Exchange
    from proxy.guards.need_to_know import NeedToKnow

    clerk = issue("clerk", ["mcp:read", "mcp:write"], workspace="acme")
    await start_proxy(upstream.url, policy=mask_policy(tmp_path), pat_file=issue.path)
    forwarder = start_proxy.runners[-1].app[FORWARDER]
    (rewriter,) = [r for r in forwarder.pipeline.rewriters if isinstance(r, NeedToKnow)]
    from multidict import CIMultiDict

    from proxy.identity.principal import Principal
    exchange = Exchange("r", None, "2025-11-25", CIMultiDict(), principal=Principal(
        "user-clerk", clerk, "clerk", "pat", frozenset({"mcp:read"})))
    forwarder.pipeline.pin(exchange)
    answer = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": orjson.dumps(
        {"iban": IBAN}).decode()}], "structuredContent": {"iban": IBAN}}}
    out = rewriter(exchange, answer, None)
    assert out["result"]["structuredContent"] == {"iban": "***3000"} and IBAN not in out["result"]["content"][0]["text"]
    assert answer["result"]["structuredContent"]["iban"] == IBAN  # the original is not changed in place
