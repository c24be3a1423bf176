"""Talk to scopegate (or any MCP endpoint) with the official SDK client, the way an agent would.

    python -m proxy.demo.try_it http://127.0.0.1:8000/mcp [--token TOKEN] [--legacy] [--confirm]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def _run(url: str, token: str | None, legacy: bool, confirm: bool) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy" if legacy else "auto") as client,
    ):
        print(f"connected, protocol {client.protocol_version}")
        tools = await client.list_tools()
        print(f"\ntools/list -> {len(tools.tools)} tools:")
        for tool in tools.tools:
            kind = "read " if tool.annotations and tool.annotations.read_only_hint else "write"
            print(f"  [{kind}] {tool.name}")
        prompts = await client.list_prompts()
        print(f"\nprompts/list -> {', '.join(p.name for p in prompts.prompts) or '(none)'}")
        args = {
            "workspaceId": "acme",
            "date": "2026-10-31",
            "memo": "October office supplies",
            "lines": [{"account": "6000", "debit": 120}, {"account": "1000", "credit": 120}],
        }
        print(f"\ntools/call create_journal_entry {json.dumps(args)}")
        try:
            result = await client.call_tool("create_journal_entry", args)
        except MCPError as exc:  # refused by scopegate (HTTP 403): nothing reached the upstream
            print(f"  refused: {exc}")
            return
        print(f"  isError={result.is_error}")
        print(f"  {json.dumps(result.structured_content, indent=2).replace(chr(10), chr(10) + '  ')}")
        held = (result.structured_content or {}).get("status") == "confirmation_required"
        if held and not confirm:
            print("\n  held for confirmation: nothing changed. Run again with --confirm to send the token back.")
        elif held:
            confirmation = {**args, "confirmationToken": result.structured_content["confirmationToken"]}
            print("\ntools/call create_journal_entry (same arguments + confirmationToken)")
            applied = await client.call_tool("create_journal_entry", confirmation)
            print(f"  isError={applied.is_error}")
            print(f"  {json.dumps(applied.structured_content, indent=2).replace(chr(10), chr(10) + '  ')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--token", help="bearer token to present")
    parser.add_argument("--legacy", action="store_true", help="2025-11-25 initialize/session handshake")
    parser.add_argument("--confirm", action="store_true", help="send a write's confirmation token back to apply it")
    args = parser.parse_args()
    asyncio.run(_run(args.url, args.token, args.legacy, args.confirm))


if __name__ == "__main__":
    main()
