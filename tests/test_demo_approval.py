"""`make run`'s approval step: the demo policy holds the ledger's postings for the controller on scopegate's approval
page, four eyes on. try_it (the bookkeeper's agent, both protocol eras) prints the link and waits; the bookkeeper
cannot approve their own posting; the controller approves it on the page and try_it shows it applied, once."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.demo.run import APPROVER, demo_policy
from tests.conftest import MODES, Recorder
from tests.page_approval_kit import Approver, PageProxy, posted, start_page_proxy


@pytest.mark.parametrize("mode", MODES)
async def test_demo_posting_waits_for_the_controller(mode: str, upstream: Any, recorder: Recorder, issue: Any,
                                                     tmp_path: Path) -> None:
    proxy = PageProxy(tokens={
        "bookkeeper": issue("Bookkeeping agent", scopes=["mcp:read", "mcp:write"], subject="demo-user"),
        "controller": issue(APPROVER[0], scopes=APPROVER[1], subject=APPROVER[2]),
    })
    await start_page_proxy(proxy, upstream.url, tmp_path, issue.path, policy=str(demo_policy(tmp_path)))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.demo.try_it", proxy.url, "--token", proxy.tokens["bookkeeper"],
        *(["--legacy"] if mode == "legacy" else []),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    controller = Approver(proxy.tokens["controller"], proxy.origin)
    bookkeeper = Approver(proxy.tokens["bookkeeper"], proxy.origin)
    out, decided = [], []
    try:
        assert process.stdout is not None
        while line := (await asyncio.wait_for(process.stdout.readline(), 60)).decode():
            out.append(line)
            if (found := re.search(r"(http://\S+/oauth/approvals/apv_\S+)", line)) and not decided:
                link = found.group(1)
                assert (await bookkeeper.force(link)).status_code == 403  # four eyes
                assert (await controller.decide(link, "approve", "October supplies, fine")).status_code == 303
                decided.append(link)
        assert await process.wait() == 0, (await process.stderr.read()).decode()  # type: ignore[union-attr]
    finally:
        if process.returncode is None:
            process.kill()
        await controller.close()
        await bookkeeper.close()
        for runner in proxy.runners:
            await runner.cleanup()
    text = "".join(out)
    assert "the server sends you to a page" in text and "applied:" in text
    assert [p["memo"] for p in posted(recorder)] == ["October office supplies"]
