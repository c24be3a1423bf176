"""The official TypeScript SDK's OAuth client (npm @modelcontextprotocol/sdk, installed into .cache/ by the
`ts_sdk` fixture) through scopegate's own authorization server: discovery, registration, PKCE, consent by a person,
calls within the consented scope, and a refresh that rotates the refresh token."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

from tests import test_oauth, test_ts_client
from tests.test_oauth import REDIRECT, Person

oauth_proxy = test_oauth.oauth_proxy  # the same fixtures: the proxy with the OAuth server, the installed TS SDK
ts_sdk = test_ts_client.ts_sdk
SCRIPT = Path(__file__).resolve().parent / "ts" / "oauth_client.mjs"


async def test_typescript_sdk_oauth_client_connects_and_refresh_rotates(ts_sdk: Path, oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    script = ts_sdk / SCRIPT.name
    shutil.copyfile(SCRIPT, script)  # beside its node_modules, where Node resolves the SDK from
    process = await asyncio.create_subprocess_exec("node", str(script), proxy.url, REDIRECT,
                                                   stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 60)  # type: ignore[union-attr]
        assert first, await process.stderr.read()  # type: ignore[union-attr]
        authorize = json.loads(first)["authorize"]
        person = Person(oauth_proxy.tokens["writer"], untick=("mcp:write",))
        back = await person.authorize(authorize)
        query = parse_qs(urlsplit(back.headers["location"]).query)
        assert query["state"] == ["ts-state"] and query["iss"] == [proxy.issuer]
        process.stdin.write(query["code"][0].encode() + b"\n")  # type: ignore[union-attr]
        await process.stdin.drain()  # type: ignore[union-attr]
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    out = json.loads(stdout.decode().strip().splitlines()[-1])
    assert out["clientId"].startswith("sgc_") and "TS Assistant" in person.consent_html
    assert "list_accounts" in out["tools"] and "create_journal_entry" not in out["tools"]
    assert out["first"]["scope"] == "mcp:read" and out["afterRefresh"] is False
    assert out["second"]["refresh_token"] != out["first"]["refresh_token"]  # rotated
    claims = jwt.decode(out["second"]["access_token"], options={"verify_signature": False})
    assert claims["aud"] == proxy.url and claims["scope"] == "mcp:read"
