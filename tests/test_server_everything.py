"""Tools a server registers per client capability, behind scopegate: npm @modelcontextprotocol/server-everything
(installed by this test into .cache/), over Streamable HTTP on a loopback port, lists trigger-sampling-request only
to a client that declared `sampling`. Under `default: annotations` a call is decided from the tool list scopegate
fetched itself, in its own session: that session declared no capabilities, so the tool was missing from it and the
call was refused as unlisted to a client that saw it in its own list. scopegate's own session now declares what
clients commonly declare (sampling, elicitation form and url, roots)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.demo.run import free_port, stop_process, wait_for_port
from tests.conftest import TOKENS, npm_installed
from tests.test_ts_client import CACHE as TS_CACHE
from tests.test_ts_client import SDK

SERVER = "@modelcontextprotocol/server-everything@2026.8.31"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "server-everything"
TS = Path(__file__).resolve().parent / "ts"

POLICY = """
version: 1
name: everything
scopes: [mcp:read, mcp:write]
default: annotations
read_scope: mcp:read
write_scope: mcp:write
"""


def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = npm_installed(SERVER, CACHE)
    port = free_port()
    entry = folder / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
    log_path = tmp_path_factory.mktemp("everything") / "server.log"
    with log_path.open("wb") as log:
        # It listens on every interface and has no setting for that: tests/ts/loopback.mjs pins it to 127.0.0.1.
        process = subprocess.Popen(["node", "--import", (TS / "loopback.mjs").as_uri(), str(entry), "streamableHttp"],
                                   env={**os.environ, "PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=log_path.parent)
        try:
            try:
                wait_for_port(port, process, "server-everything", 30)
            except SystemExit as exc:
                raise AssertionError(f"{exc}: {log_path.read_text()}") from None
            assert listening_on(port) == {"0100007F"}, "server-everything must listen on loopback only"
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            stop_process(process)


async def sampling_client(url: str) -> dict[str, Any]:
    """The TypeScript SDK client declaring sampling (tests/ts/sampling_client.mjs) against `url`: what it saw."""
    folder = npm_installed(SDK, TS_CACHE)
    script = folder / "sampling_client.mjs"
    shutil.copyfile(TS / script.name, script)  # beside its node_modules, where Node resolves the SDK from
    process = await asyncio.create_subprocess_exec("node", str(script), url, TOKENS["writer"],
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return json.loads(stdout)


async def test_a_tool_listed_only_to_sampling_clients_is_decided_like_any_other(
        everything: str, start_proxy: Any, tmp_path: Path) -> None:
    policy = tmp_path / "everything.yaml"
    policy.write_text(POLICY)
    out = await sampling_client(await start_proxy(everything, policy=str(policy)))

    assert "trigger-sampling-request" in out["tools"]  # the client's own session has it, and the filter kept it
    assert "refused" not in out, out["refused"]
    # Once: "trigger-sampling-request refused: the upstream does not list it, ...". Now readOnlyHint: false makes it
    # a write, so a preview first.
    assert isinstance(out["preview"], dict) and out["preview"]["status"] == "confirmation_required", out["preview"]
    assert out["asked"] == ["Resource trigger-sampling-request context: hello from the test"]
    assert "sampled by the test" in out["done"]
