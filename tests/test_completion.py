"""Shell completion (argcomplete): what bash, zsh or fish get when they ask the `scopegate` command what may come next.

The shell side is argcomplete's (`eval "$(register-python-argcomplete scopegate)"`); this drives the same protocol
the shell function does: the installed console script runs with `_ARGCOMPLETE` and the command line so far in the
environment, and writes the candidates instead of running anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = shutil.which("scopegate", path=str(Path(sys.executable).parent))


def complete(line: str, tmp_path: Path) -> list[str]:
    out = tmp_path / "completions"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    env.update(_ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\n", COMP_LINE=line, COMP_POINT=str(len(line)),
               _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    assert SCRIPT is not None, "the scopegate console script is installed with the package"
    done = subprocess.run([SCRIPT], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_text().split("\n") if out.exists() else []


@pytest.mark.parametrize("line,expected,absent", [
    ("scopegate ", {"serve", "demo", "pat", "policy", "audit"}, set()),
    ("scopegate pa", {"pat"}, {"policy", "serve"}),
    ("scopegate pat ", {"create", "list", "revoke"}, {"serve"}),
    ("scopegate audit ", {"verify", "keygen"}, set()),
    ("scopegate serve --up", {"--upstream"}, {"--listen"}),
])
def test_the_shell_is_told_what_may_come_next(tmp_path: Path, line: str, expected: set[str],
                                              absent: set[str]) -> None:
    found = {candidate.strip() for candidate in complete(line, tmp_path)}
    assert expected <= found, found
    assert not absent & found


def test_without_the_shell_asking_nothing_is_imported() -> None:
    """argcomplete is imported only when a shell asks: every other run of the command is as before."""
    code = "import sys, proxy.cli as c\ntry:\n    c.main(['--version'])\nexcept SystemExit:\n    pass\n" \
           "print('argcomplete' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().endswith("False"), done.stdout + done.stderr
