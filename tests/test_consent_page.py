"""The consent page people can judge (issue 26, part 3): the service's name, each scope's title and description
from the policy and the tools that need it, the client's trust level said plainly, the lifetimes the policy sets,
Allow disabled when nothing can be granted, client-written names isolated from the page's text direction; and
Connected apps with unique element ids however many apps it lists."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import yaml

from proxy.identity.oauth.browser import duration
from tests import test_oauth
from tests.conftest import POLICIES
from tests.test_oauth import REDIRECT, Person, authorization_url, code_for, exchange, pkce, register

oauth_proxy = test_oauth.oauth_proxy


def described_policy(tmp_path: Path) -> str:
    policy = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    policy["title"] = "Acme Ledger"
    policy["scopes"] = ["mcp:read", {"name": "mcp:write", "title": "Change your books",
                                     "description": "Post journal entries, reconcile and lock periods."}]
    policy["oauth"] = {**policy["oauth"], "access_token_ttl_seconds": 900, "refresh_token_ttl_seconds": 2 * 86400,
                       "grant_lifetime_seconds": 7 * 86400,
                       "clients": [{"client_id": "ledger-desktop", "client_name": "Ledger Desktop",
                                    "redirect_uris": [REDIRECT], "client_uri": "https://ledger.example/desktop",
                                    "policy_uri": "https://ledger.example/privacy"}]}
    path = tmp_path / "described.yaml"
    path.write_text(yaml.safe_dump(policy))
    return str(path)


async def consent_page(proxy: Any, person: Person, client_id: str, **extra: str) -> str:
    _, challenge = pkce()
    page = await person.http.get(authorization_url(proxy, client_id, challenge, **extra))
    origin = proxy.local
    if 'name="token"' in page.text:
        request = re.search(r'name="request" value="([^"]*)"', page.text).group(1)  # type: ignore[union-attr]
        signed = await person.http.post(origin + "/oauth/signin", headers={"Origin": origin},
                                        data={"request": request, "token": person.token})
        page = await person.http.get(origin + signed.headers["location"])
    assert page.status_code == 200, page.text
    return page.text


async def test_consent_page_says_what_the_policy_says(oauth_proxy: Any, tmp_path: Path) -> None:
    proxy = await oauth_proxy.start(policy=described_policy(tmp_path))
    async with httpx2.AsyncClient(timeout=10) as http:
        self_registered = await register(http, proxy)
    text = await consent_page(proxy, Person(oauth_proxy.tokens["writer"]), self_registered)
    assert "to use <bdi>Acme Ledger</bdi>?" in text
    assert "Change your books <code>mcp:write</code>" in text
    assert "Post journal entries, reconcile and lock periods." in text
    assert re.search(r"Needed by: create_journal_entry, reconcile_bank_transaction", text)
    assert 'aria-describedby="scope-2-about"' in text and 'id="scope-2-about"' in text
    assert "Access lasts 15 minutes at a time" in text and "good for\n2 days" in text and "at most 7 days" in text
    assert "not verified by your organisation" in text and "30 minutes" not in text
    assert re.search(r'<button type="submit" name="decision" value="allow">Allow</button>', text)

    known = await consent_page(proxy, Person(oauth_proxy.tokens["writer"]), "ledger-desktop")
    assert "Pre-registered by your organisation" in known and "not verified" not in known
    assert '<a href="https://ledger.example/desktop" rel="noreferrer">Homepage</a> · ' \
        '<a href="https://ledger.example/privacy" rel="noreferrer">Privacy</a>' in known
    assert "Homepage" not in text  # a self-registered client's own links are never shown


async def test_allow_is_disabled_when_nothing_can_be_granted(oauth_proxy: Any, tmp_path: Path) -> None:
    proxy = await oauth_proxy.start(policy=described_policy(tmp_path))
    async with httpx2.AsyncClient(timeout=10) as http:
        client_id = await register(http, proxy)
    text = await consent_page(proxy, Person(oauth_proxy.tokens["reader"]), client_id, scope="mcp:write")
    assert "your credential does not hold it" in text
    assert '<button type="submit" name="decision" value="allow" disabled aria-describedby="nothing">' in text
    assert 'id="nothing" role="alert"' in text


async def test_client_written_names_are_isolated_and_apps_ids_are_unique(oauth_proxy: Any) -> None:
    proxy = await oauth_proxy.start()
    hostile = "Evil\u202eppa lacol"  # RIGHT-TO-LEFT OVERRIDE: would reverse the text after it
    person = Person(oauth_proxy.tokens["writer"])
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(proxy.endpoint("register"), json={"client_name": hostile,
                                                                   "redirect_uris": [REDIRECT]})
        hostile_id = answer.json()["client_id"]
        text = await consent_page(proxy, person, hostile_id)
        assert f"Allow <bdi>{hostile}</bdi> to use" in text  # isolated: cannot reorder what follows
        for _ in range(2):  # two apps connected: Connected apps repeats the toggle component
            client_id = await register(http, proxy)
            verifier, challenge = pkce()
            code = await code_for(proxy, person, client_id, challenge)
            assert (await exchange(http, proxy, client_id, code, verifier)).status_code == 200
    apps = (await person.http.get(proxy.local + "/oauth/apps")).text
    ids = re.findall(r'\sid="([^"]+)"', apps)
    assert ids and not [i for i, n in Counter(ids).items() if n > 1]
    for target in re.findall(r'<input type="checkbox" id="([^"]+)"', apps):
        assert f'<label for="{target}"' in apps


def test_durations_in_words() -> None:
    assert [duration(s) for s in (900, 1800, 3600, 86400 * 30, 90, 7200)] == \
        ["15 minutes", "30 minutes", "1 hour", "30 days", "90 seconds", "2 hours"]


def test_scope_entries_title_and_administrators_in_the_policy(tmp_path: Path) -> None:
    import pytest

    from proxy.identity.oauth.setup import scope_words
    from proxy.policy.model import PolicyError, load_policy

    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ntitle: Acme Ledger\nscopes:\n  - mcp:read\n"
                    "  - {name: mcp:write, title: Change your books, description: Post entries.}\n"
                    "roles: {owner: ['mcp:*'], viewer: [mcp:read]}\nadministrators: [owner]\n"
                    "tools:\n  - {match: post, scopes: [mcp:read, mcp:write], effect: write}\n")
    policy = load_policy(path)
    assert policy.scopes == ("mcp:read", "mcp:write") and policy.administrators == ("owner",)
    assert policy.title == "Acme Ledger" and policy.scope_info["mcp:write"].title == "Change your books"
    assert scope_words(policy) == (("mcp:read", None, None, ("post",)),
                                   ("mcp:write", "Change your books", "Post entries.", ("post",)))
    path.write_text("version: 1\nscopes:\n  - {name: 'bad scope', tytle: x}\nroles: {a: []}\n"
                    "administrators: [nobody]\n")
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    said = str(refused.value)
    assert "scopes.0.name:" in said and "scopes.0.tytle: unknown key `tytle` (did you mean `title`?)" in said
    path.write_text("version: 1\nscopes: [a]\nroles: {a: [a]}\nadministrators: [nobody]\n")
    with pytest.raises(PolicyError, match=r"administrators.0: 'nobody' is not one of the policy's roles"):
        load_policy(path)
