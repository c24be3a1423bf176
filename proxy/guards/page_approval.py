"""`approve: {via: page}`: the write waits for a named person who signs in on scopegate's approval page.

The client is sent to the page, as its protocol era allows:
- 2026-07-28, a client that declares URL-mode elicitation: an `input_required` result carrying one URL-mode
  `elicitation/create` (the link) and a single-use `requestState` (an unguessable handle naming a Store record: the
  approval and the bindings; nothing in it is trusted). Each retry takes its state; while the approval waits, the
  retry is held a while (`hold_seconds`) and answered with a fresh state and no new question; once approved, the
  retry that matches every binding takes the approval's one ticket and is forwarded.
- 2025-11-25, a client that declares URL mode: the POST becomes an SSE stream; a URL-mode `elicitation/create` goes
  out on it, then `notifications/elicitation/complete` once the person decided, and the held call is forwarded (or
  refused) on the same stream. The client's answer to the elicitation says only whether it opened the link: it is
  swallowed (ApprovalAnswers) and decides nothing.
- Any other client: a tool result that names the link in words for the agent to pass to its person and says to call
  again with the same arguments after approval. The retry is recognised by its bindings (credential, session, tool,
  argument digest): no token travels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from proxy.exchange import Answer, Conversation, Exchange, Send, tool_result
from proxy.guards.approval import INPUT_KEY, new_handle, record_key
from proxy.guards.confirmation import PREVIEW_SCHEMA, pending_key, shown_as_json, visible
from proxy.identity.approvals import (
    BOUND,
    Approvals,
    binding_problem,
    call_key,
    new_id,
    policy_version,
)
from proxy.jsonrpc import Message
from proxy.policy.model import Rule
from proxy.store import StoreUnavailable

if TYPE_CHECKING:
    from proxy.guards.human import Held, HumanApproval
    from proxy.policy.reload import LivePolicy

log = logging.getLogger("scopegate.confirm")

STATE_PREFIX = "sgw_"  # this flow's requestState (2026-07-28)
URL_ELICIT_PREFIX = "scopegate-approval-url-"  # ids of its elicitation/create requests (2025-11-25)
MODERN = "2026-07-28"
assert PREVIEW_SCHEMA["properties"]["status"]["const"] == "confirmation_required"


def link(base: str, approval_id: str) -> str:
    return f"{base}/approvals/{approval_id}"


def who_approves(rule: Rule) -> str:
    approve = rule.approve
    assert approve is not None
    names = [f"someone in role {r}" for r in approve.approvers.roles] + list(approve.approvers.subjects)
    who = " or ".join(visible(n) for n in names) if names else "a person who holds what this write needs"
    return who + (" (not the person who asked)" if approve.four_eyes else "")


def until(expires: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))


class PageApproval:
    def __init__(self, human: HumanApproval, live: LivePolicy, approvals: Approvals, base: Callable[[], str | None],
                 hold_seconds: float = 20.0) -> None:
        self.human = human
        self.live = live
        self.approvals = approvals
        self.base = base  # the approval page's base URL (the OAuth server's issuer); None: no page here
        self.hold_seconds = hold_seconds

    @property
    def store(self) -> Any:
        return self.human.store

    async def approve(self, exchange: Exchange, message: Message, rule: Rule, bindings: dict[str, Any],
                      held: Callable[[], Awaitable[Held]]) -> Message | Answer | Conversation:
        params = message["params"]
        tool = params["name"]
        base = self.base()
        if base is None:
            return self._refuse(exchange, message, "no approval page", (
                f"{tool} needs approval on scopegate's approval page, which this deployment does not serve (no "
                "OAuth server). Nothing was changed."))
        version = policy_version(self.live.of(exchange).policy)
        state = params.get("requestState")
        if isinstance(state, str) and state.startswith(STATE_PREFIX):
            for name in ("requestState", "inputResponses"):
                params.pop(name, None)  # the proxy's own round trip: the upstream never sees it
            return await self._retried(exchange, message, bindings, version, state)
        modern = (exchange.protocol_version or "") >= MODERN
        if await self.human.capabilities.can_open_urls(exchange, message):
            if modern:
                for name in ("requestState", "inputResponses"):
                    params.pop(name, None)
                request = await self._ask(await held(), rule, version, base)
                if isinstance(request, Answer):
                    return request
                return await self._input_required(exchange, message, request, base, first=True)
            if exchange.session_id:
                pending = await held()
                alone = self._refuse(exchange, message, "batch", (
                    f"{tool} needs a person's approval: send the call alone, not in a batch. Nothing was changed."))
                approval_id = new_id()
                return Conversation(run=lambda send: self._on_stream(pending, rule, version, base, approval_id, send),
                                    alone=alone, opening=Answer(None, decision="preview", reason=approval_id))
        return await self._by_link(exchange, message, rule, bindings, version, base, held)

    def _refuse(self, exchange: Exchange, message: Message, reason: str, text: str) -> Answer:
        return tool_result(exchange, message.get("id"), text, error=True, decision="refuse", reason=reason)

    async def _ask(self, held: Held, rule: Rule, version: str, base: str,
                   approval_id: str | None = None) -> dict[str, Any] | Answer:
        """A new request on the queue (and the webhook told), or a refusal (the credential's pending limit)."""
        if (refused := await self.human._reserve(held)) is not None:
            return refused
        principal = held.exchange.principal
        assert principal is not None and rule.approve is not None
        now = self.human.clock()
        request = {
            "id": approval_id or new_id(), "created": now, "expires": held.expires, "preview_id": held.preview_id,
            "tool": held.tool, "shown": held.shown, "dry_run": held.dry_run, "upstream_preview": held.upstream_preview,
            "fresh_seconds": rule.approve.fresh_seconds, "policy": version, "rule_scopes": list(rule.scopes),
            "approvers": {"roles": list(rule.approve.approvers.roles),
                          "subjects": list(rule.approve.approvers.subjects)},
            "four_eyes": rule.approve.four_eyes,
            "requester": {"subject": principal.subject, "credential_id": principal.credential_id,
                          "label": principal.label, "kind": principal.kind, "role": principal.role},
            "link": "", **{name: held.bindings[name] for name in BOUND},
        }
        request["link"] = link(base, request["id"])
        await self.approvals.ask(request)
        log.info("write held for approval on the page: %s (approval %s)", held.tool, request["id"],
                 extra={"request_id": held.exchange.request_id})
        return request

    def _message(self, request: dict[str, Any], rule: Rule | None = None) -> str:
        where = f" in workspace {shown_as_json(request['workspace'])}" if request["workspace"] else ""
        lines = [f"An agent asks to run {visible(request['tool'])}{where}. Nothing has changed yet. It would run "
                 "with:", shown_as_json(request["shown"])]
        if request["upstream_preview"] is not None:
            lines += ["The service's own dry run says:", shown_as_json(request["upstream_preview"])]
        lines.append(f"It needs approval on scopegate's approval page, valid until {until(request['expires'])}: "
                     f"{request['link']}")
        return "\n".join(lines)

    # 2026-07-28 ------------------------------------------------------------------------------------------------

    async def _input_required(self, exchange: Exchange, message: Message, request: dict[str, Any], base: str,
                              first: bool) -> Answer:
        state = new_handle(STATE_PREFIX)
        ttl = max(1, int(request["expires"] - self.human.clock())) + 60
        await self.store.set(record_key(state), orjson.dumps({"approval": request["id"]}).decode(), ttl=ttl)
        result: dict[str, Any] = {"resultType": "input_required", "requestState": state}
        if first:  # the question once; later rounds carry only the state (the client waits, it opens nothing again)
            result["inputRequests"] = {INPUT_KEY: {"method": "elicitation/create", "params": {
                "mode": "url", "message": self._message(request), "url": request["link"]}}}
        return Answer({"jsonrpc": "2.0", "id": message.get("id"), "result": result},
                      decision="preview" if first else "allow", reason=request["id"] if first else "approval waits")

    async def _retried(self, exchange: Exchange, message: Message, bindings: dict[str, Any], version: str,
                       state: str) -> Message | Answer:
        tool = message["params"]["name"]
        raw = await self.store.take(record_key(state))  # single use: of two retries with one state, one gets it
        if raw is None:
            return self._refuse(exchange, message, "unknown approval", (
                f"{tool} not applied: this requestState is unknown, already used or expired. Call {tool} again to "
                "ask for approval anew."))
        approval_id = orjson.loads(raw)["approval"]
        request = await self.approvals.request(approval_id)
        if request is not None:  # still waiting: the retry must be the same call; then it waits a while
            code, problem = binding_problem(request, self.human.clock(), version, bindings)
            if problem:
                return self._refuse(exchange, message, code, f"{tool} not applied: {problem}")
            await self.approvals.wait(approval_id, min(self.hold_seconds, request["expires"] - self.human.clock()))
            request = await self.approvals.request(approval_id)
            if request is not None and request["expires"] > self.human.clock():
                return await self._input_required(exchange, message, request, "", first=False)
        return await self._settle(exchange, message, approval_id, bindings, version)

    async def _settle(self, exchange: Exchange, message: Message, approval_id: str, bindings: dict[str, Any],
                      version: str) -> Message | Answer:
        """The approval is no longer waiting: forward the call if it was approved for exactly this call, once."""
        tool = message["params"]["name"]
        decided = await self.approvals.decision(approval_id)
        if decided is None:
            return self._refuse(exchange, message, "timeout", f"{tool} not applied: nobody approved it in time. "
                                "Nothing changed.")
        if decided["decision"] != "approved":
            reason = f" ({visible(decided['reason'])})" if decided.get("reason") else ""
            who = visible(decided["by"]["subject"])
            return self._refuse(exchange, message, "rejected", f"{tool} not applied: {who} declined it{reason}. "
                                "Nothing changed.")
        ticket = await self.approvals.ticket(approval_id)
        if ticket is None:
            return self._refuse(exchange, message, "already used", f"{tool} not applied: this approval was used "
                                "already (or has expired). Call again to ask anew.")
        code, problem = binding_problem(ticket, self.human.clock(), version, bindings)
        if problem:
            return self._refuse(exchange, message, code, f"{tool} not applied: {problem}")
        if not await self.approvals.use(approval_id):  # atomic: of concurrent retries exactly one gets here
            return self._refuse(exchange, message, "already used", f"{tool} not applied: this approval was used "
                                "already.")
        await self.store.release(pending_key(bindings["kind"], bindings["credential_id"]), ticket["preview_id"])
        exchange.approvers = {**(exchange.approvers or {}), str(message.get("id")): decided["by"]["subject"]}
        return self.human._approved(exchange, message, approval_id)

    # 2025-11-25 ------------------------------------------------------------------------------------------------

    async def _on_stream(self, held: Held, rule: Rule, version: str, base: str, approval_id: str,
                         send: Send) -> Message | Answer:
        exchange, message = held.exchange, held.message
        try:
            request = await self._ask(held, rule, version, base, approval_id)
            if isinstance(request, Answer):
                return request
            elicitation_id = URL_ELICIT_PREFIX + request["id"]
            await send({"jsonrpc": "2.0", "id": elicitation_id, "method": "elicitation/create", "params": {
                "mode": "url", "elicitationId": elicitation_id, "message": self._message(request),
                "url": request["link"]}})
            await self.approvals.wait(request["id"], request["expires"] - self.human.clock())
            await send({"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
                        "params": {"elicitationId": elicitation_id}})
            bindings = {name: request[name] for name in BOUND}
            return await self._settle(exchange, message, request["id"], bindings,
                                      policy_version(self.live.of(exchange).policy))
        except StoreUnavailable:
            return self._refuse(exchange, message, "store unavailable",
                                "confirmation store unavailable: the write was not made; retry shortly")

    # no URL mode -----------------------------------------------------------------------------------------------

    async def _by_link(self, exchange: Exchange, message: Message, rule: Rule, bindings: dict[str, Any],
                       version: str, base: str, held: Callable[[], Awaitable[Held]]) -> Message | Answer:
        key = call_key(bindings)
        approval_id = await self.store.get(key)
        if approval_id is not None:
            request = await self.approvals.request(approval_id)
            if request is not None and request["expires"] > self.human.clock():
                if request["policy"] != version:
                    await self.store.delete(key)
                else:
                    return self._link_result(exchange, message, request, rule, again=True)
            else:
                decided = await self.approvals.decision(approval_id)
                if decided is not None:  # decided: this call settles it (forwarded once, or refused); of racing
                    # retries the ticket lets one through, the others are told it was used
                    settled = await self._settle(exchange, message, approval_id, bindings, version)
                    await self.store.delete(key)
                    return settled
                await self.store.delete(key)
        asked = await self._ask(await held(), rule, version, base)
        if isinstance(asked, Answer):
            return asked
        await self.store.set(key, asked["id"], ttl=max(1, int(asked["expires"] - self.human.clock())) + 60)
        return self._link_result(exchange, message, asked, rule, again=False)

    def _link_result(self, exchange: Exchange, message: Message, request: dict[str, Any], rule: Rule,
                     again: bool) -> Answer:
        tool = visible(request["tool"])
        head = "Still waiting for approval: nothing has changed yet." if again else "Nothing has changed yet."
        text = "\n".join([
            head, self._message(request),
            f"Please give this link to your person: {who_approves(rule)} must sign in there and approve it.",
            f"After it is approved, call {tool} again with exactly the same arguments (before "
            f"{until(request['expires'])}). There is no token to bring back.",
        ])
        structured = {"status": "confirmation_required", "expiresAt": until(request["expires"]),
                      "preview": {"id": request["id"], "tool": request["tool"], "workspace": request["workspace"],
                                  "arguments": request["shown"], "approvalUrl": request["link"],
                                  **({"upstream_preview": request["upstream_preview"]} if request["dry_run"]
                                     else {})}}
        return tool_result(exchange, message.get("id"), text, error=False, structured=structured,
                           decision="allow" if again else "preview",
                           reason="approval waits" if again else request["id"])
