"""A real third-party MCP server behind scopegate: npm @cyanheads/git-mcp-server (installed by this test into
.cache/), over Streamable HTTP on a loopback port, on a scratch git repository the test makes, with the official
TypeScript SDK client (tests/ts/git_client.mjs) connecting to it direct and through scopegate.

The server answers `notifications/initialized` with 202 and a body of `null`. A client discards any body of an
answer to a POST that carried no request; scopegate once parsed it as an answer, found no JSON-RPC message in it
and refused it with 502, so the SDK client could not connect through scopegate at all."""

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

SERVER = "@cyanheads/git-mcp-server@2.15.3"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "git-mcp-server"
SCRIPT = Path(__file__).resolve().parent / "ts" / "git_client.mjs"
READS = ["git_diff", "git_log", "git_show", "git_status"]

POLICY = "version: 1\nname: git\nscopes: [mcp:read, mcp:write]\ndefault: deny\ntools:\n" + "".join(
    f"  - {{match: {name}, scopes: [mcp:read]}}\n" for name in READS)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch git repository with one commit: the only tree the server may touch (GIT_BASE_DIR)."""
    repo = tmp_path_factory.mktemp("git-mcp") / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=scopegate test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "README").write_text("scratch\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    return repo


@pytest.fixture(scope="module")
def git_server(repository: Path) -> Iterator[str]:
    """git-mcp-server over Streamable HTTP (its README: MCP_TRANSPORT_TYPE=http, MCP_HTTP_PORT, MCP_HTTP_HOST)."""
    folder = npm_installed(SERVER, CACHE)
    port = free_port()
    env = {**os.environ, "MCP_TRANSPORT_TYPE": "http", "MCP_HTTP_HOST": "127.0.0.1", "MCP_HTTP_PORT": str(port),
           "MCP_LOG_LEVEL": "error", "MCP_AUTH_MODE": "none", "GIT_BASE_DIR": str(repository),
           "GIT_SIGN_COMMITS": "false", "LOGS_DIR": str(repository.parent / "logs")}
    entry = folder / "node_modules" / "@cyanheads" / "git-mcp-server" / "dist" / "index.js"
    log = (repository.parent / "server.log").open("wb")
    process = subprocess.Popen(["node", str(entry)], env=env, cwd=repository.parent, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_for_port(port, process, "git-mcp-server", 30)
        except SystemExit as exc:
            raise AssertionError(f"{exc}: {(repository.parent / 'server.log').read_text()}") from None
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop_process(process)
        log.close()


async def ts_client(url: str, repo: Path, bearer: str | None = None) -> dict[str, Any]:
    folder = npm_installed(SDK, TS_CACHE)
    script = folder / SCRIPT.name
    shutil.copyfile(SCRIPT, script)  # beside its node_modules, where Node resolves the SDK from
    process = await asyncio.create_subprocess_exec("node", str(script), url, str(repo), *([bearer] if bearer else []),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return json.loads(stdout)


async def test_typescript_sdk_connects_to_git_mcp_server_through_scopegate_as_direct(
        git_server: str, repository: Path, start_proxy: Any, tmp_path: Path) -> None:
    policy = tmp_path / "git.yaml"
    policy.write_text(POLICY)
    proxied = await start_proxy(git_server, policy=str(policy))

    direct = await ts_client(git_server, repository)
    through = await ts_client(proxied, repository, TOKENS["writer"])

    assert set(READS) < set(direct["tools"])  # the server offers more (commits, pushes): the policy shows the reads
    assert through["tools"] == READS
    assert direct["status"]["isError"] is False and json.loads(direct["status"]["content"][0]["text"])["isClean"]
    assert through["status"] == direct["status"]
