"""The official TypeScript SDK client (npm @modelcontextprotocol/sdk, installed by this test into .cache/) through
scopegate, in front of a FastMCP upstream whose tools all declare an outputSchema: a token preview and its
confirmation, a task-augmented held write (callToolStream), and a write a person approves through elicitation.
Assertions about effects are made on what the upstream received."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKENS, Upstream, npm_installed
from tests.fastmcp_billing import POLICY, applied, billing_upstream  # noqa: F401  (the `billing` fixture)

SDK = "@modelcontextprotocol/sdk@1.32.2"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "ts-sdk"
SCRIPT = Path(__file__).resolve().parent / "ts" / "confirm_client.mjs"


@pytest.fixture(scope="session")
def ts_sdk() -> Path:
    """The SDK installed once into a folder the tests own (re-used while the pinned version stays the same)."""
    return npm_installed(SDK, CACHE)


async def test_typescript_sdk_confirms_previews_tasks_and_human_approval(ts_sdk: Path, start_proxy: Any,
                                                                          billing: Upstream,
                                                                          tmp_path: Path) -> None:
    billing.recorder.received.clear()
    token_policy = tmp_path / "billing.yaml"
    token_policy.write_text(POLICY)
    human_policy = tmp_path / "billing-human.yaml"
    human_policy.write_text(POLICY.replace("{match: void_invoice, scopes: [mcp:read, mcp:write], effect: write}",
                                           "{match: void_invoice, scopes: [mcp:read, mcp:write], effect: write, "
                                           "confirm: human}"))
    tokens = await start_proxy(billing.url, policy=str(token_policy))
    human = await start_proxy(billing.url, policy=str(human_policy))
    script = ts_sdk / SCRIPT.name
    shutil.copyfile(SCRIPT, script)  # beside its node_modules, where Node resolves the SDK from

    import asyncio

    process = await asyncio.create_subprocess_exec("node", str(script), tokens, human, TOKENS["writer"],
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    out = json.loads(stdout)

    assert out["preview"]["status"] == "confirmation_required"  # the SDK checked it against the outputSchema
    assert out["done"]["customer"] == "TS Co"
    kinds = [m["type"] for m in out["stream"]]
    assert kinds[0] == "taskCreated" and kinds[-1] == "result"
    assert out["stream"][-1]["result"]["status"] == "confirmation_required"
    assert out["approved"]["isError"] is False and isinstance(out["approved"]["structured"]["result"], int)
    assert "void_invoice" in out["approved"]["shown"][0]

    assert [c["arguments"] for c in applied(billing.recorder, "create_invoice")] == [{"customer": "TS Co",
                                                                                      "amount": 42}]
    assert [c["arguments"] for c in applied(billing.recorder, "void_invoice")] == [{"number": 1}]
