"""Credentials stay what the person granted (issue 23): one attack per finding, each red on the code before it.

The tree: person -> credential (PAT, admin key, OIDC sign-in) -> OAuth grant (one per consent) -> refresh family and
access tokens. Consent bounds a token; a parent's end ends its children on the next request; revocations last
(across restarts, in the state directory or Redis) and can be seen; what anyone may create is bounded apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from proxy.edge.app import CREDENTIALS, OAUTH
from proxy.identity.oauth.grants import GRANT_KEY, Grant, access_claims
from tests import test_oauth
from tests.conftest import MODERN_META, POLICIES, modern_headers
from tests.test_oauth import (
    LIST,
    REDIRECT,
    Person,
    claims_of,
    code_for,
    exchange,
    hidden,
    mcp_headers,
    oauth_policy,
    pkce,
    register,
)

oauth_proxy = test_oauth.oauth_proxy  # the fixture: a proxy with scopegate's OAuth server on


async def consent(http: httpx2.AsyncClient, proxy: Any, token: str, client_id: str, *, untick: tuple[str, ...] = (),
                  person: Person | None = None, **extra: str) -> tuple[Person, dict[str, Any]]:
    person = person or Person(token, untick=untick)
    verifier, challenge = pkce()
    code = await code_for(proxy, person, client_id, challenge, **extra)
    answer = await exchange(http, proxy, client_id, code, verifier)
    assert answer.status_code == 200, answer.text
    return person, answer.json()


async def refresh(http: httpx2.AsyncClient, proxy: Any, client_id: str, token: str,
                  scope: str | None = None) -> httpx2.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    if scope is not None:
        data["scope"] = scope
    return await http.post(proxy.endpoint("token"), data=data)


async def call_tool(http: httpx2.AsyncClient, url: str, token: str, name: str,
                    arguments: dict[str, Any]) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": MODERN_META}}
    return await http.post(url, headers={**modern_headers("tools/call", name), "Authorization": f"Bearer {token}"},
                           json=body)


async def lists(http: httpx2.AsyncClient, proxy: Any, token: str) -> int:
    return (await http.post(proxy.url, headers=mcp_headers(token), json=LIST)).status_code


def pat_id(token: str) -> str:
    return token.split("_")[1]


# --- 1. consent bounds the token --------------------------------------------------------------------------------
async def test_consent_bounds_the_token_whatever_the_sign_in_credential_carries(oauth_proxy: Any,
                                                                                issue: Any) -> None:
    """A member's PAT carries `permissions: {acme: write}` (which imply perm:read and perm:write). The person ticks
    only perm:read: the app must not write, whatever rides along in the grant."""
    member = issue("member", scopes=[], role="member", permissions={"acme": "write"})
    proxy = await oauth_proxy.start(str(POLICIES / "org-ceiling.yaml"))
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, member, client_id, untick=("perm:write", "perm:admin"),
                                  scope="perm:read perm:write")
        assert tokens["scope"] == "perm:read"
        assert (await lists(http, proxy, tokens["access_token"])) == 200
        write = await call_tool(http, proxy.url, tokens["access_token"], "create_journal_entry",
                                {"workspaceId": "acme", "memo": "x", "lines": []})
        assert write.status_code == 403, write.text  # the consent said read
        after = await refresh(http, proxy, client_id, tokens["refresh_token"])
        assert after.json()["scope"] == "perm:read"  # and a refresh never yields more


# --- 2. one grant per consent, one subject per person -----------------------------------------------------------
async def test_another_credential_of_the_same_person_consents_to_a_grant_of_its_own(oauth_proxy: Any,
                                                                                    issue: Any) -> None:
    """The same person consents for the same app through a read-only PAT bound to acme, then through a read-write
    one: two grants. The first app's refresh stays read-only in acme (it used to become the second's)."""
    reader = issue("reader", scopes=["mcp:read"], workspace="acme", subject="alice")
    writer = issue("writer", scopes=["mcp:read", "mcp:write"], subject="alice")
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, first = await consent(http, proxy, reader, client_id)
        _, second = await consent(http, proxy, writer, client_id)
        one, two = claims_of(first["access_token"]), claims_of(second["access_token"])
        assert one["gid"] != two["gid"] and one["par"] == pat_id(reader) and two["par"] == pat_id(writer)
        again = (await refresh(http, proxy, client_id, first["refresh_token"])).json()
        claims = claims_of(again["access_token"])
        assert again["scope"] == "mcp:read" and claims["workspace"] == "acme" and claims["gid"] == one["gid"]
        held = await call_tool(http, proxy.url, again["access_token"], "create_journal_entry",
                               {"workspaceId": "acme", "memo": "x", "lines": []})
        assert held.status_code == 403
        elsewhere = await call_tool(http, proxy.url, again["access_token"], "list_accounts", {"workspaceId": "other"})
        assert "bound to workspace 'acme'" in elsewhere.text


async def test_connected_apps_revokes_only_what_its_sign_in_could(oauth_proxy: Any, issue: Any, tmp_path: Path
                                                                  ) -> None:
    """A person signed in with a read-only PAT sees their admin key and read-write PAT but cannot revoke them, even
    with a forged form: a leaked read-only token must not end its owner's stronger credentials."""
    reader = issue("reader", scopes=["mcp:read"], subject="alice")
    writer = issue("writer", scopes=["mcp:read", "mcp:write"], subject="alice")
    admin = issue("tenant admin", kind="admin_key", scopes=["mcp:read", "mcp:write"], subject="alice")
    proxy = await oauth_proxy.start(oauth_policy(tmp_path, sign_in=["pat", "admin_key"]))
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient(timeout=20) as http:
        person, _ = await consent(http, proxy, reader, await register(http, proxy))
        apps = await person.http.get(f"{origin}/oauth/apps")
        assert "tenant admin" in apps.text and "Revoke <bdi>tenant admin</bdi>" not in apps.text
        assert "Revoke <bdi>writer</bdi>" not in apps.text and "Revoke <bdi>reader</bdi>" in apps.text
        for target in (pat_id(admin), pat_id(writer)):
            forged = await person.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                            data={"id": target, "csrf": hidden(apps.text, "csrf")})
            assert forged.status_code == 403
        assert await lists(http, proxy, admin) == 200 and await lists(http, proxy, writer) == 200


