"""`scopegate demo` (what `make run` runs): the demo ledger upstream, scopegate in front of it, and what to try."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from yarl import URL

from proxy.config import Config
from proxy.identity.pats import create_record, write_records
from proxy.ops.trail import write_key_pair

_LIST_BODY = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
).decode()


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, seconds: float = 20.0) -> None:
    """Return once `process` listens on `port`; exit with a clear message if it dies or never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on port {port} within {seconds:.0f}s")


def stop_process(process: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
    """Terminate a child process and wait for it; killed if it will not go within `seconds`."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """A port nothing listens on right now (for local demo, test and bench processes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


DEMO_POLICY = Path(__file__).resolve().parents[2] / "policies" / "pat-workspaces.yaml"
DEMO_CREDENTIALS = (
    # (label, the one person it acts for, scopes, bound workspace)
    ("Month-end review script (read-only, bound to acme)", "alice@demo.example", ["mcp:read"], "acme"),
    ("Bookkeeping agent (read and write, user-scoped)", "bob@demo.example", ["mcp:read", "mcp:write"], None),
)


def _demo_registry() -> tuple[Path, list[tuple[str, str]]]:
    """A fresh registry in a private temporary folder, with the demo's credentials; tokens printed, never kept."""
    folder = Path(tempfile.mkdtemp(prefix="scopegate-demo-"))
    path = folder / "pats.yaml"
    records, tokens = [], []
    for label, subject, scopes, workspace in DEMO_CREDENTIALS:
        record, token = create_record(kind="pat", label=label, subject=subject, scopes=scopes,
                                      workspace=workspace, workspaces=None, role=None, expires_in=86400)
        records.append(record)
        tokens.append((label, token))
    write_records(path, records)
    return path, tokens


def _demo_signing_key(folder: Path) -> Path:
    """The OAuth server's key for this demo run only (a real deployment mounts one from a Secret)."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = folder / "oauth-signing-key.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path


def _demo_policy(folder: Path) -> Path:
    """The demo policy with `upstream_identity:` on (its assertions signed with the OAuth server's key)."""
    path = folder / "policy.yaml"
    path.write_text(DEMO_POLICY.read_text(encoding="utf-8") + "\n# The demo ledger verifies who is calling and "
                    "records it.\nupstream_identity: {}\n", encoding="utf-8")
    return path


def main(port: int, upstream_port: int, metrics_port: int = 9464) -> None:
    for p, flag in ((port, "--port"), (upstream_port, "--upstream-port"), (metrics_port, "--metrics-port")):
        if not 0 < p < 65536:
            raise SystemExit(f"scopegate demo: {flag}: expected a port number from 1 to 65535, got {p}")
        if not _port_free(p):
            raise SystemExit(f"scopegate demo: port {p} is in use (choose another with {flag})")
    url = f"http://127.0.0.1:{port}/mcp"
    origin = f"http://127.0.0.1:{port}"
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    # The ledger verifies the identity scopegate asserts on every request (with scopegate's JWKS) and records who
    # posted each entry and made each vendor.
    upstream = subprocess.Popen(
        [sys.executable, "-m", "proxy.demo.ledger", "--port", str(upstream_port), "--identity-jwks",
         f"{origin}/.well-known/jwks.json", "--identity-issuer", url, "--identity-audience", upstream_url],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port(upstream_port, upstream, "scopegate demo: the demo upstream")
        registry, tokens = _demo_registry()
        signing_key = _demo_signing_key(registry.parent)
        policy = _demo_policy(registry.parent)
        audit_key = registry.parent / "audit.key"  # a fresh folder each run: a fresh key pair (0600)
        write_key_pair(str(audit_key), f"{audit_key}.pub")
        credentials = "\n".join(f"  {label}\n    {token}" for label, token in tokens)
        print(
            f"""
scopegate demo
  proxy     {url}
  upstream  http://127.0.0.1:{upstream_port}/mcp   (the demo ledger, direct, for comparison)

Policy: {DEMO_POLICY.relative_to(DEMO_POLICY.parents[1])} (mcp:read for reads, mcp:write for writes; nothing else),
        with `upstream_identity:` on ({policy})
Sample credentials (PATs valid for a day; registry {registry}):
{credentials}

Every request must carry one; the upstream never sees it. Try, in another terminal (from this checkout):

  .venv/bin/python -m proxy.demo.try_it {url} --token {tokens[0][1]}

  .venv/bin/python -m proxy.demo.try_it {url} --token {tokens[1][1]}

(the read-only token sees 6 of the ledger's 15 tools, and its write is refused with 403; the second token
sees the 11 tools the policy names, and its ledger posting is held for a person: scopegate asks you, through
the client, at a prompt in that terminal, showing the exact change and the ledger's own dry run; answer y and
it is applied, once. With --no-elicitation the client cannot ask you, so the posting falls back to a preview
and a confirmationToken to send back with the same arguments; add --confirm to have try_it send it back)

or with curl, one stateless (2026-07-28) request (drop the Authorization header to see the 401):

  curl -s {url} -H 'Authorization: Bearer {tokens[0][1]}' \\
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
    -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/list' \\
    -d '{_LIST_BODY}'


OAuth: scopegate is also the authorization server (the policy's `oauth:` section; key for this run only).
Any MCP client that speaks the MCP authorization flow connects to {url} and sends you to a sign-in page:
sign in with one of the tokens above (it caps what you can grant), tick scopes, approve. For example:

  npx -y @modelcontextprotocol/inspector      (Streamable HTTP, URL {url}, Connect)
  npx -y mcp-remote {url}

Discovery: {origin}/.well-known/oauth-protected-resource/mcp
Connected apps (see and revoke what you granted): {origin}/oauth/apps

Identity: every request reaches the ledger with a short-lived JWT scopegate signs (the person, the
credential, the scopes, the workspace, and for a write the approval); the ledger verifies it with
{origin}/.well-known/jwks.json and records who posted each journal entry (list_journal_entries shows "by").

Audit trail: {registry.parent / 'audit.jsonl'}, signed with {audit_key}
  (check it: .venv/bin/scopegate audit verify {registry.parent / 'audit.jsonl'} --key {audit_key}.pub)
Metrics:     http://127.0.0.1:{metrics_port}/metrics   health: /healthz, /readyz

Ctrl-C stops both.
""",
            flush=True,
        )
        config = Config(upstream=URL(upstream_url), listen=("127.0.0.1", port),
                        pat_file=str(registry), policy=str(policy), public_url=URL(url),
                        state_dir=str(registry.parent),  # revocations on Connected apps outlive a restart
                        oauth_signing_keys=(str(signing_key),), metrics_listen=("127.0.0.1", metrics_port),
                        audit_sink=f"file:{registry.parent / 'audit.jsonl'}",
                        audit_signing_key_file=str(audit_key))
        from proxy.edge.app import run
        from proxy.identity.loader import load_identity
        from proxy.ops.logs import setup_logging

        setup_logging("INFO")
        run(config, load_identity(config, {}))
    finally:
        stop_process(upstream, 5)
