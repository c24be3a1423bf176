"""The official TypeScript SDK client (npm @modelcontextprotocol/sdk, 2025-11-25) with a URL-mode elicitation handler,
through scopegate, for writes a named person approves on the approval page: the first approved (forwarded once),
the second declined (nothing forwarded). The SDK's handler prints the link; the approver decides on the page."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import Recorder
from tests.page_approval_kit import APPROVER, OUTSIDER, REQUESTER, TOOL, Approver, PageProxy, start_page_proxy
from tests.test_ts_client import SCRIPT, ts_sdk  # noqa: F401  (the `ts_sdk` fixture)

APPROVAL_SCRIPT = SCRIPT.parent / "approval_client.mjs"


async def test_typescript_sdk_url_mode_approval(ts_sdk: Path, upstream: Any, recorder: Recorder,  # noqa: F811
                                                issue: Any, tmp_path: Path) -> None:
    proxy = PageProxy(tokens={"alice": issue("alice", scopes=["mcp:read", "mcp:write"], subject=REQUESTER),
                              "bob": issue("bob", scopes=["mcp:read", "mcp:write"], subject=APPROVER),
                              "carol": issue("carol", scopes=["mcp:read"], subject=OUTSIDER)})
    await start_page_proxy(proxy, upstream.url, tmp_path, issue.path)
    script = ts_sdk / APPROVAL_SCRIPT.name
    shutil.copyfile(APPROVAL_SCRIPT, script)  # beside its node_modules, where Node resolves the SDK from
    approver = Approver(proxy.tokens["bob"], proxy.origin)
    process = await asyncio.create_subprocess_exec("node", str(script), proxy.url, proxy.tokens["alice"],
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        decisions = iter(["approve", "decline"])
        result = None
        assert process.stdout is not None
        while line := (await asyncio.wait_for(process.stdout.readline(), 90)).decode():
            if line.startswith("URL "):
                decided = await approver.decide(line[4:].strip(), next(decisions), "from the ts test")
                assert decided.status_code == 303
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
        assert await process.wait() == 0, (await process.stderr.read()).decode()  # type: ignore[union-attr]
    finally:
        if process.returncode is None:
            process.kill()
        await approver.close()
        for runner in proxy.runners:
            await runner.cleanup()
    assert result is not None
    assert result["approved"]["isError"] is False and result["approved"]["structured"]["posted"]["memo"] == "from ts"
    assert result["declined"]["isError"] is True and "declined" in result["declined"]["text"]
    assert [s["mode"] for s in result["shown"]] == ["url", "url"]
    assert all(s["url"].startswith(f"{proxy.origin}/oauth/approvals/apv_") for s in result["shown"])
    assert result["completed"] == [s["id"] for s in result["shown"]]  # notifications/elicitation/complete, each
    applied = [c["params"]["arguments"]["memo"] for c in recorder.calls("tools/call")
               if c["params"]["name"] == TOOL and not c["params"]["arguments"].get("dry_run")]
    assert applied == ["from ts"]
