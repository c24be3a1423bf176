"""Guard and rewriter: output that says where it came from (the policy's `provenance:`).

A tool whose results come from outside anyone's control (the upstream marks it `openWorldHint: true` in its own
list, as the proxy fetched it, or a rule says `untrusted: true`) may return text written to instruct the model
("prompt injection through tool output"). So:

- its results are marked: `_meta["io.scopegate/provenance"] = {"untrusted": true, "tool": ..., "source":
  "openWorldHint" | "rule"}`, and with `spotlight: true` each text content item is wrapped in delimiters carrying a
  nonce the output cannot guess (so it cannot close the wrapping itself);
- the first such call in a session (2025-11-25), or of a credential for stateless calls (2026-07-28), is noted in
  the store for `window_seconds`; while it stands, a write matching `hold_writes` is held for confirmation (as
  `confirm` says: a person, or a token) with a reason naming that first untrusted result (tool, request id, time);
- audit records carry the provenance (the untrusted call's, and a held write's reason).

The note is made when the untrusted call is let through, before its output exists: what may come back counts from
then on (a write racing the read cannot slip between them). A store that does not answer holds the write.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from fnmatch import fnmatchcase
from typing import Any

import orjson

from proxy.exchange import Answer, Exchange
from proxy.guards.catalog import Catalog, CatalogUnavailable, unavailable
from proxy.jsonrpc import Message
from proxy.policy.decide import Rules
from proxy.policy.reload import LivePolicy
from proxy.store import Store, StoreUnavailable

log = logging.getLogger("scopegate.provenance")

META_KEY = "io.scopegate/provenance"


def taint_key(kind: str, credential_id: str, session: str | None) -> str:
    """Per session, or per credential for calls without one (stateless)."""
    who = f"{kind}:{credential_id}:{session or ''}"
    return "scopegate:untrusted:" + hashlib.sha256(who.encode()).hexdigest()


def spotlight(text: str, tool: str, nonce: str) -> str:
    """Text content wrapped in delimiters a client can show and a model can be told about. Pure."""
    return (f"<<untrusted-content tool={tool!r} nonce={nonce}>>\n{text}\n<</untrusted-content nonce={nonce}>>")


def mark(result: dict[str, Any], tool: str, source: str, wrap: bool) -> dict[str, Any]:
    """A tool result marked as untrusted (and its text wrapped when asked). Pure: returns the changed result."""
    meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
    result["_meta"] = {**meta, META_KEY: {"untrusted": True, "tool": tool, "source": source}}
    if wrap and isinstance(result.get("content"), list):
        nonce = secrets.token_hex(8)
        result["content"] = [{**item, "text": spotlight(item["text"], tool, nonce)}
                             if isinstance(item, dict) and item.get("type") == "text"
                             and isinstance(item.get("text"), str) else item for item in result["content"]]
    return result


def holds(patterns: tuple[str, ...], tool: str) -> bool:
    return any(fnmatchcase(tool, pattern) for pattern in patterns)


class Provenance:
    def __init__(self, live: LivePolicy, store: Store, catalog: Catalog) -> None:
        self.live = live
        self.store = store
        self.catalog = catalog

    methods = frozenset({"tools/call"})

    async def source(self, rules: Rules, tool: str) -> str | None:
        """Why this tool's output is untrusted (`rule`, `openWorldHint`), or None. Raises CatalogUnavailable."""
        found = rules.find("tool", tool)
        if found is not None and found[1].untrusted:
            return "rule"
        facts = await self.catalog.facts(tool)
        annotations = facts.definition.get("annotations") if facts is not None and facts.definition else None
        if isinstance(annotations, dict) and annotations.get("openWorldHint") is True:
            return "openWorldHint"
        return None

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        rules = self.live.of(exchange).rules
        settings = rules.policy.provenance
        principal = exchange.principal
        decision = exchange.decision
        if settings is None or principal is None or decision is None or message.get("method") != "tools/call":
            return message
        tool = message["params"]["name"]
        try:
            source = await self.source(rules, tool)
        except CatalogUnavailable:
            return unavailable(message.get("id"), exchange.request_id)
        key = taint_key(principal.kind, principal.credential_id, exchange.session_id)
        if source is not None:
            if exchange.untrusted is None:
                exchange.untrusted = {}
            exchange.untrusted[repr(message.get("id"))] = (tool, source)
            try:
                if await self.store.get(key) is None:  # the first one in the window is the one named
                    first = {"tool": tool, "request_id": exchange.request_id,
                             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                    await self.store.set(key, orjson.dumps(first).decode(), ttl=settings.window_seconds)
            except StoreUnavailable:
                log.warning("cannot note untrusted output: the store does not answer (later writes are held)",
                            extra={"request_id": exchange.request_id})
            return message
        if decision.effect != "write" or exchange.held is not None or not holds(settings.hold_writes, tool):
            return message
        try:
            raw = await self.store.get(key)
            first = orjson.loads(raw) if raw is not None else None
            why = None if first is None else (
                f"untrusted output was returned to this {'session' if exchange.session_id else 'credential'} "
                f"earlier: the first from {first.get('tool')!r} (request {first.get('request_id')}, "
                f"{first.get('time')})")
        except StoreUnavailable:
            why = "whether untrusted output was returned earlier cannot be checked (store unavailable)"
        if why is not None:
            exchange.decision = decision._replace(confirm=True)
            exchange.held = why
            exchange.held_confirm = settings.confirm
        return message


class Marks:
    """The rewriter: a result answering a call of an untrusted tool (noted by the guard above) is marked (and
    wrapped), wherever it travels back (JSON, the call's SSE stream)."""

    def __init__(self, live: LivePolicy) -> None:
        self.live = live

    def idle(self, exchange: Exchange) -> bool:
        """Nothing for this rewriter in this exchange (the list cache's fast path stays open)."""
        return not exchange.untrusted

    def __call__(self, exchange: Exchange, response: Message, method: str | None) -> Message:
        if not exchange.untrusted or "method" in response:
            return response
        found = exchange.untrusted.get(repr(response.get("id")))
        result = response.get("result")
        if found is None or not isinstance(result, dict):
            return response
        settings = self.live.of(exchange).rules.policy.provenance
        mark(result, found[0], found[1], settings is not None and settings.spotlight)
        return response
