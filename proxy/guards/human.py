"""`confirm: human`: a held write is applied only after the person at the client approves it, through elicitation.

2026-07-28 (stateless): the call is answered `resultType: "input_required"` with one form `elicitation/create`
input request (the preview in plain words, approve or reject) and a `requestState`. The state is an unguessable
handle naming a single-use record in the store that binds credential, session, tool, workspace, argument digest and
expiry; nothing in it is trusted, it only names what the proxy itself kept. The client's retry (a new request, the
same arguments, `inputResponses` and that `requestState`) is checked against the record, taken once, and forwarded
with `inputResponses` and `requestState` stripped.

2025-11-25 (sessions): the POST is answered as an SSE stream; the proxy sends `elicitation/create` on it, takes the
client's answer (a response POST, on any replica: `ApprovalAnswers` hands it over through the store) and then
forwards the call and relays its result on the same stream.

A client that declared no form elicitation gets a tool error saying the write needs a person's approval, unless
the rule says `fallback: token`. Rejected, cancelled, timed out, or changed arguments: nothing is forwarded, each
its own audit reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.exchange import RESPONSE, Answer, Conversation, Exchange, Send, tool_result
from proxy.guards.approval import (
    ELICIT_ID_PREFIX,
    INPUT_KEY,
    STATE_PREFIX,
    answer_key,
    elicitation,
    new_handle,
    open_carry,
    question,
    record_key,
    seal_carry,
    verdict,
)
from proxy.guards.client_caps import ClientCapabilities
from proxy.guards.confirmation import binding_problem, pending_key
from proxy.guards.page_approval import URL_ELICIT_PREFIX, PageApproval
from proxy.guards.tasks import hold, wants_task
from proxy.jsonrpc import Message
from proxy.policy.model import Rule
from proxy.store import Store, StoreUnavailable

log = logging.getLogger("scopegate.confirm")

MODERN = "2026-07-28"
_REFUSED = {
    "rejected": "the person declined it",
    "cancelled": "the person dismissed the approval without deciding",
    "unanswered": "the approval came back without a decision",
    "timeout": "nobody approved it in time",
}


@dataclass(frozen=True)
class Held:
    """A write held for confirmation, as whoever confirms it is shown it."""

    exchange: Exchange
    message: Message
    tool: str
    ttl: int
    preview_id: str
    expires: float
    bindings: dict[str, Any]  # credential_id, subject, kind, session, tool, workspace, digest
    shown: dict[str, Any]  # the arguments, redacted
    dry_run: bool
    upstream_preview: Any
    why: str = ""  # why it is held when no rule asks (Exchange.held): said to whoever confirms
    reason: str = ""  # why it is held, where a condition of the rule said so (`decide.called`)


class HumanApproval:
    USE_TOKEN: Any = object()  # approve(...) says: this call is the rule's token fallback's business

    def __init__(self, store: Store, capabilities: ClientCapabilities,
                 clock: Callable[[], float] = time.time, max_pending: int = 100) -> None:
        self.page: PageApproval | None = None  # `approve: {via: page}` (set by the pipeline)
        self.store = store
        self.capabilities = capabilities
        self.clock = clock
        self.max_pending = max_pending  # open approval questions one credential may hold, as for token previews

    async def _reserve(self, held: Held) -> Answer | None:
        """A slot among the credential's pending previews (the same bounded set token previews use), or a refusal:
        a flood of questions cannot crowd out anyone else's."""
        bindings = held.bindings
        if await self.store.reserve(pending_key(bindings["kind"], bindings["credential_id"]), held.preview_id,
                                    self.max_pending, int(held.ttl) + 61):
            return None
        return self._refuse(held.exchange, held.message, "pending limit", (
            f"too many writes waiting for a person's approval for this credential (limit {self.max_pending}): "
            "answer or let some expire, then retry"))

    async def _release(self, record: dict[str, Any]) -> None:
        await self.store.release(pending_key(record["kind"], record["credential_id"]), record["id"])

    async def approve(self, exchange: Exchange, message: Message, rule: Rule, has_token: bool,
                      bindings: dict[str, Any], held: Callable[[], Awaitable[Held]]) -> Message | Answer | Conversation:
        """The human flow for one call to a `confirm: human` tool; USE_TOKEN when the rule's token fallback applies.
        `bindings` are this call's own (credential, session, tool, workspace, argument digest); `held` makes the
        preview (and runs the dry run), only when a person is about to be asked."""
        params = message["params"]
        if rule.on_page:  # a named person approves on the page: nothing the client answers decides it
            if self.page is None:
                return self._refuse(exchange, message, "no approval page", (
                    f"{params['name']} needs approval on scopegate's approval page, which is not served here. "
                    "Nothing was changed."))
            return await self.page.approve(exchange, message, rule, bindings, held)
        state = params.get("requestState")
        if isinstance(state, str) and state.startswith(STATE_PREFIX):
            responses = params.get("inputResponses")
            # The proxy's own round trip: the upstream never sees it.
            for name in ("requestState", "inputResponses"):
                params.pop(name, None)
            return await self._retried(exchange, message, bindings, state, responses)
        if not await self.capabilities.can_elicit(exchange, message):
            if rule.fallback == "token":
                return self.USE_TOKEN
            return self._refuse(exchange, message, "no elicitation", (
                f"{params['name']} needs a person's approval, and this client cannot ask for it: it declared no "
                "elicitation (form) capability. Nothing was changed. Use an MCP client that can show an approval "
                "form to its user, or ask the operator to allow token confirmation for this tool."))
        if has_token:
            # Tokens are issued only under `fallback: token`, to clients that cannot ask a person; this one can.
            return self._refuse(exchange, message, "human required", (
                f"{params['name']} needs a person's approval; a confirmationToken does not apply. Call it without "
                "one and the person at the client will be asked. Nothing was changed."))
        if (exchange.protocol_version or "") >= MODERN:
            # A round of the upstream's own multi-round-trip (its requestState, the client's answers to its
            # questions) is a new call to apply: it is asked for again, and its round travels with the approval.
            carry = {name: params.pop(name) for name in ("requestState", "inputResponses") if name in params}
            return await self._ask_modern(await held(), carry)
        if not exchange.session_id:
            return self._refuse(exchange, message, "no elicitation", (
                f"{params['name']} needs a person's approval, which needs a session to ask in. Nothing was changed."))
        pending = await held()
        alone = self._refuse(exchange, message, "batch", (
            f"{params['name']} needs a person's approval: send the call alone, not in a batch. Nothing was changed."))
        opening = Answer(None, decision="preview", reason=pending.preview_id)
        return Conversation(run=lambda send: self._ask_on_stream(pending, send), alone=alone, opening=opening)

    def _refuse(self, exchange: Exchange, message: Message, reason: str, text: str) -> Answer:
        return tool_result(exchange, message.get("id"), text, error=True, decision="refuse", reason=reason)

    def _record(self, held: Held) -> bytes:
        # Bindings and the argument digest, never the arguments themselves.
        return orjson.dumps({"id": held.preview_id, "expires": held.expires, **held.bindings})

    def _text(self, held: Held) -> str:
        text = question(held.tool, held.bindings["workspace"], held.shown, held.upstream_preview, held.ttl)
        text = f"{held.reason}\n{text}" if held.reason else text
        return f"{text}\nHeld for approval because {held.why}." if held.why else text

    # 2026-07-28: input_required, then a retry carrying the answer

    async def _ask_modern(self, held: Held, carry: dict[str, Any]) -> Answer:
        state = new_handle(STATE_PREFIX)
        record = {"id": held.preview_id, "expires": held.expires, **held.bindings}
        text = self._text(held)
        if carry:
            record["carry"] = seal_carry(state, carry)
            text += ("\n(The service asked a question of its own about this change, and it was answered; approving "
                     "sends that answer on to the service.)")
        if (refused := await self._reserve(held)) is not None:
            return refused
        await self.store.set(record_key(state), orjson.dumps(record).decode(), ttl=held.ttl + 60)
        result = {"resultType": "input_required", "requestState": state, "inputRequests": {
            INPUT_KEY: {"method": "elicitation/create", "params": elicitation(text)}}}
        return Answer({"jsonrpc": "2.0", "id": held.message.get("id"), "result": result}, decision="preview",
                      reason=held.preview_id)

    async def _retried(self, exchange: Exchange, message: Message, bindings: dict[str, Any], state: str,
                       responses: Any) -> Message | Answer:
        tool = message["params"]["name"]
        raw = await self.store.take(record_key(state))  # single use: of two retries, one gets it
        if raw is None:
            return self._refuse(exchange, message, "unknown approval", (
                f"{tool} not applied: this approval is unknown, already used or long expired. Call {tool} again to "
                "ask the person anew."))
        record = orjson.loads(raw)
        await self._release(record)  # taken: answered or refused, it no longer waits
        now = self.clock()
        if record["expires"] <= now:
            return self._refuse(exchange, message, "timeout", f"{tool} not applied: {_REFUSED['timeout']}.")
        code, problem = binding_problem(record, now, **bindings)
        if problem:
            return self._refuse(exchange, message, code, f"{tool} not applied: {problem}")
        answer = responses.get(INPUT_KEY) if isinstance(responses, dict) else None
        said = verdict(answer)
        if said != "approved":
            return self._refuse(exchange, message, said, f"{tool} not applied: {_REFUSED[said]}. Nothing changed.")
        if "carry" in record:  # the upstream's own round, approved with the rest: it goes on as it came
            message["params"].update(open_carry(state, record["carry"]))
        return self._approved(exchange, message, record["id"])

    def _approved(self, exchange: Exchange, message: Message, preview_id: str) -> Message:
        exchange.confirmed[str(message.get("id"))] = preview_id
        exchange.approved_by_person = {*(exchange.approved_by_person or ()), str(message.get("id"))}
        log.info("approved by a person: %s (preview %s)", message["params"]["name"], preview_id,
                 extra={"request_id": exchange.request_id})
        return message

    # 2025-11-25: elicitation/create on the call's own stream

    async def _ask_on_stream(self, held: Held, send: Send) -> Message | Answer:
        exchange, message = held.exchange, held.message
        try:
            outcome = await self._ask_and_wait(held, send)
        except StoreUnavailable:
            outcome = self._refuse(exchange, message, "store unavailable",
                                   "confirmation store unavailable: the write was not made; retry shortly")
        if isinstance(outcome, Answer) and wants_task(message):
            return await hold(self.store, exchange, outcome, held.ttl)
        return outcome

    async def _ask_and_wait(self, held: Held, send: Send) -> Message | Answer:
        exchange, message, tool = held.exchange, held.message, held.tool
        handle = new_handle(ELICIT_ID_PREFIX)
        if (refused := await self._reserve(held)) is not None:
            return refused
        try:
            await self.store.set(record_key(handle), self._record(held).decode(), ttl=held.ttl + 60)
            await send({"jsonrpc": "2.0", "id": handle, "method": "elicitation/create",
                        "params": elicitation(self._text(held))})
            raw = await self.store.pop_wait(answer_key(handle), held.ttl)
        finally:
            await self._release({"id": held.preview_id, **held.bindings})
        if raw is None:
            await self.store.delete(record_key(handle))  # a late answer finds nothing to complete
            return self._refuse(exchange, message, "timeout", f"{tool} not applied: {_REFUSED['timeout']}.")
        answer = orjson.loads(raw)
        said = verdict(answer.get("result"))
        if said != "approved":
            return self._refuse(exchange, message, said, f"{tool} not applied: {_REFUSED[said]}. Nothing changed.")
        return self._approved(exchange, message, held.preview_id)


