"""Shared by the stdio tests: the demo ledger as a stdio server, and what the tests look at on the machine (the
children scopegate started, whether a process is gone)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from proxy.config import STDIO_UPSTREAM
from proxy.edge.app import STDIO
from proxy.edge.stdio.bridge import Bridge

ROOT = Path(__file__).resolve().parent.parent
# The demo ledger served over stdio by the official SDK (MCPServer.run(transport="stdio")), from this checkout.
LEDGER = (sys.executable, "-c", "from proxy.demo.ledger import build_server; build_server().run(transport='stdio')")
URL = str(STDIO_UPSTREAM)


def bridge_of(start_proxy: Any) -> Bridge:
    """The bridge of the proxy started last."""
    return start_proxy.runners[-1].app[STDIO]


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def group_members(pgid: int) -> list[int]:
    """PIDs of running processes in process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}
