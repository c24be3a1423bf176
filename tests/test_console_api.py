"""The admin API (issue 26), end to end against a running scopegate with its OAuth server: an admin key lists every
credential (PATs, admin keys, OAuth grants with their parents), creates a PAT that works at once (kept in the
durable state, never in the registry file) and never beyond its own reach, rotates it with a grace period,
revokes a person's PAT with the dry run listing the grant it ends; the activity search and the trail's verify; the
access simulator; the OpenAPI document. Every refusal: no credential, a non-administrator (bearer or session), a
cross-origin or CSRF-less browser request."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest

from proxy.console import ceiling
from proxy.console.actors import Actor, is_admin
from proxy.console.openapi import document
from proxy.ops.trail import write_key_pair
from tests import test_oauth
from tests.test_oauth import (
    LIST,
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

oauth_proxy = test_oauth.oauth_proxy


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def grant_for(proxy: Any, http: httpx2.AsyncClient, token: str) -> dict[str, Any]:
    """A person signs in with `token` and consents (read only) for a registered app; its tokens."""
    client_id = await register(http, proxy)
    verifier, challenge = pkce()
    code = await code_for(proxy, Person(token, untick=("mcp:write",)), client_id, challenge)
    return (await exchange(http, proxy, client_id, code, verifier)).json()


@pytest.fixture
def admin(oauth_proxy: Any, issue: Any) -> str:
    token = issue("root", kind="admin_key", scopes=["mcp:read"], subject="root@example.com", expires_in=86400)
    oauth_proxy.tokens["admin"] = token
    return token


async def test_admin_key_lists_creates_rotates_and_revokes_with_the_cascade(oauth_proxy: Any, admin: str,
                                                                           issue: Any) -> None:
    proxy = await oauth_proxy.start()
    api = proxy.local + "/admin/api"
    file_before = Path(issue.path).read_text()
    async with httpx2.AsyncClient(timeout=10) as http:
        tokens = await grant_for(proxy, http, oauth_proxy.tokens["writer"])
        grant_id = "sgo_" + claims_of(tokens["access_token"])["gid"]

        listed = (await http.get(api + "/credentials", headers=bearer(admin))).json()["credentials"]
        by_label = {row["label"]: row for row in listed}
        assert {"writer", "reader", "root", "Attack Test"} <= set(by_label)
        grant = by_label["Attack Test"]
        assert grant["kind"] == "oauth" and grant["id"] == grant_id and grant["subject"] == "user-writer"
        assert grant["parent"] == by_label["writer"]["id"] and grant["client"]["name"] == "Attack Test"
        assert grant["scopes"] == ["mcp:read"] and grant["status"] == "active"
        assert by_label["root"]["kind"] == "admin_key" and by_label["reader"]["workspace"] == "acme"
        assert "hash" not in json.dumps(listed)
        searched = (await http.get(api + "/credentials", params={"q": "attack"}, headers=bearer(admin))).json()
        assert [r["id"] for r in searched["credentials"]] == [grant_id]

        # create: within the admin key's own reach only (it holds mcp:read)
        beyond = await http.post(api + "/credentials", headers=bearer(admin), json={
            "label": "too much", "subject": "carol", "scopes": ["mcp:read", "mcp:write"]})
        assert beyond.status_code == 403 and "mcp:write" in beyond.json()["error"]
        never = await http.post(api + "/credentials", headers=bearer(admin), json={
            "label": "forever", "subject": "carol", "scopes": ["mcp:read"], "expires": "never"})
        assert never.status_code == 403 and "expires" in never.json()["error"]  # the key itself expires
        made = await http.post(api + "/credentials", headers=bearer(admin), json={
            "label": "Month-end review", "subject": "carol", "scopes": ["mcp:read"], "workspace": "acme",
            "expires": "12h"})
        assert made.status_code == 201, made.text
        first, row = made.json()["token"], made.json()["credential"]
        assert row["origin"] == "runtime" and row["created_by"].startswith("root@example.com")
        assert (await http.post(proxy.url, headers=mcp_headers(first), json=LIST)).status_code == 200
        assert Path(issue.path).read_text() == file_before  # the registry file is never written

        # rotate: the new secret works at once, the old one for the grace period chosen
        rotated = await http.post(api + f"/credentials/{row['id']}/rotate", headers=bearer(admin),
                                  json={"grace": "1h"})
        assert rotated.status_code == 200, rotated.text
        second = rotated.json()["token"]
        assert rotated.json()["credential"]["rotated"]["previous_valid"] is True
        for token in (first, second):
            assert (await http.post(proxy.url, headers=mcp_headers(token), json=LIST)).status_code == 200
        again = await http.post(api + f"/credentials/{row['id']}/rotate", headers=bearer(admin), json={"grace": "0"})
        third = again.json()["token"]
        assert (await http.post(proxy.url, headers=mcp_headers(third), json=LIST)).status_code == 200
        for token in (first, second):
            assert (await http.post(proxy.url, headers=mcp_headers(token), json=LIST)).status_code == 401

        # revoke the writer's PAT: the dry run names the grant signed in with it; nothing ends yet
        writer_id = by_label["writer"]["id"]
        dry = await http.post(api + f"/credentials/{writer_id}/revoke", headers=bearer(admin),
                              json={"dry_run": True})
        assert dry.status_code == 200 and [e["id"] for e in dry.json()["would_end"]] == [grant_id]
        assert dry.json()["would_end"][0]["label"] == "Attack Test"
        assert (await http.post(proxy.url, headers=mcp_headers(tokens["access_token"]), json=LIST)).status_code \
            == 200
        done = await http.post(api + f"/credentials/{writer_id}/revoke", headers=bearer(admin), json={})
        assert done.status_code == 200 and done.json()["revoked"]["ended"] == [grant_id]
        assert done.json()["revoked"]["by"].startswith("root@example.com on the console")
        for token in (oauth_proxy.tokens["writer"], tokens["access_token"]):
            assert (await http.post(proxy.url, headers=mcp_headers(token), json=LIST)).status_code == 401
        after = {r["id"]: r for r in (await http.get(api + "/credentials", headers=bearer(admin))).json()[
            "credentials"]}
        assert after[writer_id]["status"] == "revoked" and after[grant_id]["status"] == "revoked"
        assert after[grant_id]["revoked"]["parent"] == writer_id
        twice = await http.post(api + f"/credentials/{writer_id}/revoke", headers=bearer(admin), json={})
        assert twice.status_code == 409
        admin_id = after[next(i for i, r in after.items() if r["label"] == "root")]["id"]
        # an admin key is revoked only by an admin key holder: root is one, so it may; a missing id is 404
        assert (await http.post(api + "/credentials/nope/revoke", headers=bearer(admin), json={})).status_code == 404
        assert admin_id


async def test_refusals_no_credential_non_admin_cross_origin_and_csrf(oauth_proxy: Any, admin: str,
                                                                      tmp_path: Path) -> None:
    proxy = await oauth_proxy.start(policy=oauth_policy(tmp_path, sign_in=["pat", "admin_key"]))
    origin = proxy.local
    api = origin + "/admin/api"
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(api + "/credentials")).status_code == 401
        assert (await http.get(api + "/credentials", headers=bearer("sgk_000000000000_" + "x" * 43))).status_code \
            == 401
        reader = await http.get(api + "/credentials", headers=bearer(oauth_proxy.tokens["reader"]))
        assert reader.status_code == 403 and "administrators only" in reader.json()["error"]
        made = await http.post(api + "/credentials", headers=bearer(oauth_proxy.tokens["reader"]),
                               json={"label": "x", "scopes": ["mcp:read"], "workspace": "acme"})
        assert made.status_code == 403
        assert (await http.get(api + "/credentials", headers={**bearer(admin), "Host": "evil.example"})).status_code \
            == 403

    # A non-administrator's browser session: refused too.
    person = Person(oauth_proxy.tokens["writer"])
    signed = await person.http.post(origin + "/oauth/signin", headers={"Origin": origin},
                                    data={"request": "", "token": oauth_proxy.tokens["writer"]})
    assert signed.status_code == 303
    assert (await person.http.get(api + "/credentials")).status_code == 403

    # An administrator's session: reads work; a change needs this site's Origin, JSON and the CSRF token.
    boss = Person(admin)
    signed = await boss.http.post(origin + "/oauth/signin", headers={"Origin": origin},
                                  data={"request": "", "token": admin})
    assert signed.status_code == 303
    assert (await boss.http.get(api + "/credentials")).status_code == 200
    csrf = hidden((await boss.http.get(origin + "/oauth/apps")).text, "csrf")
    body = {"label": "from the browser", "subject": "dave", "scopes": ["mcp:read"], "expires": "1h"}
    cross = await boss.http.post(api + "/credentials", json=body,
                                 headers={"Origin": "https://evil.example", "X-CSRF-Token": csrf})
    assert cross.status_code == 403 and "from this site" in cross.json()["error"]
    form = await boss.http.post(api + "/credentials", data={"label": "x"}, headers={"Origin": "https://evil.example"})
    assert form.status_code == 403  # the cross-origin form post a hostile page could make
    no_csrf = await boss.http.post(api + "/credentials", json=body, headers={"Origin": origin})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    same_site_form = await boss.http.post(api + "/credentials", data={"label": "x"},
                                          headers={"Origin": origin, "X-CSRF-Token": csrf})
    assert same_site_form.status_code == 415
    ok = await boss.http.post(api + "/credentials", json=body, headers={"Origin": origin, "X-CSRF-Token": csrf})
    assert ok.status_code == 201, ok.text


async def test_activity_search_per_record_status_and_whole_trail_verify(oauth_proxy: Any, admin: str,
                                                                        tmp_path: Path) -> None:
    from tests.conftest import wait_until

    trail = tmp_path / "audit.jsonl"
    key = tmp_path / "audit.key"
    write_key_pair(str(key), str(tmp_path / "audit.pub"))
    proxy = await oauth_proxy.start(audit_sink=f"file:{trail}", audit_signing_key_file=str(key),
                                    audit_checkpoint_records=3)
    api = proxy.local + "/admin/api"
    async with httpx2.AsyncClient(timeout=10) as http:
        for name in ("reader", "writer", "reader"):
            assert (await http.post(proxy.url, headers=mcp_headers(oauth_proxy.tokens[name]), json=LIST)).status_code \
                == 200
        assert await wait_until(lambda: trail.exists() and trail.read_text().count("user-reader") >= 2)
        found = (await http.get(api + "/activity", params={"subject": "user-reader"}, headers=bearer(admin))).json()
        records = found["records"]
        assert len(records) == 2 and {r["record"]["subject"] for r in records} == {"user-reader"}
        assert all(r["status"] in ("sealed", "unsealed") for r in records)
        assert found["verified_with"] == "this proxy's own signing key"
        none = (await http.get(api + "/activity", params={"subject": "user-reader", "since": "2999-01-01"},
                               headers=bearer(admin))).json()
        assert none["records"] == []
        bad = await http.get(api + "/activity", params={"since": "yesterday"}, headers=bearer(admin))
        assert bad.status_code == 400 and "expected a time" in bad.json()["error"]

        public = (tmp_path / "audit.pub").read_text()
        whole = (await http.post(api + "/activity/verify", headers=bearer(admin), json={"public_key": public})).json()
        assert whole["whole"] is True and whole["records"] >= 3 and whole["verified_with"] == "the public key given"
        other = tmp_path / "other.key"
        write_key_pair(str(other), str(tmp_path / "other.pub"))
        wrong = (await http.post(api + "/activity/verify", headers=bearer(admin),
                                 json={"public_key": (tmp_path / "other.pub").read_text()})).json()
        assert wrong["whole"] is False and "not signed by this key" in wrong["problems"][0]
        garbage = await http.post(api + "/activity/verify", headers=bearer(admin), json={"public_key": "nope"})
        assert garbage.status_code == 400

    # An edited record: it and everything after it in its chain is broken, and verify says where.
    lines = trail.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if "user-writer" in line)
    lines[index] = lines[index].replace("user-writer", "user-nobody")
    trail.write_text("\n".join(lines) + "\n")
    async with httpx2.AsyncClient(timeout=10) as http:
        edited = (await http.get(api + "/activity", params={"subject": "user-nobody"}, headers=bearer(admin))).json()
        assert [r["status"] for r in edited["records"]] == ["broken"]
        report = (await http.post(api + "/activity/verify", headers=bearer(admin), json={})).json()
        assert report["whole"] is False and re.search(r"edited", report["problems"][0])


async def test_access_simulation_per_credential_and_per_scope_set(oauth_proxy: Any, admin: str) -> None:
    proxy = await oauth_proxy.start()
    api = proxy.local + "/admin/api"
    async with httpx2.AsyncClient(timeout=10) as http:
        listed = (await http.get(api + "/credentials", headers=bearer(admin))).json()["credentials"]
        reader_id = next(r["id"] for r in listed if r["label"] == "reader")
        seen = (await http.post(api + "/access", headers=bearer(admin), json={"credential": reader_id})).json()
        tools = {t["name"]: t for t in seen["tools"]}
        assert seen["workspace"] == "acme" and seen["scopes"] == ["mcp:read"]
        assert tools["list_accounts"]["outcome"] == "allowed"
        write = tools["create_journal_entry"]
        assert write["outcome"] == "refused" and write["missing"] == ["mcp:write"]
        assert write["rule"].startswith("tools[") and write["explain"][0].startswith("DENY tool create_journal_entry")
        both = (await http.post(api + "/access", headers=bearer(admin),
                                json={"scopes": ["mcp:read", "mcp:write"], "workspace": "acme"})).json()
        verdicts = {t["name"]: t for t in both["tools"]}
        assert (verdicts["create_journal_entry"]["outcome"], verdicts["create_journal_entry"]["confirm_by"]) == \
            ("held", "person")  # confirm: human
        assert (verdicts["lock_period"]["outcome"], verdicts["lock_period"]["confirm_by"]) == ("held", "token")
        assert {p["outcome"] for p in both["prompts"]} <= {"allowed", "refused"}
        gone = await http.post(api + "/access", headers=bearer(admin), json={"credential": "000000000000"})
        assert gone.status_code == 404
        assert (await http.post(api + "/access", headers=bearer(admin), json={})).status_code == 400


async def test_openapi_document_describes_exactly_the_routes(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    async with httpx2.AsyncClient(timeout=10) as http:
        served = (await http.get(proxy.local + "/admin/api/openapi.json")).json()
    assert served == document() and served["openapi"] == "3.1.0"
    routes = {(r.method.lower(), r.resource.canonical) for r in proxy.app.router.routes()  # type: ignore[union-attr]
              if r.resource is not None and r.resource.canonical.startswith("/admin/api/")
              and not r.resource.canonical.endswith("openapi.json") and r.method not in ("HEAD", "OPTIONS")}
    described = {(method, path) for path, ops in served["paths"].items() for method in ops}
    assert routes == described


# --- the pure rules ---------------------------------------------------------------------------------------------

def actor(**changes: Any) -> Actor:
    base = dict(subject="alice", credential_id="a1", kind="pat", scopes=frozenset({"mcp:read", "mcp:write"}),
                role=None, admin=False, expires_at=None)
    return Actor(**{**base, **changes})  # type: ignore[arg-type]


def want(**changes: Any) -> ceiling.Want:
    base = dict(kind="pat", label="x", subject="alice", scopes=("mcp:read",))
    return ceiling.Want(**{**base, **changes})  # type: ignore[arg-type]


def test_no_self_escalation_in_any_dimension() -> None:
    assert ceiling.beyond(actor(), want(), 0) == []
    assert ceiling.beyond(actor(), want(subject="bob"), 0)  # a person makes their own only
    assert ceiling.beyond(actor(admin=True), want(subject="bob"), 0) == []
    assert ceiling.beyond(actor(scopes=frozenset({"mcp:read"})), want(scopes=("mcp:write",)), 0)
    assert ceiling.beyond(actor(), want(kind="admin_key"), 0)
    assert ceiling.beyond(actor(kind="admin_key", admin=True), want(kind="admin_key"), 0) == []
    assert ceiling.beyond(actor(role="viewer"), want(role="owner"), 0)
    bound = actor(workspace="acme")
    assert ceiling.beyond(bound, want(), 0) and ceiling.beyond(bound, want(workspace="acme"), 0) == []
    some = actor(workspaces=frozenset({"acme"}))
    assert ceiling.beyond(some, want(), 0) and ceiling.beyond(some, want(workspaces=("acme", "globex")), 0)
    assert ceiling.beyond(some, want(workspaces=("acme",)), 0) == []
    assert ceiling.beyond(actor(projects=frozenset({"p1"})), want(), 0)
    assert ceiling.beyond(actor(projects=frozenset({"p1"})), want(projects=("p1",)), 0) == []
    mortal = actor(expires_at=1000.0)
    assert ceiling.beyond(mortal, want(expires_in=None), 0) and ceiling.beyond(mortal, want(expires_in=2000), 0)
    assert ceiling.beyond(mortal, want(expires_in=500), 0) == []


def test_who_administers() -> None:
    assert is_admin("admin_key", None, ())
    assert is_admin("oauth", "security", ("security",)) and not is_admin("oauth", "member", ("security",))
    assert not is_admin("pat", None, ("security",))
    assert ceiling.may_act_on(actor(admin=True), subject="bob", kind="pat", scopes=frozenset({"x"}))
    assert not ceiling.may_act_on(actor(admin=True), subject="bob", kind="admin_key", scopes=frozenset())
    assert not ceiling.may_act_on(actor(), subject="bob", kind="pat", scopes=frozenset())
    assert not ceiling.may_act_on(actor(scopes=frozenset({"mcp:read"})), subject="alice", kind="pat",
                                  scopes=frozenset({"mcp:write"}))


@pytest.mark.parametrize("home", ["sqlite", "redis"])
async def test_made_on_one_replica_works_on_another_and_a_rotation_reaches_it(home: str, oauth_proxy: Any, admin: str,
                                                                               tmp_path: Path, request: Any,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from proxy.identity import pats

    # a long trust in each copy: the new secret must still work at once (an unknown secret reads the record again)
    monkeypatch.setattr(pats, "RECHECK_SECONDS", 60.0)
    if home == "redis":
        where = {"redis_url": request.getfixturevalue("redis_server").url, "audit_sink": "redis"}
    else:
        (tmp_path / "state").mkdir()
        where = {"state_dir": str(tmp_path / "state")}
    one = await oauth_proxy.start(**where)
    one_api, one_url = one.local + "/admin/api", one.url
    two = await oauth_proxy.start(**where)
    async with httpx2.AsyncClient(timeout=10) as http:

        async def status(url: str, token: str, want: int) -> int:
            """The answer once it is `want`, or after 3 s: each replica reads another's commits within 50 ms
            (SQLite) and trusts its copy of a record for RECHECK_SECONDS."""
            for _ in range(30):
                got = (await http.post(url, headers=mcp_headers(token), json=LIST)).status_code
                if got == want:
                    break
                await asyncio.sleep(0.1)
            return got

        made = (await http.post(one_api + "/credentials", headers=bearer(admin), json={
            "label": "replicated", "subject": "erin", "scopes": ["mcp:read"], "workspace": "acme",
            "expires": "1h"})).json()
        first, cred_id = made["token"], made["credential"]["id"]
        assert await status(two.url, first, 200) == 200
        assert await status(one_url, first, 200) == 200
        second = (await http.post(one_api + f"/credentials/{cred_id}/rotate", headers=bearer(admin),
                                  json={"grace": "0"})).json()["token"]
        assert await status(two.url, second, 200) == 200
        assert await status(two.url, first, 401) == 401
        assert await status(one_url, first, 401) == 401
        if home == "redis":  # the activity search reads the trail's Redis stream: both replicas' records
            for _ in range(50):
                found = (await http.get(one_api + "/activity", params={"credential": cred_id},
                                        headers=bearer(admin))).json()["records"]
                if len(found) >= 3:
                    break
                await asyncio.sleep(0.1)
            assert {r["record"]["decision"] for r in found} == {"allow"} and len(found) == 3
            assert len({r["record"]["chain"] for r in found}) == 2  # one chain per replica


async def test_scopegate_pat_works_against_a_running_scopegate(oauth_proxy: Any, admin: str) -> None:
    """`scopegate pat create|list|rotate|revoke --url`: the same commands through the admin API, the admin key from
    the environment (never an argument: it would show in the process list)."""
    import asyncio
    import os
    import sys

    proxy = await oauth_proxy.start()
    root = Path(__file__).resolve().parent.parent

    async def pat(*args: str, key: str | None = admin) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
        if key is not None:
            env["SCOPEGATE_ADMIN_KEY"] = key
        done = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy", "pat", *args, "--url", proxy.local,
                                                    cwd=root, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await done.communicate()
        return done.returncode or 0, out.decode(), err.decode()

    code, token, said = await pat("create", "--label", "CLI made", "--subject", "frank", "--scope", "mcp:read",
                                  "--workspace", "acme", "--expires", "2h")
    assert code == 0 and "the token is shown once" in said and token.startswith("sgp_"), said
    token = token.strip()
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.post(proxy.url, headers=mcp_headers(token), json=LIST)).status_code == 200
    code, out, _ = await pat("list", "--json")
    rows = {r["label"]: r for r in json.loads(out)["credentials"]}
    assert code == 0 and rows["CLI made"]["origin"] == "runtime" and rows["CLI made"]["subject"] == "frank"
    cred_id = rows["CLI made"]["id"]
    code, new, said = await pat("rotate", cred_id, "--grace", "0")
    assert code == 0 and "no longer works" in said and new.strip() != token
    code, out, _ = await pat("revoke", cred_id, "--dry-run")
    assert code == 0 and "would end nothing else" in out
    code, out, _ = await pat("revoke", cred_id)
    assert code == 0 and "revoked by root@example.com" in out
    code, _, said = await pat("revoke", cred_id)
    assert code == 2 and "409: already revoked" in said  # a refusal: exit 2, one line
    code, _, said = await pat("list", key=oauth_proxy.tokens["reader"])
    assert code == 2 and "403: administrators only" in said
    code, _, said = await pat("list", key=None)
    assert code == 2 and "no admin key" in said
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.post(proxy.url, headers=mcp_headers(new.strip()), json=LIST)).status_code == 401


async def test_an_app_signed_in_with_a_run_time_pat_works_on_a_replica_that_never_saw_it(
        oauth_proxy: Any, admin: str, redis_server: Any) -> None:
    from urllib.parse import parse_qs, urlsplit

    from tests.test_oauth import OAuthProxy, authorization_url

    one = await oauth_proxy.start(redis_url=redis_server.url)
    one_local = one.local
    await oauth_proxy.start(public=one.url, redis_url=redis_server.url)
    two_local = oauth_proxy.local
    two = OAuthProxy(one.url, one.issuer.replace(one_local, two_local), one.signing_key)
    async with httpx2.AsyncClient(timeout=10) as http:
        # made on replica two, signed in with and consented there: replica one has never read it
        made = (await http.post(two_local + "/admin/api/credentials", headers=bearer(admin), json={
            "label": "carol's PAT", "subject": "carol", "scopes": ["mcp:read"], "expires": "1h"})).json()
        client_id = await register(http, two)
        verifier, challenge = pkce()
        person = Person(made["token"])
        person.origin = one_local  # the public origin, as the browser shows it
        back = await person.authorize(authorization_url(two, client_id, challenge))
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        tokens = (await exchange(http, two, client_id, code, verifier)).json()
        on_one = await http.post(f"{one_local}/mcp", headers=mcp_headers(tokens["access_token"]), json=LIST)
        assert on_one.status_code == 200  # its parent, read on first use (not "gone")