class ApprovalAnswers:
    """Guard: a client's response to the proxy's own `elicitation/create` (2025-11-25) is the proxy's business,
    never the upstream's. It is handed to whichever replica holds the waiting call, if it comes from the credential
    and session the question was put to; otherwise it is dropped (and counted)."""

    methods = frozenset({RESPONSE})

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        msg_id = message.get("id")
        if "method" in message or not isinstance(msg_id, str) or not msg_id.startswith(ELICIT_ID_PREFIX):
            return message
        if msg_id.startswith(URL_ELICIT_PREFIX):
            # Whether the client opened the approval link: the page decides, not this answer. Kept here, never
            # forwarded (the upstream asked nothing).
            return Answer(None, decision="allow", reason="approval link")
        principal = exchange.principal
        try:
            raw = await self.store.get(record_key(msg_id))
            record = orjson.loads(raw) if raw is not None else None
            owner = (principal.credential_id, principal.subject, principal.kind) if principal else None
            if record is None or owner != (record["credential_id"], record["subject"], record["kind"]) \
                    or record["session"] != (exchange.session_id or ""):
                return Answer(None, decision="refuse", reason="unknown approval")
            if await self.store.take(record_key(msg_id)) is None:
                return Answer(None, decision="refuse", reason="unknown approval")  # answered already
            answer = {"result": message.get("result")} if "result" in message else {"error": message.get("error")}
            await self.store.push(answer_key(msg_id), orjson.dumps(answer).decode(), ttl=60)
        except StoreUnavailable:
            return Answer(None, decision="refuse", reason="store unavailable")
        return Answer(None, decision="allow", reason="approval answer")
