"""A server's own questions over stdio, through scopegate: npm @modelcontextprotocol/server-everything run by
scopegate as a stdio child (`node ... stdio`). The TypeScript SDK client, declaring sampling, calls
trigger-sampling-request: held as a write (default: annotations), confirmed, and during the confirmed call the
server's sampling/createMessage reaches the client on the call's stream and the client's answer reaches the child
that asked (the tool's result quotes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import npm_installed
from tests.stdio_helpers import URL
from tests.test_server_everything import CACHE, POLICY, SERVER, sampling_client


async def test_sampling_asked_by_a_stdio_server_reaches_the_client(start_proxy: Any, tmp_path: Path) -> None:
    entry = npm_installed(SERVER, CACHE) / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" \
        / "index.js"
    policy = tmp_path / "everything.yaml"
    policy.write_text(POLICY)
    out = await sampling_client(await start_proxy(URL, upstream_command=("node", str(entry), "stdio"),
                                                  policy=str(policy), upstream_cwd=str(tmp_path)))
    assert "trigger-sampling-request" in out["tools"]
    assert "refused" not in out, out["refused"]
    assert out["preview"]["status"] == "confirmation_required", out["preview"]
    assert out["asked"] == ["Resource trigger-sampling-request context: hello from the test"]
    assert "sampled by the test" in out["done"]
