"""What the upstream's own `tools/list` says about each tool, as the proxy itself fetched it.

Where the policy delegates to the upstream's schema (a tool rule without `workspace:`, or no rule under
`default: annotations`), a decision needs these facts: which tools take the workspace argument, which header mirrors
it (`x-mcp-header`, 2026-07-28), and the `readOnlyHint`. They are never taken from lists that pass through on
their way to a client (those answer one client's session and request, which the client shapes); the proxy asks
the upstream itself, in its own session, with its own server-side headers (`edge/upstream_tools.py`):

- when it has no catalog yet, after `notifications/tools/list_changed` (a parsed notification from the upstream,
  on any stream it relays or on its own 2026-07-28 listen stream: `saw`), once the catalog is older than MAX_AGE,
  and when a call names a tool the catalog does not hold (at most once per UNKNOWN_REFETCH seconds);
- one fetch at a time, shared by every call that waits for it; a call waits at most WAIT seconds, and when the
  facts cannot be had it is refused (`CatalogUnavailable`, answered 503), never decided without them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from proxy.exchange import Answer
from proxy.jsonrpc import INTERNAL_ERROR, Message, error
from proxy.policy.pins import definition, item_digest

log = logging.getLogger("scopegate.catalog")

LIMIT = 20_000  # tools kept: a misbehaving upstream cannot grow it past this
WAIT = 5.0
MAX_AGE = 60.0
UNKNOWN_REFETCH = 5.0
LIST_CHANGED = "notifications/tools/list_changed"

FetchTools = Callable[[], Awaitable[list[Any]]]  # every tool of every page, or an exception


class CatalogUnavailable(Exception):
    """The upstream's tool schema is needed for a decision and cannot be had now."""


@dataclass(frozen=True, slots=True)
class ToolFacts:
    read_only: bool  # readOnlyHint: true
    properties: dict[str, str | None]  # top-level input property -> its x-mcp-header token, or None
    definition: dict[str, Any] | None = None  # what a pin covers (policy/pins.py)
    digest: str | None = None  # its canonical digest; None: unreadable (counts as drifted)


def tool_facts(tools: list[Any]) -> dict[str, ToolFacts]:
    """The facts of a tools/list result's `tools`, first LIMIT tools. Pure."""
    out: dict[str, ToolFacts] = {}
    for tool in tools:
        if len(out) >= LIMIT:
            break
        if not isinstance(tool, dict) or not isinstance(name := tool.get("name"), str):
            continue
        annotations = tool.get("annotations")
        schema = tool.get("inputSchema")
        props = schema.get("properties") if isinstance(schema, dict) else None
        defined = definition("tools", tool)
        out[name] = ToolFacts(
            read_only=isinstance(annotations, dict) and annotations.get("readOnlyHint") is True,
            properties={prop: (spec.get("x-mcp-header") if isinstance(spec.get("x-mcp-header"), str) else None)
                        for prop, spec in (props.items() if isinstance(props, dict) else ()) if isinstance(spec, dict)},
            definition=defined, digest=item_digest(defined),
        )
    return out


def unavailable(msg_id: Any, request_id: str) -> Answer:
    """The answer to a call that needs the upstream's schema while it cannot be had: retry, never unchecked."""
    return Answer(error(msg_id, INTERNAL_ERROR, "the upstream's tool list is needed to decide this call and cannot "
                        "be had now; retry shortly", {"requestId": request_id}),
                  http_status=503, headers=(("Retry-After", "1"),), decision="error", reason="catalog unavailable")


class Catalog:
    def __init__(self, fetch: FetchTools | None, *, wait: float = WAIT, max_age: float = MAX_AGE,
                 unknown_refetch: float = UNKNOWN_REFETCH, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.wait = wait
        self.max_age = max_age
        self.unknown_refetch = unknown_refetch
        self.clock = clock
        self.tools: dict[str, ToolFacts] | None = None
        self.changes = 0  # notices of change seen
        self.fetches = 0  # fetches started (for tests and operators)
        self._fetched_change = -1  # the `changes` count the catalog was fetched after
        self._fetched_at = float("-inf")
        self._inflight: asyncio.Task[None] | None = None

    def saw(self, message: Message) -> None:
        """Every parsed message from the upstream passes here; only a real notification counts as a change."""
        if message.get("method") == LIST_CHANGED and "id" not in message:
            self.changes += 1

    def stale(self) -> None:
        """Something the proxy saw (a list whose item no longer matches its pin) says the upstream changed: fetch
        again before the next decision that needs the facts. Only ever makes the proxy ask the upstream itself."""
        self.changes += 1

    def fresh(self) -> bool:
        return (self.tools is not None and self._fetched_change == self.changes
                and self.clock() - self._fetched_at < self.max_age)

    async def facts(self, name: str) -> ToolFacts | None:
        """The upstream's facts about tool `name`, fetched first when they may be out of date; None when the
        upstream does not list it. Raises CatalogUnavailable when they cannot be known within `wait` seconds."""
        deadline = self.clock() + self.wait
        while not self.fresh():
            await self._refresh(deadline)  # again if a change arrived while fetching
        assert self.tools is not None
        if name not in self.tools and self.clock() - self._fetched_at >= self.unknown_refetch:
            await self._refresh(deadline)  # a tool added without a notice we saw
        assert self.tools is not None
        return self.tools.get(name)

    async def _refresh(self, deadline: float) -> None:
        if self.fetch is None:
            raise CatalogUnavailable("no way to ask the upstream")
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight.add_done_callback(lambda task: task.cancelled() or task.exception())  # seen, not logged
        remaining = deadline - self.clock()
        try:
            await asyncio.wait_for(asyncio.shield(self._inflight), max(remaining, 0.0))
        except Exception as exc:  # the fetch failed or took too long: whatever the reason, it cannot be known
            raise CatalogUnavailable(type(exc).__name__) from None

    async def _fetch(self) -> None:
        assert self.fetch is not None
        change = self.changes
        self.fetches += 1
        try:
            tools = await asyncio.wait_for(self.fetch(), self.wait)
        except Exception as exc:
            log.warning("cannot fetch the upstream's tools/list: %s", type(exc).__name__)
            raise
        self.tools = tool_facts(tools)
        self._fetched_change = change
        self._fetched_at = self.clock()
