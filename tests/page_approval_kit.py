"""Shared parts of the approval-page tests: a proxy with the OAuth server on and the journal posting held for a
named person (`approve: {via: page}`), the people (PATs), and an approver at a browser over plain HTTP."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from proxy.config import Config
from proxy.demo.run import free_port
from proxy.edge.app import start
from proxy.identity.loader import load_identity
from tests.conftest import POLICIES, Recorder
from tests.test_oauth import pem

TOOL = "create_journal_entry"
ENTRY = {"workspaceId": "acme", "date": "2026-10-31", "memo": "supplies",
         "lines": [{"account": "6000", "debit": 120}, {"account": "1000", "credit": 120}]}
REQUESTER, APPROVER, OUTSIDER = "alice@example.com", "bob@example.com", "carol@example.com"


def page_policy(tmp_path: Path, name: str = "page.yaml", **approve: Any) -> str:
    policy = yaml.safe_load((POLICIES / "pat-workspaces.yaml").read_text())
    for entry in policy["tools"]:
        if entry["match"] == TOOL:
            entry.update({"confirm": "human", "fallback": "refuse", "approve": {
                "via": "page", "approvers": {"subjects": [REQUESTER, APPROVER]}, "four_eyes": True, **approve}})
            entry.pop("confirm_ttl_seconds", None)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(policy))
    return str(path)


def posted(recorder: Recorder) -> list[dict]:
    """The journal postings that reached the upstream for real (the dry run is not one)."""
    return [c["params"]["arguments"] for c in recorder.calls("tools/call")
            if c["params"]["name"] == TOOL and not c["params"]["arguments"].get("dry_run")]


@dataclass
class PageProxy:
    url: str = ""  # the MCP endpoint
    origin: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    runners: list[Any] = field(default_factory=list)
    policy: str = ""

    @property
    def app(self) -> Any:
        return self.runners[-1].app


async def start_page_proxy(started: PageProxy, upstream_url: str, tmp_path: Path, pat_file: str,
                           policy: str | None = None, **settings: Any) -> PageProxy:
    key_file = tmp_path / "signing.pem"
    if not key_file.exists():
        key_file.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    port = free_port()
    public = settings.pop("public", None) or f"http://127.0.0.1:{port}/mcp"
    started.policy = policy or started.policy or page_policy(tmp_path)
    config = Config(upstream=URL(upstream_url), listen=("127.0.0.1", port), public_url=URL(public),
                    policy=started.policy, pat_file=pat_file, metrics_listen=("127.0.0.1", 0),
                    oauth_signing_keys=(str(key_file),), **settings)
    runner, _ = await start(config, load_identity(config, {}))
    started.runners.append(runner)
    started.url = f"http://127.0.0.1:{port}/mcp"
    started.origin = public.removesuffix("/mcp")
    return started


def approval_link(text: str) -> str:
    found = re.search(r"(http://\S+/oauth/approvals/apv_[A-Za-z0-9_-]+)", text)
    assert found, f"no approval link in {text!r}"
    return found.group(1)


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field on the page"
    return found.group(1)


class Approver:
    """A person at a browser over plain HTTP with a cookie jar: signs in on the approval page with a PAT, decides."""

    def __init__(self, token: str, origin: str) -> None:
        self.http = httpx2.AsyncClient(follow_redirects=False, timeout=30)
        self.token, self.origin = token, origin
        self.last_page = ""

    async def open(self, link: str) -> httpx2.Response:
        """`link` may name another replica than the public origin (as a load balancer would pick): the browser's
        Origin stays the public one."""
        page = await self.http.get(link)
        if page.status_code == 200 and 'name="token"' in page.text:
            here = link.split("/oauth/")[0]
            signed_in = await self.http.post(f"{here}/oauth/signin", headers={"Origin": self.origin}, data={
                "request": hidden(page.text, "request"), "token": self.token})
            assert signed_in.status_code == 303, signed_in.text
            assert here + signed_in.headers["location"] == link
            page = await self.http.get(link)
        self.last_page = page.text
        return page

    async def decide(self, link: str, decision: str = "approve", reason: str = "") -> httpx2.Response:
        page = await self.open(link)
        assert page.status_code == 200, page.text
        return await self.http.post(link, headers={"Origin": self.origin}, data={
            "csrf": hidden(page.text, "csrf"), "decision": decision, "reason": reason})

    async def force(self, link: str, decision: str = "approve") -> httpx2.Response:
        """Post a decision the page did not offer this person, with a valid session and its own CSRF token (taken
        from Connected apps): what someone the rule does not allow would try."""
        await self.open(link)
        apps = await self.http.get(f"{self.origin}/oauth/apps")
        return await self.http.post(link, headers={"Origin": self.origin}, data={
            "csrf": hidden(apps.text, "csrf"), "decision": decision})

    async def close(self) -> None:
        await self.http.aclose()
