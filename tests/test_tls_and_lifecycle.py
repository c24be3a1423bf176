"""TLS and mTLS at the edge, `scopegate serve` configuration errors, and SIGTERM with streams open."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from proxy.config import Config
from tests.conftest import AUTH, MODES, POLICIES, Recorder, free_port, sdk_client


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, made now."""
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("agent@example.test")
    paths = {
        "ca": base / "ca.pem",
        "cert": base / "server.pem",
        "key": base / "server.key",
        "client": base / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(paths["cert"]), append=True)
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return {"authority": ca, "client_cert": client, **{k: str(v) for k, v in paths.items()}}


def client_context(pki: dict[str, Any], with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki["authority"].configure_trust(context)
    if with_cert:
        pki["client_cert"].configure_cert(context)
    return context


@pytest.mark.parametrize("mode", MODES)
async def test_tls_with_the_sdk_client(mode: str, pki: dict, start_proxy: Any, upstream: Any,
                                       recorder: Recorder) -> None:
    url = await start_proxy(upstream.url, tls_cert=pki["cert"], tls_key=pki["key"])
    assert url.startswith("https://")
    async with sdk_client(url, mode, verify=client_context(pki, with_cert=False)) as client:
        tools = await client.list_tools()
    assert len(tools.tools) == 11


async def test_tls_port_never_speaks_plain_http(pki: dict, start_proxy: Any, upstream: Any,
                                                recorder: Recorder) -> None:
    url = await start_proxy(upstream.url, tls_cert=pki["cert"], tls_key=pki["key"])
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.post(url.replace("https://", "http://"), data=b"{}") as resp:
                await resp.read()
    assert recorder.received == []


async def test_tls_floor_is_1_2(pki: dict, start_proxy: Any, upstream: Any, recorder: Recorder) -> None:
    from yarl import URL

    from proxy.edge.tls import server_context

    config = Config(upstream=URL(upstream.url), tls_cert=pki["cert"], tls_key=pki["key"])
    assert server_context(config).minimum_version == ssl.TLSVersion.TLSv1_2
    url = await start_proxy(upstream.url, tls_cert=pki["cert"], tls_key=pki["key"])
    context = client_context(pki, with_cert=False)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the oldest version a client may still use
    async with aiohttp.ClientSession() as http, http.get(url, ssl=context, headers=AUTH) as resp:
        assert resp.status in (400, 405, 406)  # TLS worked; the upstream judged the bare GET
        await resp.read()


async def test_mtls_requires_a_client_certificate(pki: dict, start_proxy: Any, upstream: Any,
                                                  recorder: Recorder) -> None:
    url = await start_proxy(upstream.url, tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["ca"])
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(url, ssl=client_context(pki, with_cert=False)) as resp:
                await resp.read()
    assert recorder.received == []
    async with sdk_client(url, "auto", verify=client_context(pki, with_cert=True)) as client:
        assert len((await client.list_prompts()).prompts) == 4


POLICY = POLICIES / "pat-workspaces.yaml"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], env={**clean, **(env or {})}, capture_output=True, text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        ((), {}, "SCOPEGATE_UPSTREAM"),
        (("--upstream", "ftp://x/mcp"), {}, "--upstream: expected an http:// or https:// URL"),
        (("--listen", "nowhere"), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp"}, "--listen: expected host:port"),
        ((), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp", "SCOPEGATE_MAX_DEPTH": "-3"}, "SCOPEGATE_MAX_DEPTH"),
        ((), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp", "SCOPEGATE_TLS_CERT": "/nonexistent.pem"},
         "SCOPEGATE_TLS_CERT: no readable file"),
        ((), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp", "SCOPEGATE_POLICY_FILE": "p.yaml"},
         "SCOPEGATE_POLICY_FILE: not a setting this version"),  # a typo must not leave the policy unset silently
        ((), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp", "SCOPEGATE_AUDIT_SINK": "syslog"},
         "SCOPEGATE_AUDIT_SINK: expected stdout, file:PATH or redis"),
        ((), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp"}, "SCOPEGATE_POLICY (or --policy) is required"),
        ((), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp", "SCOPEGATE_POLICY": str(POLICY)}, "no credential source"),
        ((), {"SCOPEGATE_UPSTREAM": "http://127.0.0.1:1/mcp", "SCOPEGATE_POLICY": str(POLICY.parent / "app-token.yaml"),
              "SCOPEGATE_PAT_FILE": __file__}, "SCOPEGATE_PAT_FILE: "),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(args: tuple, env: dict, words: str) -> None:
    done = run_cli("serve", *args, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr


def test_flags_win_over_variables(pki: dict, tmp_path: Path) -> None:
    from proxy.config import load

    config = load({"SCOPEGATE_UPSTREAM": "http://a.example/mcp", "SCOPEGATE_LISTEN": "0.0.0.0:1"},
                  {"upstream": "http://b.example/x", "listen": None})
    assert str(config.upstream) == "http://b.example/x" and config.listen == ("0.0.0.0", 1)
    tls = load({"SCOPEGATE_UPSTREAM": "http://a/mcp", "SCOPEGATE_TLS_CERT": pki["cert"],
                "SCOPEGATE_TLS_KEY": pki["key"]}, {})
    assert tls.listen == ("127.0.0.1", 8443) and isinstance(tls, Config)


def test_unloadable_key_is_a_configuration_error(pki: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    done = run_cli("serve", "--upstream", "http://127.0.0.1:1/mcp", "--tls-cert", pki["cert"], "--tls-key", str(bad))
    assert done.returncode == 2 and "cannot load" in done.stderr


async def test_sigterm_with_open_streams_exits_within_seconds(upstream: Any, recorder: Recorder,
                                                              pat_file: str) -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--upstream", upstream.url, "--listen", f"127.0.0.1:{port}",
         "--pat-file", pat_file, "--policy", str(POLICY), "--metrics-listen", "127.0.0.1:0"],
        env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        from tests.rawmcp import LegacySession, next_event, slow_call

        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(url):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            session = LegacySession(http, url)
            await session.open()
            get = await http.get(url, headers=session.headers())
            post = await session.post(slow_call(1, steps=200, delay=0.1))
            assert await next_event(post) is not None
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
            elapsed = time.monotonic() - started
            get.close()
            post.close()
        assert code == 0
        assert elapsed < 2.5, f"took {elapsed:.1f}s to stop"  # the shutdown timeout is 3 s: streams were closed
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
