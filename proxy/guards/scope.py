"""Guard: `tools/call` (task-augmented too), `prompts/get`, `resources/read`, resource subscriptions and completions
are allowed only when the policy's decision allows them. A refusal is answered here, nothing reaches the upstream:
HTTP 403 with `WWW-Authenticate: Bearer error="insufficient_scope"` (so a client can step up) and a JSON-RPC error
naming what was refused and which scopes are missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from proxy.exchange import Answer, Exchange
from proxy.guards.catalog import Catalog, CatalogUnavailable, unavailable
from proxy.guards.pins import PinWatch, held_reason
from proxy.identity.assertion import client_of
from proxy.identity.principal import Principal
from proxy.jsonrpc import INVALID_PARAMS, Message, error
from proxy.policy.conditions import principal_facts
from proxy.policy.decide import Decision, Kind, called, remembered
from proxy.policy.reload import LivePolicy

FORBIDDEN = -32003


class Gate(NamedTuple):
    kind: Kind | None  # None: the message says (a completion's `ref.type`)
    where: str  # where in params the names are: a dotted path; `[]` means every element of a list


# Every method that names a tool, prompt or resource: the one table. Each name is decided like a call of it; a
# message whose names cannot be found where this says is refused (400), never passed on unchecked.
GATED: dict[str, Gate] = {
    "tools/call": Gate("tool", "name"),  # task-augmented calls too: the same method
    "prompts/get": Gate("prompt", "name"),
    "resources/read": Gate("resource", "uri"),
    "resources/subscribe": Gate("resource", "uri"),
    "resources/unsubscribe": Gate("resource", "uri"),
    "subscriptions/listen": Gate("resource", "notifications.resourceSubscriptions[]"),  # 2026-07-28
    "completion/complete": Gate(None, "ref"),  # ref/prompt: ref.name; ref/resource: ref.uri
}
_PLAIN = frozenset({"name", "uri"})  # gates whose name is one member of params
_COMPLETION_REFS: dict[str, tuple[Kind, str]] = {"ref/prompt": ("prompt", "name"), "ref/resource": ("resource", "uri")}
# What a listen filter may ask for through the proxy: anything else (an extension's `taskIds`, say) cannot be judged
# by the policy, so it is refused rather than passed on.
LISTEN_FILTER = frozenset({"toolsListChanged", "promptsListChanged", "resourcesListChanged", "resourceSubscriptions"})


class Malformed(Exception):
    pass


def targets(method: str, params: Any) -> list[tuple[Kind, str]]:
    """Every (kind, name) a message of `method` names, from the GATED table; Malformed when they are not where the
    table says, or are not non-empty strings. Pure."""
    gate = GATED[method]
    if not isinstance(params, dict):
        raise Malformed("params must be an object")
    if gate.where in _PLAIN:  # a call, a prompt, a read: one name, a member of params (the common case)
        value = params.get(gate.where)
        if type(value) is str and value:
            return [(gate.kind, value)]  # type: ignore[list-item]
    if gate.kind is None:
        ref = params.get("ref")
        if not isinstance(ref, dict) or ref.get("type") not in _COMPLETION_REFS:
            raise Malformed("params.ref must be a ref/prompt or ref/resource")
        kind, field = _COMPLETION_REFS[ref["type"]]
        values: list[Any] = [ref.get(field)]
        where = f"ref.{field}"
    else:
        kind, where = gate.kind, gate.where
        if method == "subscriptions/listen":
            wanted = params.get("notifications")
            if not isinstance(wanted, dict):
                raise Malformed("params.notifications must be an object")
            if unknown := sorted(set(wanted) - LISTEN_FILTER):
                raise Malformed(f"params.notifications.{unknown[0]} is not something this proxy can authorize")
        values = [params]
        for step in where.split("."):
            many = step.endswith("[]")
            step = step.removesuffix("[]")
            found = [value.get(step) if isinstance(value, dict) else None for value in values]
            if many:
                if any(item is not None and not isinstance(item, list) for item in found):
                    raise Malformed(f"params.{where.replace('[]', '')} must be a list")
                found = [element for item in found if item is not None for element in item]
            values = found
    for value in values:
        if not isinstance(value, str) or not value:
            raise Malformed(f"params.{where.replace('[]', '')} must be a non-empty string"
                            + (" (each of them)" if where.endswith("[]") else ""))
    return [(kind, value) for value in values]


def refusal(exchange: Exchange, msg_id: Any, decision: Decision) -> Answer:
    if decision.reason:  # a condition of the rule denied this very call: no scope would change that
        data = {"kind": decision.kind, "name": decision.name, "reason": decision.reason,
                "requestId": exchange.request_id}
        return Answer(error(msg_id, FORBIDDEN, f"{decision.kind} {decision.name!r} refused: {decision.reason}", data),
                      http_status=403, decision="deny", reason=f"condition {decision.condition}")
    if decision.missing:
        text = f"{decision.kind} {decision.name!r} needs scope {' '.join(decision.missing)}"
    else:
        text = f"{decision.kind} {decision.name!r} is not available to this credential"
    data = {"kind": decision.kind, "name": decision.name, "missing_scopes": list(decision.missing),
            "requestId": exchange.request_id}
    headers: tuple[tuple[str, str], ...] = ()
    if decision.missing:
        value = (f'Bearer error="insufficient_scope", scope="{" ".join(decision.required)}", '
                 f'resource_metadata="{exchange.resource_metadata}"')
        headers = (("WWW-Authenticate", value),)
    return Answer(error(msg_id, FORBIDDEN, text, data), http_status=403, headers=headers, decision="deny",
                  reason="scope" if decision.missing else "unlisted")


def drifted(exchange: Exchange, msg_id: Any, name: str, status: str) -> Answer:
    """A call of a tool whose definition no longer matches its pin (or was never pinned), under `on_drift: hide`."""
    why = "has not been reviewed (it is not pinned)" if status == "unpinned" else \
        "changed since it was reviewed (its definition no longer matches its pin)"
    return Answer(error(msg_id, FORBIDDEN, f"tool {name!r} is not available: it {why}",
                        {"kind": "tool", "name": name, "missing_scopes": [], "requestId": exchange.request_id}),
                  http_status=403, decision="deny", reason=status)


def _arguments(params: dict[str, Any]) -> dict[str, Any]:
    arguments = params.get("arguments")
    return arguments if isinstance(arguments, dict) else {}


def facts_of(principal: Principal | None) -> dict[str, Any] | None:
    """What a condition may read of the caller (proxy/policy/conditions.py)."""
    if principal is None:
        return None
    return principal_facts(principal.subject, principal.kind, principal.scopes,
                           principal.bound_workspace or principal.default_workspace, principal.role,
                           client_of(principal), principal.credential_id)


def facts_key(principal: Principal | None) -> tuple[Any, ...] | None:
    """Everything `facts_of` reads: the same key, the same facts (so their conversion for CEL may be reused)."""
    if principal is None:
        return None
    return (principal.kind, principal.credential_id, principal.subject, principal.label, principal.scopes,
            principal.role, principal.bound_workspace, principal.default_workspace)


class ScopeGuard:
    def __init__(self, live: LivePolicy, catalog: Catalog, pins: PinWatch | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.live = live
        self.catalog = catalog
        self.pins = pins or PinWatch()
        self.clock = clock  # `now` for conditions (policy test cases set their own)

    methods = frozenset(GATED)

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        method = message.get("method")
        if method not in GATED:
            return message
        msg_id = message.get("id")
        params = message.get("params")
        try:
            named = targets(method, params)
        except Malformed as exc:
            return Answer(error(msg_id, INVALID_PARAMS, str(exc), {"requestId": exchange.request_id}),
                          http_status=400, decision="invalid")
        if method == "tools/call" and not isinstance(params.get("arguments", {}), dict):
            return Answer(error(msg_id, INVALID_PARAMS, "params.arguments must be an object",
                                {"requestId": exchange.request_id}), http_status=400, decision="invalid")
        held = exchange.principal.scopes if exchange.principal is not None else frozenset()
        rules = self.live.of(exchange).rules  # the request's pinned policy: one generation per request
        decision = None
        exchange.held = None
        for kind, name in named:
            hint = None
            pinned = kind == "tool" and rules.pins is not None
            if pinned or (kind == "tool" and rules.policy.default == "annotations"
                          and rules.outcome("tool", name) is None):
                try:  # delegated to the upstream's readOnlyHint, or pinned: the proxy's own, current view of it
                    facts = await self.catalog.facts(name)
                except CatalogUnavailable:
                    return unavailable(msg_id, exchange.request_id)
                hint = facts.read_only if facts is not None else None
            decision = remembered(rules, held, kind, name, hint)  # decide(), once per scopes and name
            if decision.conditions:  # what the rule asks of this very call: never remembered by name
                principal = exchange.principal
                decision = called(decision, _arguments(params) if len(named) == 1 else {},
                                  partial(facts_of, principal), self.clock(), facts_key(principal))
            if not decision.allowed:
                return refusal(exchange, msg_id, decision)
            if pinned:
                # What the upstream says of this tool now (its own list, as the proxy fetched it), against its pin.
                judged = self.pins.judged(rules, "tools", name, facts.definition if facts else None,
                                          facts.digest if facts else None) if facts is not None else None
                if judged is None or judged.action == "hide":
                    return drifted(exchange, msg_id, name, judged.status if judged else "unpinned")
                if judged.action == "hold":
                    decision = decision._replace(confirm=True)
                    exchange.held = held_reason(judged.changes)
                    exchange.held_confirm = rules.policy.pins.hold_confirm  # type: ignore[union-attr]
        exchange.decision = decision if len(named) == 1 else None  # the current message's: later guards read it
        # need to know: whose result an answer to this id is (any other id: every mask the caller lacks applies)
        if rules.masks and method == "tools/call" and type(msg_id) in (str, int):
            if exchange.called is None:
                exchange.called = {}
            exchange.called[(type(msg_id).__name__, msg_id)] = named[0][1]
        return message

    async def tool_decision(self, exchange: Exchange, name: str) -> Decision:
        """The decision a call of tool `name` would get from this caller now (as `__call__` makes it, kept inline
        there for the hot path). Raises CatalogUnavailable when it needs the upstream's hint and cannot have it."""
        rules = self.live.of(exchange).rules
        hint = None
        if rules.policy.default == "annotations" and rules.outcome("tool", name) is None:
            facts = await self.catalog.facts(name)
            hint = facts.read_only if facts is not None else None
        held = exchange.principal.scopes if exchange.principal is not None else frozenset()
        return remembered(rules, held, "tool", name, hint)
