"""The console in a real browser (issue 26): Debian's Chromium driven by Playwright, JavaScript off for every flow
(the pages need none). An administrator signs in with an admin key, creates a PAT with the consent page's toggles
(the token shown once works at once, read only), revokes a person's sign-in PAT after the cascade was shown (the
OAuth grant signed in with it ends too), revokes an app grant, searches the activity for that person, and checks
what the read-only credential would see. A person signed in with their own PAT sees only their own credentials and
activity. Then axe-core (in the same Chromium, JavaScript on, the CSP bypassed for its script only) finds no WCAG
2.2 AA violation on any page, no page scrolls sideways at 390 px, and every page is photographed (.cache/
screenshots/console, git-ignored) to be checked by eye."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import httpx2
import pytest

from proxy.ops.trail import write_key_pair
from tests import test_oauth
from tests.conftest import npm_installed
from tests.test_oauth import (
    LIST,
    Person,
    authorization_url,
    claims_of,
    code_for,
    exchange,
    mcp_headers,
    oauth_policy,
    pkce,
    register,
)

oauth_proxy = test_oauth.oauth_proxy

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
AXE = "axe-core@4.14.1"
SHOTS = ROOT / ".cache" / "screenshots" / "console"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


@pytest.fixture
async def chromium() -> Any:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        raise RuntimeError("Debian's chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def console(oauth_proxy: Any, issue: Any, tmp_path: Path) -> Any:
    oauth_proxy.tokens["admin"] = issue("root", kind="admin_key", scopes=["mcp:read", "mcp:write"],
                                        subject="root@example.com", expires_in=86400)
    key = tmp_path / "audit.key"
    write_key_pair(str(key), str(tmp_path / "audit.pub"))
    return await oauth_proxy.start(policy=oauth_policy(tmp_path, sign_in=["pat", "admin_key"]),
                                   audit_sink=f"file:{tmp_path / 'audit.jsonl'}", audit_signing_key_file=str(key),
                                   audit_checkpoint_records=5)


async def sign_in(page: Any, origin: str, token: str, where: str = "credentials") -> None:
    await page.goto(f"{origin}/admin/{where}")
    await page.get_by_role("heading", name="Sign in to the console").wait_for()
    await page.get_by_label("Your personal access token or admin key").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{origin}/admin/{where}")


async def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_administrator_and_person_in_the_console(console: Any, oauth_proxy: Any, chromium: Any) -> None:
    origin = console.local
    tokens = oauth_proxy.tokens
    async with httpx2.AsyncClient(timeout=10) as http:
        # the writer connects an app (an OAuth grant under their PAT) and uses it; the reader works too
        client_id = await register(http, console)
        verifier, challenge = pkce()
        code = await code_for(console, Person(tokens["writer"], untick=("mcp:write",)), client_id, challenge)
        app_tokens = (await exchange(http, console, client_id, code, verifier)).json()
        grant_id = "sgo_" + claims_of(app_tokens["access_token"])["gid"]
        for token in (app_tokens["access_token"], tokens["writer"], tokens["reader"]):
            assert (await http.post(console.url, headers=mcp_headers(token), json=LIST)).status_code == 200
        reader_app = await register(http, console)
        verifier2, challenge2 = pkce()
        code2 = await code_for(console, Person(tokens["reader"]), reader_app, challenge2)
        reader_grant = "sgo_" + claims_of((await exchange(http, console, reader_app, code2, verifier2)).json()[
            "access_token"])["gid"]

    context = await chromium.new_context(java_script_enabled=False)
    page = await context.new_page()
    await sign_in(page, origin, tokens["admin"])
    await page.get_by_role("heading", name="Credentials").wait_for()
    assert await page.get_by_role("heading", name="Attack Test").count() == 2  # both people's app grants
    await shoot(page, "credentials-admin")

    # create a read-only PAT for dana with the toggles: tick read, leave write unticked, bind it to acme
    await page.get_by_label("What it is for").fill("Read-only review")
    await page.get_by_label("The person it acts for").fill("dana")
    await page.get_by_label("mcp:read").check()
    assert not await page.get_by_label("mcp:write").is_checked()
    await page.get_by_label("Or only this workspace").fill("acme")
    await page.get_by_label("Expires after").select_option("12h")
    await page.get_by_role("button", name="Create token").click()
    await page.get_by_role("heading", name="Token created").wait_for()
    await shoot(page, "token-created")
    made = (await page.locator("output#token").inner_text()).strip()
    assert made.startswith("sgp_")
    async with httpx2.AsyncClient(timeout=10) as http:
        listed = await http.post(console.url, headers=mcp_headers(made), json=LIST)
        names = {t["name"] for t in listed.json()["result"]["tools"]}
        assert "list_accounts" in names and "create_journal_entry" not in names
    made_id = re.search(r"<code>([0-9a-f]{12})</code>\s*</dd>\s*</dl>", await page.content()).group(1)  # type: ignore

    # revoke the reader's app grant: the confirmation says what ends before anything does
    await page.goto(f"{origin}/admin/credentials?q={reader_grant}")
    await page.get_by_role("link", name=re.compile("Revoke Attack Test")).click()
    await page.get_by_role("heading", name="Revoke Attack Test?").wait_for()
    await page.get_by_text("its refresh tokens and every access token").wait_for()
    await page.get_by_role("button", name="Revoke Attack Test").click()
    await page.get_by_role("heading", name="Revoked").wait_for()

    # revoke the writer's PAT: the cascade (the app grant signed in with it) is shown first, then ends with it
    await page.goto(f"{origin}/admin/credentials?q=writer")
    await page.get_by_role("link", name=re.compile("Revoke writer")).click()
    await page.get_by_role("heading", name="Revoke writer?").wait_for()
    cascade = page.locator("ul.cascade li")
    assert await cascade.count() == 1 and grant_id in await cascade.inner_text()
    await shoot(page, "revoke-cascade")
    async with httpx2.AsyncClient(timeout=10) as http:  # nothing ended yet
        assert (await http.post(console.url, headers=mcp_headers(app_tokens["access_token"]), json=LIST)).status_code \
            == 200
    await page.get_by_role("button", name="Revoke writer and 1 more").click()
    await page.get_by_role("status").filter(has_text=grant_id).wait_for()
    async with httpx2.AsyncClient(timeout=10) as http:
        for token in (tokens["writer"], app_tokens["access_token"]):
            assert (await http.post(console.url, headers=mcp_headers(token), json=LIST)).status_code == 401
    await page.goto(f"{origin}/admin/credentials?status=revoked")
    assert await page.get_by_text("ended with").count() >= 1

    # the activity of that person: their calls, each with its chain status
    await page.goto(f"{origin}/admin/activity")
    await page.get_by_label("Person").fill("user-writer")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url(re.compile(r"subject=user-writer"))
    records = page.locator("ol.records > li")
    assert await records.count() >= 3
    text = await page.locator("ol.records").inner_text()
    assert "user-reader" not in text and "tools/list" in text and "oauth/consent" in text
    assert re.search(r"sealed: linked|linked, not yet sealed", text)
    await shoot(page, "activity-writer")
    await page.get_by_role("button", name="Verify").click()
    await page.get_by_text(re.compile(r"Whole: \d+ records")).wait_for()

    # what the read-only credential would see
    await page.goto(f"{origin}/admin/access")
    await page.get_by_label("Credential", exact=True).select_option(made_id)
    await page.get_by_role("button", name="Show what it sees").click()
    await page.get_by_role("heading", name=re.compile("What Read-only review")).wait_for()
    verdicts = await page.locator("ul.verdicts").first.inner_text()
    assert re.search(r"list_accounts: allowed", verdicts)
    assert re.search(r"create_journal_entry: refused .*missing mcp:write", verdicts)
    await shoot(page, "access-read-only")
    await context.close()

    # a person with their own PAT: their own part only
    mine = await chromium.new_context(java_script_enabled=False)
    page = await mine.new_page()
    await sign_in(page, origin, tokens["reader"])
    await page.get_by_text("you see your own part").wait_for()
    people = set(await page.locator("dl.facts dt:text-is('Person') + dd").all_inner_texts())
    assert people == {"user-reader"}  # their PAT and their (revoked) app grant; nobody else's
    assert await page.locator("section.card h2").count() == 3  # reader, its app grant, and the create form
    assert await page.get_by_label("The person it acts for").count() == 0  # a person makes their own only
    await shoot(page, "credentials-person")
    await page.goto(f"{origin}/admin/activity?subject=user-writer")  # asking for someone else's: their own shown
    assert "user-writer" not in await page.locator("ol.records").inner_text()
    await mine.close()


async def test_axe_finds_nothing_and_nothing_scrolls_sideways(console: Any, oauth_proxy: Any, chromium: Any,
                                                             tmp_path: Path) -> None:
    axe = (npm_installed(AXE, ROOT / ".cache" / "axe-core") / "node_modules" / "axe-core" / "axe.min.js").read_text()
    origin = console.local
    tokens = oauth_proxy.tokens
    async with httpx2.AsyncClient(timeout=10) as http:
        client_id = await register(http, console)
        _, challenge = pkce()
        code = await code_for(console, Person(tokens["writer"], untick=("mcp:write",)), client_id, challenge)
        assert code
        assert (await http.post(console.url, headers=mcp_headers(tokens["writer"]), json=LIST)).status_code == 200
        other = await register(http, console)
    # JavaScript on and the CSP bypassed: only so that axe's own script can run in the page
    context = await chromium.new_context(bypass_csp=True, viewport={"width": 390, "height": 844})
    page = await context.new_page()
    await sign_in(page, origin, tokens["admin"])
    _, challenge = pkce()
    pages = [f"{origin}/admin/credentials", f"{origin}/admin/credentials?q=nothing-matches",
             f"{origin}/admin/activity?subject=user-writer", f"{origin}/admin/access",
             f"{origin}/admin/access?scopes=mcp:read&workspace=acme", f"{origin}/oauth/apps",
             authorization_url(console, other, challenge)]
    problems: dict[str, Any] = {}

    async def check(name: str) -> None:
        for width in (390, 1280):
            await page.set_viewport_size({"width": width, "height": 844})
            await shoot(page, f"axe-{name}-{width}")
            wide = await page.evaluate("document.documentElement.scrollWidth")
            if wide > width:
                problems[f"{name} at {width} px"] = f"scrolls sideways: {wide} px wide"
        await page.add_script_tag(content=axe)
        found = await page.evaluate("async tags => (await axe.run(document, {runOnly: {type: 'tag', values: tags}}))"
                                    ".violations.map(v => [v.id, v.nodes.map(n => n.target.join(' '))])", TAGS)
        if found:
            problems[name] = found

    for n, url in enumerate(pages):
        await page.goto(url)
        await check(f"page{n}")
    # the pages a form leads to: the token shown once, the cascade, the verify report, a refusal
    await page.goto(f"{origin}/admin/credentials")
    await page.get_by_label("What it is for").fill("axe")
    await page.get_by_label("mcp:read").check()
    await page.get_by_label("Expires after").select_option("12h")  # the admin key itself expires in a day
    await page.get_by_role("button", name="Create token").click()
    await page.get_by_role("heading", name="Token created").wait_for()
    await check("token")
    await page.goto(f"{origin}/admin/credentials?q=writer")
    await page.get_by_role("link", name=re.compile("Revoke writer")).click()
    await check("revoke")
    await page.get_by_role("button", name=re.compile("Revoke writer")).click()
    await check("revoked")
    await page.goto(f"{origin}/admin/activity")
    await page.get_by_role("button", name="Verify").click()
    await check("verify")
    await page.goto(f"{origin}/admin/credentials?q=zzz")
    await page.goto(f"{origin}/admin/credentials/revoke?id=000000000000")
    await check("error")
    await context.close()
    signed_out = await chromium.new_context(bypass_csp=True)
    page = await signed_out.new_page()
    await page.goto(f"{origin}/admin/credentials")
    await check("signin")
    await signed_out.close()
    assert not problems, problems


async def test_a_person_cannot_act_on_or_even_see_anothers_credentials(console: Any, oauth_proxy: Any) -> None:
    """Over plain HTTP with the reader's browser session: the console's forms for the writer's PAT answer 404
    (not "forbidden": whose ids exist is not a person's business), a form from another site 403, and a forged
    create for someone else or beyond their scopes is refused by the same checks as the API's."""
    origin = console.local
    reader = Person(oauth_proxy.tokens["reader"])
    signed = await reader.http.post(origin + "/oauth/signin", headers={"Origin": origin},
                                    data={"request": "", "token": oauth_proxy.tokens["reader"],
                                          "next": "/admin/credentials"})
    assert signed.headers["location"] == "/admin/credentials"
    page = await reader.http.get(origin + "/admin/credentials")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    async with httpx2.AsyncClient(timeout=10) as http:
        admin = {"Authorization": f"Bearer {oauth_proxy.tokens['admin']}"}
        rows = (await http.get(origin + "/admin/api/credentials", headers=admin)).json()["credentials"]
    writer_id = next(r["id"] for r in rows if r["label"] == "writer")
    same = {"Origin": origin}
    assert (await reader.http.get(origin + f"/admin/credentials/revoke?id={writer_id}")).status_code == 404
    for path, data in (("/admin/credentials/revoke", {"id": writer_id}),
                       ("/admin/credentials/rotate", {"id": writer_id, "grace": "0"})):
        assert (await reader.http.post(origin + path, headers=same, data={**data, "csrf": csrf})).status_code == 404
    cross = await reader.http.post(origin + "/admin/credentials/create", headers={"Origin": "https://evil.example"},
                                   data={"csrf": csrf, "label": "x", "scope": "mcp:read"})
    assert cross.status_code == 403 and "from this site" in cross.text
    no_token = await reader.http.post(origin + "/admin/credentials/create", headers=same,
                                      data={"label": "x", "scope": "mcp:read"})
    assert no_token.status_code == 403
    beyond = await reader.http.post(origin + "/admin/credentials/create", headers=same, data={
        "csrf": csrf, "label": "x", "scope": ["mcp:read", "mcp:write"], "subject": "user-writer", "expires": "1h"})
    assert beyond.status_code == 403 and "mcp:write" in beyond.text
    mine = await reader.http.post(origin + "/admin/credentials/create", headers=same, data={
        "csrf": csrf, "label": "my script", "scope": "mcp:read", "subject": "user-writer", "expires": "max"})
    assert mine.status_code == 200 and "Token created" in mine.text
    lifetimes = re.search(r'<select id="new-expires".*?</select>', page.text, re.S).group(0)  # type: ignore[union-attr]
    assert '<option value="max" selected>until your own credential expires' in lifetimes  # an hour left: not "1h"
    assert '<option value="1h"' not in lifetimes and '<option value="never"' not in lifetimes
    assert "user-reader" in mine.text and "user-writer" not in mine.text  # `subject` from a person is ignored
    assert "bound to <code>acme</code>" in mine.text  # within the reader's own workspace binding
    assert (await reader.http.get(origin + "/admin/api/credentials")).status_code == 403
