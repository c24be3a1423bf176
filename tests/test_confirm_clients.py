"""Confirmation with real clients on tools that declare an outputSchema (a FastMCP upstream): the preview fits the
advertised contract, so the official Python SDK client (both modes) and fastmcp's own Client accept it; and a
task-augmented call to a held write gets a task (held by the proxy) whose result is the preview. Every assertion
about an effect is made on what the upstream received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import mcp_types as types
import pytest

from proxy.guards.confirmation import PREVIEW_SCHEMA, with_preview
from tests.conftest import MODES, TOKENS, Upstream, sdk_client
from tests.fastmcp_billing import POLICY, applied, billing_upstream  # noqa: F401  (the `billing` fixture)
from tests.rawmcp import LegacySession, rpc


@pytest.fixture
async def billing_proxy(start_proxy: Any, billing: Upstream, tmp_path: Path) -> str:
    billing.recorder.received.clear()
    policy = tmp_path / "billing.yaml"
    policy.write_text(POLICY)
    return await start_proxy(billing.url, policy=str(policy))


PREVIEW = {"status": "confirmation_required", "preview": {"tool": "t"}, "confirmationToken": "sgc_x",
           "expiresAt": "2026-01-01T00:00:00Z"}


def test_widened_schema_accepts_own_output_and_preview_only() -> None:
    own = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
           "properties": {"invoice": {"$ref": "#/$defs/Invoice"}, "status": {"type": "integer"}},
           "required": ["invoice"], "additionalProperties": False,
           "$defs": {"Invoice": {"type": "object", "properties": {"n": {"type": "integer"},
                                                                  "next": {"$ref": "#/$defs/Invoice"}},
                                 "required": ["n"], "default": {"$ref": "#/not-a-ref"}}}}
    wide = with_preview(own)
    assert wide["type"] == "object" and wide["$schema"] == own["$schema"] and "$schema" not in wide["anyOf"][0]
    assert wide["anyOf"][1] == PREVIEW_SCHEMA and "status" not in wide["properties"]
    assert wide["anyOf"][0]["$defs"]["Invoice"]["default"] == {"$ref": "#/not-a-ref"}  # data, not a schema
    check = jsonschema.Draft202012Validator(wide)
    assert check.is_valid({"invoice": {"n": 1, "next": {"n": 2}}, "status": 3})
    assert check.is_valid(PREVIEW)
    assert not check.is_valid({"invoice": {"n": "1"}})  # $refs still resolve: the nested type is still checked
    assert not check.is_valid({"invoice": {"n": 1, "next": {"n": "x"}}})
    assert not check.is_valid({"status": "confirmation_required"})  # neither: no preview, no invoice
    assert not check.is_valid({**PREVIEW, "status": "done"})
    assert with_preview(None) is None
    with_id = {"$id": "urn:x", "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
               "$defs": {"A": {"type": "string"}}}
    assert with_preview(with_id)["anyOf"][0]["properties"]["a"]["$ref"] == "#/$defs/A"  # relative to its own $id
    assert jsonschema.Draft202012Validator(with_preview(with_id)).is_valid({"a": "x"})


@pytest.mark.parametrize("mode", MODES)
async def test_python_sdk_previews_and_confirms_tools_with_output_schemas(mode: str, billing_proxy: str,
                                                                          billing: Upstream) -> None:
    async with sdk_client(billing_proxy, mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["create_invoice"].output_schema["anyOf"][1] == PREVIEW_SCHEMA
        assert "anyOf" not in tools["list_invoices"].output_schema  # reads are not held: their contract stands
        assert "status confirmation_required" in tools["create_invoice"].description

        # The SDK checks structured results against the outputSchema it was shown: a preview must pass.
        preview = await client.call_tool("create_invoice", {"customer": "Acme", "amount": 120})
        content = preview.structured_content
        assert not preview.is_error and content["status"] == "confirmation_required"
        assert applied(billing.recorder, "create_invoice") == []
        done = await client.call_tool("create_invoice", {"customer": "Acme", "amount": 120,
                                                         "confirmationToken": content["confirmationToken"]})
        assert not done.is_error and done.structured_content["customer"] == "Acme"

        wrapped = await client.call_tool("void_invoice", {"number": 99})
        token = wrapped.structured_content["confirmationToken"]
        voided = await client.call_tool("void_invoice", {"number": 99, "confirmationToken": token})
        assert not voided.is_error and isinstance(voided.structured_content["result"], int)
    assert [c["arguments"] for c in applied(billing.recorder, "create_invoice")] == [
        {"customer": "Acme", "amount": 120}]
    assert [c["arguments"] for c in applied(billing.recorder, "void_invoice")] == [{"number": 99}]


async def test_fastmcp_client_previews_and_confirms(billing_proxy: str, billing: Upstream) -> None:
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    transport = StreamableHttpTransport(billing_proxy, headers={"Authorization": f"Bearer {TOKENS['writer']}"})
    async with Client(transport) as client:
        preview = await client.call_tool("void_invoice", {"number": 7})
        assert not preview.is_error and preview.structured_content["status"] == "confirmation_required"
        token = preview.structured_content["confirmationToken"]
        done = await client.call_tool("void_invoice", {"number": 7, "confirmationToken": token})
        assert not done.is_error and isinstance(done.data, int)  # fastmcp still unwraps the tool's own result
        made = await client.call_tool("create_invoice", {"customer": "Bolt", "amount": 5})
        assert made.structured_content["status"] == "confirmation_required"
    assert [c["arguments"] for c in applied(billing.recorder, "void_invoice")] == [{"number": 7}]
    assert applied(billing.recorder, "create_invoice") == []


async def test_task_augmented_held_write_gets_a_proxy_held_task(billing_proxy: str, billing: Upstream) -> None:
    """2025-11-25 tasks: a held write asked for as a task gets a task; its result is the preview; only the
    credential (and session) that made it can see it; the confirmed call goes upstream once. (The Python SDK's
    session refuses a CreateTaskResult for tools/call, so this speaks raw HTTP; the TypeScript SDK test drives the
    same through callToolStream.)"""
    arguments = {"customer": "Task Co", "amount": 9}
    async with aiohttp.ClientSession() as http:
        mine = LegacySession(http, billing_proxy)
        await mine.open()
        created = await rpc(mine, 1, "tools/call", {"name": "create_invoice", "arguments": arguments,
                                                    "task": {"ttl": 60000}})
        task = created["result"]["task"]
        task_id = task["taskId"]
        assert task["status"] == "completed" and task_id.startswith("scopegate-task-")
        types.CreateTaskResult.model_validate(created["result"])  # the SDK's own model of the answer
        status = await rpc(mine, 2, "tasks/get", {"taskId": task_id})
        assert types.GetTaskResult.model_validate(status["result"]).status == "completed"
        payload = (await rpc(mine, 3, "tasks/result", {"taskId": task_id}))["result"]
        content = types.CallToolResult.model_validate(payload).structured_content
        assert content["status"] == "confirmation_required" and content["preview"]["tool"] == "create_invoice"
        assert payload["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
        cancel = await rpc(mine, 4, "tasks/cancel", {"taskId": task_id})
        assert "already completed" in cancel["error"]["message"]
        assert applied(billing.recorder, "create_invoice") == []

        # Another credential, and the same credential in another session, are told nothing about it.
        for token in (TOKENS["other"], TOKENS["writer"]):
            other = LegacySession(http, billing_proxy, token=token)
            await other.open()
            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                answer = await rpc(other, 5, method, {"taskId": task_id})
                assert answer["error"]["message"].startswith("unknown task")

        # A refusal asked for as a task is a task too (the client would choke on a plain result).
        reused = await rpc(mine, 6, "tools/call", {"name": "create_invoice", "task": {},
                                                   "arguments": {**arguments, "confirmationToken": "sgc_made_up"}})
        refused = (await rpc(mine, 7, "tasks/result", {"taskId": reused["result"]["task"]["taskId"]}))["result"]
        assert refused["isError"] and "unknown" in refused["content"][0]["text"]

        done = await rpc(mine, 8, "tools/call", {"name": "create_invoice", "arguments": {
            **arguments, "confirmationToken": content["confirmationToken"]}})
        assert done["result"]["isError"] is False
    (call,) = applied(billing.recorder, "create_invoice")
    assert call["arguments"] == arguments and "task" not in call
    assert billing.recorder.calls("tasks/result") == billing.recorder.calls("tasks/get") == []


async def test_fastmcp_client_approves_through_its_elicitation_handler(start_proxy: Any, billing: Upstream,
                                                                       tmp_path: Path) -> None:
    """fastmcp's own Client, with `confirm: human`: its elicitation handler is the person; the approval form's
    schema turns into its typed response, and a yes applies the write once, a no applies nothing."""
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    billing.recorder.received.clear()
    policy = tmp_path / "human.yaml"
    policy.write_text(POLICY.replace("{match: void_invoice, scopes: [mcp:read, mcp:write], effect: write}",
                                     "{match: void_invoice, scopes: [mcp:read, mcp:write], effect: write, "
                                     "confirm: human}"))
    url = await start_proxy(billing.url, policy=str(policy))
    asked: list[str] = []
    answers = iter([True, False])

    async def person(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append(message)
        return response_type(approve=next(answers))

    transport = StreamableHttpTransport(url, headers={"Authorization": f"Bearer {TOKENS['writer']}"})
    async with Client(transport, elicitation_handler=person) as client:
        done = await client.call_tool("void_invoice", {"number": 3})
        assert not done.is_error and isinstance(done.data, int)
        refused = await client.call_tool("void_invoice", {"number": 4}, raise_on_error=False)
        assert refused.is_error and "declined" in refused.content[0].text
    assert len(asked) == 2 and "void_invoice" in asked[0]
    assert [c["arguments"] for c in applied(billing.recorder, "void_invoice")] == [{"number": 3}]
