"""Talk to scopegate (or any MCP endpoint) with the official SDK client, the way an agent would.

    python -m proxy.demo.try_it http://127.0.0.1:8000/mcp [--token TOKEN] [--legacy] [--no-elicitation] [--confirm]

The client declares elicitation: when scopegate asks the person to approve a write, the question appears here and
you answer at the prompt; when the policy has another person approve it on scopegate's approval page, the link
appears here and try_it waits for their decision. With --no-elicitation it cannot ask you: a write the policy lets
fall back to a token comes back as a preview and a confirmationToken (--confirm sends it back), and a write held
for the approval page comes back with the link in words (run try_it again after it was approved).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def ask_at_the_terminal(context: object, params: types.ElicitRequestParams) -> types.ElicitResult:
    """The person at this terminal answers the server's question (here: scopegate asking to approve a write). A
    URL-mode question (approval on scopegate's page, by whoever the policy names) is shown as its link: this
    client 'opens' it by printing it, and then waits while the call is held."""
    if params.mode == "url":
        print("\n  ---- the server sends you to a page ----")
        print("  " + params.message.replace("\n", "\n  "))
        print(f"\n  Open this link in a browser (the approver signs in there):\n    {params.url}")
        print("  Waiting for the decision (Ctrl-C gives up; nothing is changed until it is approved) ...", flush=True)
        return types.ElicitResult(action="accept")
    print("\n  ---- the server asks you ----")
    print("  " + params.message.replace("\n", "\n  "))
    try:
        answer = await asyncio.to_thread(input, "  Approve this change? [y/N] ")
    except EOFError:  # no terminal to ask: dismissed, not declined
        return types.ElicitResult(action="cancel")
    if answer.strip().lower() in ("y", "yes"):
        return types.ElicitResult(action="accept", content={"approve": True})
    return types.ElicitResult(action="decline")


async def _run(url: str, token: str | None, legacy: bool, confirm: bool, elicitation: bool) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=330) as http,  # a person may take a while to answer
        Client(streamable_http_client(url, http_client=http), mode="legacy" if legacy else "auto",
               elicitation_callback=ask_at_the_terminal if elicitation else None) as client,
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
        if result.is_error:  # refused (declined, say): the reason is in the text
            print("  " + "\n  ".join(c.text for c in result.content if isinstance(c, types.TextContent)))
            return
        print(f"  {json.dumps(result.structured_content, indent=2).replace(chr(10), chr(10) + '  ')}")
        if not result.is_error and not (result.structured_content or {}).get("status"):
            print("\n  applied: you approved it, and scopegate forwarded it once.")
            return
        held = (result.structured_content or {}).get("status") == "confirmation_required"
        link = ((result.structured_content or {}).get("preview") or {}).get("approvalUrl")
        if held and link:
            print(f"\n  waiting for approval on {link}: nothing changed yet. Run this again (same arguments) once "
                  "it was approved.")
            return
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
    parser.add_argument("--no-elicitation", action="store_true",
                        help="do not offer to ask the person at this terminal (elicitation)")
    args = parser.parse_args()
    asyncio.run(_run(args.url, args.token, args.legacy, args.confirm, not args.no_elicitation))


if __name__ == "__main__":
    main()
