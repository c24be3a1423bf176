"""An npm stdio server behind scopegate: @modelcontextprotocol/server-filesystem (installed by this test into
.cache/) on a scratch folder, run by scopegate as child processes (`node ... FOLDER`), driven through scopegate by the
official Python SDK client in both modes and by the TypeScript SDK client: lists filtered per credential, writes held
and confirmed (the file appears on disk only after the confirmation), the child's crash answered and recovered."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODES, TOKENS, npm_installed, sdk_client, wait_until
from tests.stdio_helpers import URL, bridge_of
from tests.test_ts_client import CACHE as TS_CACHE
from tests.test_ts_client import SDK

SERVER = "@modelcontextprotocol/server-filesystem@2026.8.31"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "server-filesystem"
TS = Path(__file__).resolve().parent / "ts"
READS = ("read_file", "read_text_file", "read_media_file", "read_multiple_files", "list_directory",
         "list_directory_with_sizes", "directory_tree", "search_files", "get_file_info", "list_allowed_directories")
WRITES = ("write_file", "edit_file", "create_directory", "move_file")
POLICY = "\n".join([
    "version: 1",
    "name: filesystem",
    "scopes: [mcp:read, mcp:write]",
    "default: deny",
    "tools:",
    *(f"  - {{match: {name}, scopes: [mcp:read]}}" for name in READS),
    *(f"  - {{match: {name}, scopes: [mcp:read, mcp:write], effect: write}}" for name in WRITES),
]) + "\n"


@pytest.fixture(scope="module")
def filesystem_server() -> Path:
    folder = npm_installed(SERVER, CACHE)
    return folder / "node_modules" / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"


@pytest.fixture
async def filesystem(filesystem_server: Path, start_proxy: Any, tmp_path: Path) -> tuple[str, Path]:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "hello.txt").write_text("hello from the scratch folder\n")
    policy = tmp_path / "filesystem.yaml"
    policy.write_text(POLICY)
    url = await start_proxy(URL, upstream_command=("node", str(filesystem_server), str(scratch)),
                            policy=str(policy), upstream_cwd=str(tmp_path))
    return url, scratch.resolve()


@pytest.mark.parametrize("mode", MODES)
async def test_python_sdk_filtered_held_confirmed(mode: str, filesystem: tuple[str, Path]) -> None:
    url, scratch = filesystem
    async with sdk_client(url, mode, token=TOKENS["reader"]) as reader:
        names = {t.name for t in (await reader.list_tools()).tools}
        assert "read_text_file" in names and not names & set(WRITES)
        text = await reader.call_tool("read_text_file", {"path": str(scratch / "hello.txt")})
        assert not text.is_error and "hello from the scratch folder" in text.content[0].text
        with pytest.raises(Exception, match="needs scope mcp:write"):
            await reader.call_tool("write_file", {"path": str(scratch / "no.txt"), "content": "x"})
    target = scratch / f"{mode}.txt"
    arguments = {"path": str(target), "content": f"written in {mode} mode"}
    async with sdk_client(url, mode) as writer:
        assert set(WRITES) <= {t.name for t in (await writer.list_tools()).tools}
        preview = await writer.call_tool("write_file", arguments)
        assert preview.structured_content["status"] == "confirmation_required"
        assert not target.exists()  # held: nothing reached the server
        done = await writer.call_tool("write_file", {**arguments,
                                                     "confirmationToken": preview.structured_content[
                                                         "confirmationToken"]})
        assert not done.is_error, done
    assert target.read_text() == f"written in {mode} mode"
    assert not (scratch / "no.txt").exists()


async def test_crash_of_the_node_server_is_answered_and_recovered(filesystem: tuple[str, Path],
                                                                  start_proxy: Any) -> None:
    url, scratch = filesystem
    bridge = bridge_of(start_proxy)
    async with sdk_client(url, "legacy") as client:
        await client.list_tools()
        session = next(iter(bridge.sessions.values()))
        pid = session.child.pid
        os.kill(pid, signal.SIGSTOP)  # a request is certainly in flight when it dies
        call = asyncio.ensure_future(client.call_tool("list_directory", {"path": str(scratch)}))
        assert await wait_until(lambda: bool(session.waiting))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception, match="upstream server process exited"):
            await asyncio.wait_for(call, 10)
        listing = await client.call_tool("list_directory", {"path": str(scratch)})
        assert not listing.is_error and "hello.txt" in listing.content[0].text
        assert session.child.pid != pid


async def test_typescript_sdk_client(filesystem: tuple[str, Path]) -> None:
    url, scratch = filesystem
    sdk = npm_installed(SDK, TS_CACHE)
    script = sdk / "stdio_client.mjs"
    shutil.copyfile(TS / "stdio_client.mjs", script)  # beside its node_modules, where Node resolves the SDK from
    target = scratch / "typescript.txt"
    process = await asyncio.create_subprocess_exec("node", str(script), url, TOKENS["writer"], TOKENS["reader"],
                                                   str(target), stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert "read_text_file" in out["reader_tools"] and not set(out["reader_tools"]) & set(WRITES)
    assert set(WRITES) <= set(out["writer_tools"])
    assert out["preview"]["status"] == "confirmation_required" and out["held_exists"] is False
    assert out["done"]["isError"] is False
    assert target.read_text() == "written by the TypeScript SDK"
