"""No traceback from any documented command or setting: every bad input below is refused by the real `scopegate`
executable with one line on stderr that names what is wrong, and exit status 2."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import __version__
from proxy.identity.pats import create_record, read_records, write_records

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "pat-workspaces.yaml"
CEILING = ROOT / "policies" / "org-ceiling.yaml"
SCOPEGATE = shutil.which("scopegate", path=str(Path(sys.executable).parent))

CREATE = ("pat", "create", "--subject=alice")  # every PAT names its one person


def scopegate(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert SCOPEGATE, "the scopegate console script is missing from the virtualenv (pip install -e .)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    return subprocess.run([SCOPEGATE, *args], env={**clean, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on for the test's duration."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "pats.yaml"
    record, _ = create_record(kind="pat", label="revoked one", subject="alice", scopes=["mcp:read"], workspace=None,
                              workspaces=None, role=None, expires_in=3600)
    record.revoked = True
    write_records(path, [record])
    return path


def one_line(done: subprocess.CompletedProcess, words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert words in lines[0], lines[0]


def serve_args(registry: Path, *extra: str) -> list[str]:
    """A configuration that gets as far as binding its sockets (nothing else to say on stderr before that)."""
    policy = registry.with_name("policy.yaml")
    policy.write_text("version: 1\nscopes: [mcp:read]\ntools:\n  - {match: list_accounts, scopes: [mcp:read]}\n")
    return ["serve", "--upstream", "http://127.0.0.1:9/mcp", "--policy", str(policy), "--pat-file", str(registry),
            "--metrics-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", *extra]


CASES = {
    # name: (arguments, with {busy} {registry} {tmp} filled in; words the one line must contain)
    "upstream port out of range": (["serve", "--upstream", "http://127.0.0.1:99999/mcp"],
                                   "--upstream: not a valid URL"),
    "upstream not a URL": (["serve", "--upstream", "http://[::1/mcp"], "--upstream: not a valid URL"),
    "listen port in use": (["{serve}", "--listen", "127.0.0.1:{busy}"], "SCOPEGATE_LISTEN: cannot listen on"),
    "metrics port in use": (["{serve}", "--metrics-listen", "127.0.0.1:{busy}"],
                            "SCOPEGATE_METRICS_LISTEN: cannot listen on"),
    "audit file in a missing directory": (["{serve}", "--audit-sink", "file:{tmp}/missing/audit.jsonl"],
                                          "--audit-sink: no writable directory"),
    "redis URL with a bad port": (["{serve}", "--redis-url", "redis://localhost:99999"], "--redis-url: expected"),
    "pat create without a subject (tokens of different people must not share one)": (
        ["pat", "create", "--file", "{registry}", "--label", "x"], "required: --subject"),
    "pat create with an empty label": ([*CREATE, "--file", "{registry}", "--label", ""], "--label"),
    "pat create in a missing directory": ([*CREATE, "--file", "{tmp}/missing/pats.yaml", "--label", "x"],
                                          "--file: no directory"),
    "pat create with a bad lifetime": ([*CREATE, "--file", "{registry}", "--label", "x", "--expires", "1y"],
                                       "--expires"),
    "pat create with a scope the policy lacks": (
        [*CREATE, "--file", "{registry}", "--label", "x", "--scope", "mcp:reed", "--policy", str(POLICY)],
        "'mcp:reed' is not a scope of the policy (did you mean 'mcp:read'?)"),
    "pat create with a role the policy lacks": (
        [*CREATE, "--file", "{registry}", "--label", "x", "--role", "memebr", "--policy", str(CEILING)],
        "--role: 'memebr' is not a role of the policy (did you mean 'member'?)"),
    "pat create with no role where the policy has roles": (
        [*CREATE, "--file", "{registry}", "--label", "x", "--policy", str(CEILING)], "--role: the policy"),
    "pat create with a broken policy": (
        [*CREATE, "--file", "{registry}", "--label", "x", "--policy", "{tmp}/nothing.yaml"], "--policy:"),
    "pat list of a missing registry": (["pat", "list", "--file", "{tmp}/nothing.yaml"], "cannot read"),
    "pat revoke of an unknown id": (["pat", "revoke", "0123456789ab", "--file", "{registry}"], "no credential"),
    "audit verify of a missing file": (["audit", "verify", "{tmp}/missing.jsonl", "--unsigned"], "cannot read"),
    "audit verify of a Redis that does not answer": (["audit", "verify", "--redis", "redis://127.0.0.1:{busy}/0",
                                                                "--unsigned"],
                                                     "Redis did not answer"),
    "policy check of a missing file": (["policy", "check", "{tmp}/missing.yaml"], "cannot read"),
    "demo with its metrics port busy": (["demo", "--port", "{free}", "--upstream-port", "{free2}",
                                         "--metrics-port", "{busy}"], "is in use (choose another with --metrics-port"),
    "demo with a port out of range": (["demo", "--port", "70000"], "--port: expected a port number"),
    "unknown command": (["serev"], "invalid choice"),
    "missing argument": (["pat", "revoke"], "the following arguments are required: id"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_exit_2(name: str, busy_port: int, registry: Path, tmp_path: Path) -> None:
    from proxy.demo.run import free_port

    args, words = CASES[name]
    fill = {"busy": busy_port, "registry": registry, "tmp": tmp_path, "free": free_port(), "free2": free_port()}
    argv: list[str] = []
    for arg in args:
        argv += serve_args(registry) if arg == "{serve}" else [arg.format(**fill)]
    one_line(scopegate(*argv), words)


def test_demo_with_9464_busy_says_so(busy_port: int) -> None:
    """The default metrics port, as `make run` uses it: busy (ours or anyone's) is one line, not a traceback."""
    from proxy.demo.run import _port_free, free_port

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket's TIME_WAIT must not stop us
    try:
        try:
            holder.bind(("127.0.0.1", 9464))
            holder.listen()
            metrics: tuple[str, ...] = ()
            port = 9464
        except OSError:  # bound by something that does not listen on loopback: ask for a port we know is busy
            metrics, port = ("--metrics-port", str(busy_port)), busy_port
            if not _port_free(9464):
                metrics, port = (), 9464  # someone listens there: just as busy
        done = scopegate("demo", "--port", str(free_port()), "--upstream-port", str(free_port()), *metrics)
        one_line(done, f"port {port} is in use")
    finally:
        holder.close()


def test_version() -> None:
    done = scopegate("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"scopegate {__version__}"


def test_revoking_a_revoked_credential_says_so(registry: Path) -> None:
    (record,) = read_records(registry)
    done = scopegate("pat", "revoke", record.id, "--file", str(registry))
    assert done.returncode == 1 and "already revoked" in done.stderr and "Traceback" not in done.stderr


def test_pat_create_checks_against_the_policy_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "pats.yaml"
    refused = scopegate(*CREATE, "--file", str(path), "--label", "x", "--scope", "journal:read",
                        env={"SCOPEGATE_POLICY": str(POLICY)})
    one_line(refused, "'journal:read' is not a scope of the policy")
    assert not path.exists()  # nothing was written
    beyond = scopegate(*CREATE, "--file", str(path), "--label", "x", "--role", "viewer", "--scope",
                       "can_manage_kg", "--policy", str(CEILING))
    one_line(beyond, "beyond role 'viewer'")
    made = scopegate(*CREATE, "--file", str(path), "--label", "x", "--scope", "mcp:read",
                     env={"SCOPEGATE_POLICY": str(POLICY)})
    assert made.returncode == 0 and made.stdout.startswith("sgp_"), made.stderr
    assert [r.scopes for r in read_records(path)] == [["mcp:read"]]


def test_a_wildcard_origin_is_refused_at_start_in_one_line(registry: Path) -> None:
    """`SCOPEGATE_ALLOWED_ORIGINS='*'` was accepted and then refused every browser: it stops the start, saying why
    and what the patterns look like. (Run as `python -m proxy` from this checkout, so it tests this code.)"""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    done = subprocess.run([sys.executable, "-m", "proxy", *serve_args(registry)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**clean, "SCOPEGATE_ALLOWED_ORIGINS": "*"})
    one_line(done, "SCOPEGATE_ALLOWED_ORIGINS: '*': a wildcard stands only for the port (scheme://host:*)")
    assert "would undo the DNS-rebinding protection" in done.stderr