# --- 3. children end with their parent ---------------------------------------------------------------------------
async def test_a_parent_marked_revoked_in_the_file_ends_its_grants_and_sessions(oauth_proxy: Any,
                                                                                issue: Any) -> None:
    """`pat revoke` without Redis marks the file: the grant the PAT signed in used to refresh forever."""
    proxy = await oauth_proxy.start()
    token = oauth_proxy.tokens["writer"]
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        person, tokens = await consent(http, proxy, token, client_id)
        assert await lists(http, proxy, tokens["access_token"]) == 200
        issue.rewrite(**{pat_id(token): {"revoked": True}})
        assert await lists(http, proxy, tokens["access_token"]) == 401  # the access token: next request
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 400
        origin = proxy.issuer.removesuffix("/oauth")
        assert 'name="token"' in (await person.http.get(f"{origin}/oauth/apps")).text  # the browser session too


async def test_an_expired_parent_ends_its_grants(oauth_proxy: Any, issue: Any) -> None:
    proxy = await oauth_proxy.start()
    token = oauth_proxy.tokens["writer"]
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, token, client_id)
        issue.rewrite(**{pat_id(token): {"expires": datetime.fromtimestamp(time.time() - 1, UTC)}})
        assert await lists(http, proxy, tokens["access_token"]) == 401
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 400


async def test_a_browser_session_of_a_revoked_parent_mints_no_grant(oauth_proxy: Any, issue: Any) -> None:
    """The sign-in session a PAT opened kept minting grants for an hour after the PAT was revoked."""
    proxy = await oauth_proxy.start()
    token = oauth_proxy.tokens["writer"]
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        person, _ = await consent(http, proxy, token, client_id)  # signed in: the browser holds a session
        _, challenge = pkce()
        from tests.test_oauth import authorization_url

        page = await person.http.get(authorization_url(proxy, client_id, challenge))
        assert "Allow" in page.text  # the consent page, straight away: the session is live
        issue.rewrite(**{pat_id(token): {"revoked": True}})
        answer = await person.http.post(f"{origin}/oauth/consent", headers={"Origin": origin}, data={
            "request": hidden(page.text, "request"), "csrf": hidden(page.text, "csrf"), "decision": "allow",
            "scope": "mcp:read"})
        assert answer.status_code == 403 and "location" not in answer.headers


