"""Attacks on the credential tree (issue 23) after it landed: what each decision depends on, who can change or
erase that state, and whether it survives a restart or the passing of time. Each test was red before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest

from tests import test_oauth
from tests.test_credentials import consent, lists, pat_id
from tests.test_oauth import hidden, register

oauth_proxy = test_oauth.oauth_proxy


async def test_a_revoked_pat_stays_revoked_when_the_file_extends_its_expiry(
        oauth_proxy: Any, issue: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A revocation of a registry credential was kept only until the expiry the file gave it then (plus an hour).
    The file is the operator's (GitOps): a Secret update that renews expiries (or re-creates the record) brought
    the revoked PAT back once that record had expired, from the page and from `pat revoke` alike (a mounted Secret
    is read-only, so the file itself never said `revoked`)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    on_page = issue("on page", scopes=["mcp:read"], subject="user-writer")
    by_cli = issue("by cli", scopes=["mcp:read"], subject="user-writer")
    proxy = await oauth_proxy.start(state_dir=str(state_dir))
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient(timeout=20) as http:
        person, _ = await consent(http, proxy, oauth_proxy.tokens["writer"], await register(http, proxy))
        apps = await person.http.get(f"{origin}/oauth/apps")
        done = await person.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                      data={"id": pat_id(on_page), "csrf": hidden(apps.text, "csrf")})
        assert done.status_code == 303
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")},
               "SCOPEGATE_STATE_DIR": str(state_dir), "USER": "ops"}
        os.chmod(issue.path, 0o444)  # a mounted Secret: the CLI cannot mark the file
        try:
            revoked = subprocess.run([sys.executable, "-m", "proxy", "pat", "revoke", pat_id(by_cli), "--file",
                                      issue.path], env=env, capture_output=True, text=True, timeout=30)
        finally:
            os.chmod(issue.path, 0o644)
        assert "revoked in" in revoked.stdout, revoked.stderr
        assert await lists(http, proxy, on_page) == 401 and await lists(http, proxy, by_cli) == 401
        # The next Secret update renews both for a year; three hours pass (the state's clock only).
        later = datetime.now(UTC) + timedelta(days=365)
        issue.rewrite(**{pat_id(on_page): {"expires": later}, pat_id(by_cli): {"expires": later}})
        real = time.time
        monkeypatch.setattr("proxy.durable.time", SimpleNamespace(time=lambda: real() + 3 * 3600,
                                                                 monotonic=time.monotonic))
        assert await lists(http, proxy, on_page) == 401
        assert await lists(http, proxy, by_cli) == 401


def test_an_oidc_claim_other_than_sub_or_a_verified_email_cannot_name_another_person() -> None:
    """`subject_claim: name` (or `preferred_username`, `upn`): the value the provider sends was taken verbatim as
    the person. Anyone whose display name reads "alice@example.com" became alice here: saw and revoked her PATs
    on Connected apps, shared her grant and session caps. Like `sub`, it is qualified by the issuer."""
    from proxy.identity.oauth.oidc import OidcSettings, SignInFailed, person_of

    def settings(claim: str) -> OidcSettings:
        return OidcSettings(issuer="https://idp.example", client_id="c", name="IdP", scopes=("openid",),
                            subject_claim=claim, role_claim="groups", roles=(("staff", "member"),))

    claims = {"sub": "u-1", "name": "alice@example.com", "email": "mallory@example.com", "email_verified": True}
    assert person_of(claims, settings("name")) == "alice@example.com@https://idp.example"
    assert person_of(claims, settings("sub")) == "u-1@https://idp.example"
    assert person_of(claims, settings("email")) == "mallory@example.com"  # verified: names the person as is
    with pytest.raises(SignInFailed):
        person_of({**claims, "email_verified": "true"}, settings("email"))


async def test_connected_apps_does_not_let_a_workspace_bound_sign_in_revoke_a_wider_credential(
        oauth_proxy: Any, issue: Any) -> None:
    """"No stronger than the sign-in" compared scopes only: a read-write PAT bound to acme that leaked ended its
    owner's read-write PAT for every workspace, and her grants made with it."""
    bound = issue("bound", scopes=["mcp:read", "mcp:write"], workspace="acme", subject="alice")
    wide = issue("wide", scopes=["mcp:read", "mcp:write"], subject="alice")
    proxy = await oauth_proxy.start()
    origin = proxy.issuer.removesuffix("/oauth")
    async with httpx2.AsyncClient(timeout=20) as http:
        client_id = await register(http, proxy)
        _, wide_app = await consent(http, proxy, wide, client_id)
        leaked, _ = await consent(http, proxy, bound, client_id)
        apps = await leaked.http.get(f"{origin}/oauth/apps")
        assert "Revoke <bdi>wide</bdi>" not in apps.text and "Revoke <bdi>bound</bdi>" in apps.text
        gid = "sgo_" + test_oauth.claims_of(wide_app["access_token"])["gid"]
        for target in (pat_id(wide), gid):
            forged = await leaked.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                            data={"id": target, "csrf": hidden(apps.text, "csrf")})
            assert forged.status_code == 403, target
        assert await lists(http, proxy, wide) == 200 and await lists(http, proxy, wide_app["access_token"]) == 200
        own = await leaked.http.post(f"{origin}/oauth/apps/revoke", headers={"Origin": origin},
                                     data={"id": pat_id(bound), "csrf": hidden(apps.text, "csrf")})
        assert own.status_code == 303 and await lists(http, proxy, bound) == 401  # its own: yes
