"""The approval page in a real browser: Debian's Chromium (Playwright, JavaScript off, a 390 px wide phone screen)
signs the approver in with a PAT from the link the agent's client was given, shows what will happen, and approves
or declines with a reason; the official SDK's call, held meanwhile (both eras), is then forwarded once or refused."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODES, Recorder
from tests.page_approval_kit import APPROVER, ENTRY, OUTSIDER, REQUESTER, TOOL, PageProxy, posted, start_page_proxy
from tests.test_oauth_browser import browser  # noqa: F401  (the `browser` fixture: Chromium, JavaScript off)
from tests.test_page_approval import Opener, client


def png_width(path: Path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


async def decide_in_browser(page: Any, link: str, token: str, decision: str, reason: str, shot: Path) -> None:
    await page.goto(link)
    await page.get_by_role("heading", name="Sign in to review a write that waits for approval").wait_for()
    await page.get_by_label("Your personal access token or admin key").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name=f"Approve {TOOL}?").wait_for()
    text = await page.locator("main").inner_text()
    assert '"supplies"' in text and '"acme"' in text and REQUESTER in text and "Valid until" in text
    assert "The service's own dry run" in text
    await page.screenshot(path=str(shot), full_page=True)
    assert png_width(shot) <= 390  # nothing wider than the phone: no sideways scrolling
    await page.get_by_label("Reason (optional, kept in the audit trail)").fill(reason)
    button = page.get_by_role("button", name="Approve" if decision == "approve" else "Decline")
    await button.focus()
    await page.keyboard.press("Enter")  # keyboard, not a mouse click
    said = "approved" if decision == "approve" else "declined"
    await page.get_by_role("heading", name=f"This write was {said}").wait_for()
    assert APPROVER in await page.locator("main").inner_text()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decision", ["approve", "decline"])
async def test_approver_decides_in_chromium(mode: str, decision: str, browser: Any,  # noqa: F811
                                            upstream: Any, recorder: Recorder, issue: Any, tmp_path: Path) -> None:
    proxy = PageProxy(tokens={"alice": issue("alice", scopes=["mcp:read", "mcp:write"], subject=REQUESTER),
                              "bob": issue("bob", scopes=["mcp:read", "mcp:write"], subject=APPROVER),
                              "carol": issue("carol", scopes=["mcp:read"], subject=OUTSIDER)})
    await start_page_proxy(proxy, upstream.url, tmp_path, issue.path)
    page = await browser.new_page()
    await page.set_viewport_size({"width": 390, "height": 844})
    opener = Opener(None)
    deciding: list[asyncio.Task] = []

    async def browser_decides(context: Any, params: Any) -> Any:
        answer = await opener(context, params)
        deciding.append(asyncio.create_task(decide_in_browser(
            page, params.url, proxy.tokens["bob"], decision, "matches the invoice", tmp_path / "approval.png")))
        return answer

    try:
        async with client(proxy.url, mode, proxy.tokens["alice"], browser_decides) as sdk:
            result = await sdk.call_tool(TOOL, ENTRY)
        await deciding[0]
    finally:
        await page.close()
        for runner in proxy.runners:
            await runner.cleanup()
    if decision == "approve":
        assert not result.is_error and posted(recorder) == [ENTRY]
    else:
        assert result.is_error and "declined" in result.content[0].text and "matches the invoice" in \
            result.content[0].text
        assert posted(recorder) == []