def test_a_grant_never_outlives_its_absolute_lifetime() -> None:
    """Pure: an access token's expiry is capped by its grant's (and a refresh checks the grant's, below)."""
    now = int(time.time())
    grant = Grant("a" * 24, "alice", "c", "C", ("mcp:read",), parent="b" * 12, created=now - 100, expires=now + 60)
    claims = access_claims(grant, grant.scopes, issuer="i", audience="a", now=now, ttl=1800)
    assert claims["exp"] == now + 60 and claims["par"] == "b" * 12


async def test_a_grant_past_its_lifetime_refreshes_no_more(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, oauth_proxy.tokens["writer"], client_id)
        state = proxy.app[CREDENTIALS].state
        gid = claims_of(tokens["access_token"])["gid"]
        record = orjson.loads(await state.get(GRANT_KEY + gid))
        await state.set(GRANT_KEY + gid, orjson.dumps({**record, "expires": int(time.time()) - 1}).decode())
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 400


async def test_with_redis_a_revoked_parent_ends_its_access_tokens_at_once_on_every_replica(
        oauth_proxy: Any, redis_server: Any, issue: Any, tmp_path: Path) -> None:
    first = await oauth_proxy.start(redis_url=redis_server.url)
    replicas = [first.url]
    await oauth_proxy.start(redis_url=redis_server.url, public=first.url)
    replicas.append(oauth_proxy.local + "/mcp")  # the second replica's own address (same public URL)
    token = oauth_proxy.tokens["writer"]
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, first)
        _, tokens = await consent(http, first, token, client_id)
        assert await lists(http, first, tokens["access_token"]) == 200
        copy = tmp_path / "operators-copy.yaml"
        copy.write_bytes(Path(issue.path).read_bytes())
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")},
               "SCOPEGATE_REDIS_URL": redis_server.url, "USER": "ops"}
        done = subprocess.run([sys.executable, "-m", "proxy", "pat", "revoke", pat_id(token), "--file", str(copy)],
                              env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "ended 1 grant" in done.stdout, (done.stdout, done.stderr)
        for local in replicas:  # the access token (not only the refresh): at once, everywhere
            assert (await http.post(local, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code == 401
        listing = subprocess.run([sys.executable, "-m", "proxy", "pat", "list", "--json", "--file", str(copy)],
                                 env=env, capture_output=True, text=True, timeout=30)
        (row,) = [r for r in json.loads(listing.stdout)["credentials"] if r["id"] == pat_id(token)]
        gid = "sgo_" + claims_of(tokens["access_token"])["gid"]
        assert row["status"] == "revoked" and row["revoked"]["by"] == "cli:ops" and row["revoked"]["ended"] == [gid]


# --- 4. revocations last and can be seen ---------------------------------------------------------------------------
async def test_revocations_on_connected_apps_survive_a_restart_and_pat_list_says_so(
        oauth_proxy: Any, issue: Any, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    second = issue("second", scopes=["mcp:read"], subject="user-writer")
    proxy = await oauth_proxy.start(state_dir=str(state_dir))
    port = int(proxy.url.split(":")[2].split("/")[0])
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        person, tokens = await consent(http, proxy, oauth_proxy.tokens["writer"], client_id)
        gid = "sgo_" + claims_of(tokens["access_token"])["gid"]
        for target in (gid, pat_id(second)):
            apps = await person.http.get(f"{origin}/oauth/apps")
            done = await person.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                          data={"id": target, "csrf": hidden(apps.text, "csrf")})
            assert done.status_code == 303
        await oauth_proxy.runners.pop().cleanup()
        proxy = await oauth_proxy.start(state_dir=str(state_dir), port=port)  # a restart, same state
        assert await lists(http, proxy, tokens["access_token"]) == 401
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 400
        assert await lists(http, proxy, second) == 401
        assert await lists(http, proxy, oauth_proxy.tokens["writer"]) == 200
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")},
               "SCOPEGATE_STATE_DIR": str(state_dir), "USER": "ops"}
        listing = subprocess.run([sys.executable, "-m", "proxy", "pat", "list", "--file", issue.path],
                                 env=env, capture_output=True, text=True, timeout=30)
        lines = listing.stdout.splitlines()
        at = next(n for n, line in enumerate(lines) if line.startswith(pat_id(second)))
        assert lines[at].split()[2] == "revoked" and "by user-writer on Connected apps" in lines[at + 1]
        # The CLI revokes in the same file: the running proxy sees it (no Redis, no restart).
        done = subprocess.run([sys.executable, "-m", "proxy", "pat", "revoke", pat_id(oauth_proxy.tokens["writer"]),
                               "--file", issue.path],
                              env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        await asyncio.sleep(0.2)
        assert await lists(http, proxy, oauth_proxy.tokens["writer"]) == 401


async def test_without_a_state_dir_the_proxy_says_revocations_are_not_durable(
        oauth_proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    await oauth_proxy.start()
    assert "credential state is in memory" in caplog.text and "SCOPEGATE_STATE_DIR" in caplog.text


# --- 5. bounded by who creates it --------------------------------------------------------------------------------
async def test_a_flood_of_registrations_and_a_refresh_loop_stop_no_one_else(oauth_proxy: Any, tmp_path: Path
                                                                            ) -> None:
    """100,000 anonymous registrations (they used to fill the store every OAuth state shares: /authorize answered
    503 for everyone for 30 days) and a client refreshing in a loop (a 30-day replay marker each): a
    pre-registered client and a signed-in person still get codes and tokens, and the refresh loop's state stays
    one family."""
    policy = oauth_policy(tmp_path, clients=[{"client_id": "desk", "client_name": "Desk",
                                              "redirect_uris": [REDIRECT]}])
    # 300 refreshes a minute from one address is what this test is made of, not what it tests: the per-address
    # limit (tests/test_rate_limits.py) is off here
    proxy = await oauth_proxy.start(policy, memory_store_keys=20_000, oauth_rate_limit=None)
    server = proxy.app[OAUTH]
    async with httpx2.AsyncClient(timeout=20) as http:
        used = await register(http, proxy)  # registered, then granted: kept apart from the anonymous space
        _, looping = await consent(http, proxy, oauth_proxy.tokens["reader"], used)
        metadata = server.settings.metadata()
        for index in range(100_000):
            await server.clients.register({"redirect_uris": [REDIRECT], "client_name": f"flood {index}"}, metadata)
        state = server.tree.state
        before = len(state._kv) + sum(len(m) for m in state._sets.values())
        current = looping["refresh_token"]
        for _ in range(300):
            answer = await refresh(http, proxy, used, current)
            assert answer.status_code == 200, answer.text
            current = answer.json()["refresh_token"]
        after = len(state._kv) + sum(len(m) for m in state._sets.values())
        assert after - before <= 1  # a last-used stamp at most: no marker per refresh
        _, desk = await consent(http, proxy, oauth_proxy.tokens["writer"], "desk")
        assert await lists(http, proxy, desk["access_token"]) == 200
        _, again = await consent(http, proxy, oauth_proxy.tokens["writer"], used)
        assert await lists(http, proxy, again["access_token"]) == 200
        fresh = await register(http, proxy)  # and a newcomer still registers and signs in
        _, newcomer = await consent(http, proxy, oauth_proxy.tokens["writer"], fresh)
        assert await lists(http, proxy, newcomer["access_token"]) == 200


async def test_a_person_holds_at_most_the_policy_s_grants(oauth_proxy: Any, tmp_path: Path) -> None:
    proxy = await oauth_proxy.start(oauth_policy(tmp_path, max_grants_per_person=2))
    async with httpx2.AsyncClient(timeout=20) as http:
        person = Person(oauth_proxy.tokens["writer"])
        for _ in range(2):
            await consent(http, proxy, "", await register(http, proxy), person=person)
        third = await register(http, proxy)
        _, challenge = pkce()
        from tests.test_oauth import authorization_url

        answer = await person.authorize(authorization_url(proxy, third, challenge))
        assert answer.status_code == 409 and "as many as allowed" in answer.text


def test_an_oauth_grant_s_sessions_count_against_its_person() -> None:
    from proxy.guards.session_binding import quota_of
    from proxy.identity.principal import Principal

    def grant(n: int) -> Principal:
        return Principal("alice", f"sgo_{n:024x}", "app", "oauth", frozenset())

    assert quota_of(grant(1)) == quota_of(grant(2)) == "person:alice"  # a new consent brings no new quota
    pat = Principal("alice", "0123456789ab", "pat", "pat", frozenset())
    assert quota_of(pat) == "pat:0123456789ab"


# --- 6. one store step; nothing consumed before it is allowed; evidence -------------------------------------------
async def test_two_presenters_of_one_code_get_at_most_one_grant_and_it_ends(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        verifier, challenge = pkce()
        code = await code_for(proxy, Person(oauth_proxy.tokens["writer"]), client_id, challenge)
        answers = await asyncio.gather(*(exchange(http, proxy, client_id, code, verifier) for _ in range(2)))
        assert sorted(a.status_code for a in answers)[0] != 200 or len({a.status_code for a in answers}) == 2
        assert any("already used" in a.text for a in answers)  # the second presenter is a replay, not "unknown"
        for answer in answers:
            if answer.status_code == 200:  # the family ended with the replay
                assert await lists(http, proxy, answer.json()["access_token"]) == 401


async def test_two_presenters_of_one_refresh_token_end_the_family(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, oauth_proxy.tokens["writer"], client_id)
        answers = await asyncio.gather(*(refresh(http, proxy, client_id, tokens["refresh_token"]) for _ in range(2)))
        assert [a.status_code for a in answers].count(200) <= 1
        assert any("already used" in a.text for a in answers)
        for answer in answers:
            if answer.status_code == 200:
                assert (await refresh(http, proxy, client_id, answer.json()["refresh_token"])).status_code == 400


async def test_a_wider_scope_on_refresh_is_refused_before_anything_is_consumed(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, oauth_proxy.tokens["writer"], client_id, untick=("mcp:write",))
        wider = await refresh(http, proxy, client_id, tokens["refresh_token"], scope="mcp:read mcp:write")
        assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
        retry = await refresh(http, proxy, client_id, tokens["refresh_token"])  # the ordinary retry: no "theft"
        assert retry.status_code == 200 and retry.json()["scope"] == "mcp:read"


async def test_refresh_exchanges_are_audited(oauth_proxy: Any, tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    proxy = await oauth_proxy.start(audit_sink=f"file:{trail}")
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, oauth_proxy.tokens["writer"], client_id)
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 200
    await oauth_proxy.runners.pop().cleanup()  # flushes the trail
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    refreshed = [r for r in records if r.get("method") == "oauth/token" and r["reason"] == "refresh_token"]
    assert len(refreshed) == 1 and refreshed[0]["credential_id"] == "sgo_" + claims_of(tokens["access_token"])["gid"]
    assert tokens["refresh_token"] not in trail.read_text()


# --- the real OAuth clients keep working --------------------------------------------------------------------------
async def test_fastmcp_s_oauth_helper_signs_in_consents_and_calls(oauth_proxy: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """fastmcp's `OAuth` (dynamic registration, its own loopback callback server, PKCE): the browser it would open is
    a person at the consent page, who then follows the redirect to fastmcp's callback."""
    import fastmcp.client.auth.oauth as fastmcp_oauth
    from fastmcp import Client as FastClient

    proxy = await oauth_proxy.start()
    person = Person(oauth_proxy.tokens["writer"], untick=("mcp:write",))
    followed: list[asyncio.Task[None]] = []

    async def browse(url: str) -> None:
        back = await person.authorize(url)
        assert back.status_code == 303, back.text
        async with httpx2.AsyncClient(timeout=5) as browser:
            for _ in range(100):  # fastmcp starts its callback server once the browser was "opened"
                try:
                    await browser.get(back.headers["location"])
                    return
                except httpx2.TransportError:
                    await asyncio.sleep(0.05)

    monkeypatch.setattr(fastmcp_oauth.webbrowser, "open",
                        lambda url: followed.append(asyncio.get_running_loop().create_task(browse(url))) or True)
    auth = fastmcp_oauth.OAuth(proxy.url, client_name="fastmcp test", callback_host="127.0.0.1")
    async with FastClient(proxy.url, auth=auth) as client:
        names = {t.name for t in await client.list_tools()}
        assert "list_accounts" in names and "create_journal_entry" not in names  # read was consented, not write
        result = await client.call_tool("list_accounts", {"workspaceId": "acme"})
        assert not result.is_error
    await asyncio.gather(*followed)


async def test_oauth_events_are_counted_and_a_replay_is_its_own_outcome(oauth_proxy: Any) -> None:
    from proxy.edge.app import OPS_PORT

    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, oauth_proxy.tokens["writer"], client_id)
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 200
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 400  # a replay
        scraped = (await http.get(f"http://127.0.0.1:{proxy.app[OPS_PORT]}/metrics")).text
    for line in ('scopegate_oauth_events_total{event="register",outcome="allow"} 1.0',
                 'scopegate_oauth_events_total{event="consent",outcome="allow"} 1.0',
                 'scopegate_oauth_events_total{event="token",outcome="allow"} 2.0',  # the code, one refresh
                 'scopegate_oauth_events_total{event="token",outcome="replay"} 1.0'):
        assert line in scraped, line


async def test_an_expired_access_token_found_in_a_log_cannot_end_its_grant(oauth_proxy: Any) -> None:
    """RFC 7009 revocation by access token takes a live one only: an old token someone finds must not be a way to
    sign a person's app out."""
    import jwt

    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, tokens = await consent(http, proxy, oauth_proxy.tokens["writer"], client_id)
        claims = claims_of(tokens["access_token"])
        header = jwt.get_unverified_header(tokens["access_token"])
        old = jwt.encode({**claims, "iat": claims["iat"] - 7200, "exp": claims["iat"] - 3600},
                         oauth_proxy.signing_key, algorithm="ES256", headers={"kid": header["kid"]})
        assert (await http.post(proxy.endpoint("revoke"), data={"token": old})).status_code == 200
        assert await lists(http, proxy, tokens["access_token"]) == 200  # still the person's app
        assert (await refresh(http, proxy, client_id, tokens["refresh_token"])).status_code == 200
        assert (await http.post(proxy.endpoint("revoke"), data={"token": tokens["access_token"]})).status_code == 200
        assert await lists(http, proxy, tokens["access_token"]) == 401  # a live one does


async def test_a_consent_revoke_loop_is_bounded_by_a_day_s_consents(oauth_proxy: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A revoked grant leaves evidence (its record, its revocation) for its lifetime: a person consenting and
    revoking in a loop is bounded by the consents of a day, and what a revoked grant no longer needs goes (its place
    among its parent's children, its refresh family)."""
    from proxy.identity.lifecycle import CHILDREN_KEY
    from proxy.identity.oauth import grants

    monkeypatch.setattr(grants, "CONSENTS_PER_DAY", 3)
    proxy = await oauth_proxy.start()
    token = oauth_proxy.tokens["writer"]
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        for _ in range(3):
            _, tokens = await consent(http, proxy, token, client_id)
            assert (await http.post(proxy.endpoint("revoke"), data={"token": tokens["refresh_token"]})
                    ).status_code == 200
        assert await proxy.app[CREDENTIALS].state.members(CHILDREN_KEY + pat_id(token)) == []
        verifier, challenge = pkce()
        code = await code_for(proxy, Person(token), client_id, challenge)
        fourth = await exchange(http, proxy, client_id, code, verifier)
        assert fourth.status_code == 400 and "as many app grants" in fourth.text
