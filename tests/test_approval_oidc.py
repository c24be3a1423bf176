"""The approval page signs people in through the organisation's OpenID Connect provider (npm oidc-provider, as for
consent) and brings them back to the approval they came for; `approvers: {roles: [...]}` matches the role the
provider's groups map to, and a person whose role is not named cannot decide."""

from __future__ import annotations

import re
import time
from html import unescape
from typing import Any

import httpx2

from proxy.edge.app import OAUTH
from proxy.identity.approvals import new_id
from tests.test_approval_record import request
from tests.test_oauth_oidc import oauth_proxy, oidc_package, sso, through_provider  # noqa: F401


async def test_oidc_sign_in_returns_to_the_approval_and_its_role_decides(sso: Any) -> None:  # noqa: F811
    approvals = sso.app[OAUTH].approvals
    approval_id = new_id()
    await approvals.ask(request(id=approval_id, created=time.time(), expires=time.time() + 300, four_eyes=True,
                                approvers={"roles": ["member"], "subjects": []}))
    origin = sso.issuer.removesuffix("/oauth")
    link = f"{sso.issuer}/approvals/{approval_id}"
    # victor's groups map to the viewer role, alice's to member
    for login, allowed in (("victor", False), ("alice", True)):
        browser = httpx2.AsyncClient(follow_redirects=False, timeout=20)
        try:
            page = await browser.get(link)
            assert page.status_code == 200 and 'name="token"' not in page.text  # OIDC only
            start = re.search(r'href="([^"]*/oidc/start[^"]*)"', page.text)
            assert start and "Sign in with Example SSO" in page.text
            page = await through_provider(browser, origin + unescape(start.group(1)), login)
            # back on the approval it came from (the sign-in's `request` named it)
            assert str(page.url) == link
            if not allowed:
                assert page.status_code == 403 and "not one of this write's approvers" in unescape(page.text)
                continue
            assert page.status_code == 200 and "Approve <code>post</code>?" in page.text
            csrf = re.search(r'name="csrf" value="([^"]*)"', page.text).group(1)  # type: ignore[union-attr]
            decided = await browser.post(link, headers={"Origin": origin}, data={"csrf": csrf, "decision": "approve"})
            assert decided.status_code == 303
        finally:
            await browser.aclose()
    decision = await approvals.decision(approval_id)
    assert decision["decision"] == "approved" and decision["by"]["subject"] == "alice@example.test"
    assert decision["by"]["role"] == "member"
