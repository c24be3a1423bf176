"""Each guard runs only for the messages it acts on (`methods`, see pipeline.Guard): the plan the pipeline makes from
what its guards say; what a guard says is its own first check (asked about any other message, it passes that
message on untouched, so skipping it changes nothing); and a guard that changes a message's method is refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Config
from proxy.exchange import Exchange
from proxy.guards.approval import ELICIT_ID_PREFIX
from proxy.guards.pipeline import MethodChanged, Pipeline, build
from proxy.guards.tasks import TASK_PREFIX
from proxy.identity.loader import load_identity
from proxy.identity.principal import Principal
from proxy.policy.decide import Rules
from proxy.policy.reload import LivePolicy
from proxy.store import MemoryStore

POLICIES = Path(__file__).resolve().parent.parent / "policies"
WRITER = Principal(subject="w", credential_id="abcdef012345", label="w", kind="pat",
                   scopes=frozenset({"mcp:read", "mcp:write", "ledger:read", "ledger:write"}), workspaces=None,
                   bound_workspace=None, default_workspace=None)


def message(method: str | None, **params: Any) -> dict[str, Any]:
    if method is None:  # a response: to the proxy's own question, the kind a guard could take for itself
        return {"jsonrpc": "2.0", "id": f"{ELICIT_ID_PREFIX}x", "result": {"action": "accept"}}
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}


# Every kind of message a client sends, each shaped so that a guard that acts on it would do something with it.
MESSAGES = [
    message(None),
    message("initialize", protocolVersion="2025-11-25", capabilities={"elicitation": {}}, clientInfo={"name": "c"}),
    message("ping"),
    message("tools/list"),
    message("tools/call", name="post_journal_entry", arguments={"workspaceId": "acme", "lines": []}),
    message("tools/call", name="no_such_tool", arguments={}),
    message("prompts/get", name="month_end_close"),
    message("resources/read", uri="ledger://acme/accounts"),
    message("resources/subscribe", uri="ledger://acme/accounts"),
    message("completion/complete", ref={"type": "ref/prompt", "name": "x"}, argument={"name": "a", "value": "b"}),
    message("subscriptions/listen", notifications={"resourceSubscriptions": ["ledger://acme/accounts"]}),
    message("tasks/get", taskId=f"{TASK_PREFIX}abc"),
    message("tasks/cancel", taskId=f"{TASK_PREFIX}abc"),
    message("notifications/initialized"),
    message("logging/setLevel", level="debug"),
]


async def never_called(exchange: Exchange, msg: dict[str, Any]) -> None:
    raise AssertionError("no upstream call in these tests")


def real_pipeline(tmp_path: Path, pat_file: str) -> Pipeline:
    config = Config(upstream=URL("http://127.0.0.1:9/mcp"), listen=("127.0.0.1", 0), pat_file=pat_file,
                    policy=str(POLICIES / "pat-workspaces.yaml"))
    identity = load_identity(config, {})
    live = LivePolicy(identity.policy, Rules(identity.policy))
    return build(config, identity, MemoryStore(), None, live, never_called)


def names(guards: tuple[Any, ...]) -> list[str]:
    return [getattr(g, "__name__", None) or type(g).__name__ for g in guards]


def test_the_plans_of_the_real_pipeline(tmp_path: Path, pat_file: str) -> None:
    pipeline = real_pipeline(tmp_path, pat_file)
    plan = pipeline._by_method
    assert names(plan["tools/call"]) == ["ScopeGuard", "WorkspaceGuard", "Provenance", "RateLimits", "ConfirmGuard",
                                         "TaskGuard"]
    assert names(plan["initialize"]) == ["opening", "ClientCapabilities"]
    assert names(plan[None]) == ["ApprovalAnswers"]
    assert names(plan["tasks/get"]) == ["TaskGuard"]
    assert names(plan["prompts/get"]) == ["ScopeGuard", "WorkspaceGuard"]
    assert "ping" not in plan and pipeline._every == ()  # every guard of ours says what it acts on
    assert len(pipeline.guards) == 9  # a new guard shows up here: say its methods (or it sees every message)


async def skipped_guards_pass_untouched(pipeline: Pipeline, messages: list[dict[str, Any]]) -> int:
    """Asks every guard about every message outside its methods: each must return the very message, unchanged.
    Returns how many were asked."""
    checked = 0
    for guard in pipeline.guards:
        for msg in messages:
            if msg.get("method") in guard.methods:  # type: ignore[attr-defined]
                continue
            exchange = Exchange("r", "s", "2025-11-25", CIMultiDict(), principal=WRITER)
            pipeline.pin(exchange)
            before = copy.deepcopy(msg)
            assert await guard(exchange, msg) is msg and msg == before, (names((guard,)), msg)
            checked += 1
    return checked


async def test_a_guard_skipped_for_a_message_would_have_passed_it_on_untouched(tmp_path: Path, pat_file: str) -> None:
    assert await skipped_guards_pass_untouched(real_pipeline(tmp_path, pat_file), MESSAGES) > 60


async def test_a_guard_that_changes_the_method_is_refused() -> None:
    async def rename(exchange: Exchange, msg: dict[str, Any]) -> dict[str, Any]:
        return {**msg, "method": "tools/list"}

    exchange = Exchange("r", None, None, CIMultiDict(), principal=WRITER)
    with pytest.raises(MethodChanged):
        await Pipeline(guards=(rename,)).guard(exchange, message("tools/call", name="x"))
    renamed = await Pipeline(guards=(rename,)).guard(exchange, message("tools/list"))  # the same method: fine
    assert renamed["method"] == "tools/list"
