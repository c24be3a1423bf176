"""The policy's `anonymous:` section: off by default (no credential → 401); when present, a request without any
credential acts as one principal holding exactly its scopes (and its workspace, bound); a wrong credential is
still 401; a reload turns it on or off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, ConfigError
from proxy.identity.loader import load_identity
from tests.conftest import POLICIES, TOKENS, Recorder
from tests.test_identity import call as list_call
from tests.test_workspaces import call

ANONYMOUS = (POLICIES / "pat-workspaces.yaml").read_text().replace(
    "default: deny\n", "default: deny\nanonymous:\n  scopes: [mcp:read]\n  workspace: acme\n", 1)


async def test_anonymous_reads_only_what_the_section_grants(start_proxy: Any, upstream: Any, recorder: Recorder,
                                                            tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ANONYMOUS)
    url = await start_proxy(upstream.url, policy=str(policy))
    status, body = await call(url, "", "list_accounts", {}, extra={"Authorization": ""})
    assert status == 200 and body["result"]["isError"] is False
    assert recorder.calls("tools/call")[-1]["params"]["arguments"]["workspaceId"] == "acme"  # bound: injected
    status, body = await call(url, "", "list_accounts", {"workspaceId": "globex"}, extra={"Authorization": ""})
    assert body["result"]["isError"] is True and "bound to workspace 'acme'" in str(body)
    recorder.received.clear()
    status, body = await call(url, "", "create_vendor", {"name": "x"}, extra={"Authorization": ""})
    assert status == 403 and recorder.calls("tools/call") == []  # mcp:write is not granted
    bad = await list_call(url, "sgp_000000000000_" + "A" * 43)
    assert bad.status == 401  # a wrong credential is never downgraded to anonymous
    writer = await list_call(url, TOKENS["writer"])
    assert writer.status == 200  # credentials work as before


async def test_off_by_default(proxy_url: str, recorder: Recorder) -> None:
    assert (await list_call(proxy_url, None)).status == 401


def test_an_anonymous_only_policy_is_a_credential_source(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nscopes: [mcp:read]\nanonymous: {scopes: [mcp:read]}\n"
                      "tools:\n  - {match: list_accounts, scopes: [mcp:read]}\n")
    from yarl import URL

    assert load_identity(Config(upstream=URL("http://127.0.0.1:1/mcp"), policy=str(policy)), {}).registry is None
    policy.write_text("version: 1\nscopes: [mcp:read]\ntools: []\n")
    with pytest.raises(ConfigError, match="no credential source"):
        load_identity(Config(upstream=URL("http://127.0.0.1:1/mcp"), policy=str(policy)), {})


async def test_sessions_never_cross_between_anonymous_and_credentialed_callers(start_proxy: Any, upstream: Any,
                                                                             recorder: Recorder,
                                                                             tmp_path: Path) -> None:
    """Every anonymous caller is the one principal, so a credentialed caller's session must not become usable by
    dropping the credential (a downgrade onto someone's session), nor an anonymous session by adding one."""
    import aiohttp

    from tests.rawmcp import LegacySession

    policy = tmp_path / "policy.yaml"
    policy.write_text(ANONYMOUS)
    url = await start_proxy(upstream.url, policy=str(policy))
    listing = {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}}
    async with aiohttp.ClientSession() as http:
        writer, anonymous = LegacySession(http, url), LegacySession(http, url, anonymous=True)
        await writer.open()
        await anonymous.open()
        recorder.received.clear()
        for session, headers in ((writer, anonymous.auth), (anonymous, writer.auth),
                                 (anonymous, {"Authorization": f"Bearer {TOKENS['reader']}"})):
            hijack = {**session.headers(), "Authorization": ""} | headers
            hijack = {k: v for k, v in hijack.items() if v}  # no Authorization header at all when anonymous
            async with http.post(url, json=listing, headers=hijack) as resp:
                assert resp.status == 404, (resp.status, await resp.text())
            async with http.get(url, headers=hijack) as resp:  # nor its stream
                assert resp.status == 404
            async with http.delete(url, headers=hijack) as resp:  # nor ending it
                assert resp.status == 404
        assert recorder.received == []  # none reached the upstream
        async with anonymous.post(listing) as resp:  # each still works for its owner
            assert resp.status == 200
        async with writer.post(listing) as resp:
            assert resp.status == 200
