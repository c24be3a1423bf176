"""Guard: a write that needs confirmation is held. Who confirms is the rule's choice (`confirm: token | human`).

`token`: the first call gets a preview and a single-use token; the call that brings the token back, unchanged, is
forwarded (token stripped), once. `human`: the person at the client approves the preview through MCP elicitation
(`guards/human.py`), and only then is the call forwarded, once.

Refusals are tool errors and forward nothing: unknown, expired or already used token; another credential,
session, tool, workspace or other arguments; and "confirmation store unavailable" when Redis does not answer
(writes fail closed; reads, which never come here, keep flowing). A task-augmented call the guard answers itself
gets a proxy-held task (`guards/tasks.py`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.canonical import digest
from proxy.exchange import Answer, Conversation, Exchange, tool_result
from proxy.guards.confirmation import (
    TOKEN_ARGUMENT,
    binding_problem,
    describe,
    new_token,
    pending_key,
    redacted,
    store_key,
    used_key,
)
from proxy.guards.human import Held, HumanApproval
from proxy.guards.pins import held_rule
from proxy.jsonrpc import Message
from proxy.policy.model import Rule
from proxy.policy.reload import LivePolicy
from proxy.store import Store, StoreUnavailable

log = logging.getLogger("scopegate.confirm")

UpstreamCall = Callable[[Exchange, Message], Awaitable[Message | None]]


class ConfirmGuard:
    def __init__(self, live: LivePolicy, store: Store, upstream: UpstreamCall, human: HumanApproval,
                 clock: Callable[[], float] = time.time, max_pending: int = 100) -> None:
        self.live = live
        self.max_pending = max_pending  # unconfirmed previews one credential may hold
        self.store = store
        self.upstream = upstream
        self.human = human
        self.clock = clock

    methods = frozenset({"tools/call"})

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer | Conversation:
        if message.get("method") != "tools/call" or exchange.principal is None:
            return message
        params = message["params"]
        tool = params["name"]
        # The scope guard decided this very call a moment ago (it runs first, per message): reuse its decision.
        decision = exchange.decision
        if decision is None or not decision.confirm:
            return message
        args = params.get("arguments") or {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        token = args.get(TOKEN_ARGUMENT, meta.get(TOKEN_ARGUMENT))
        # The token is the proxy's business: the upstream never sees it, wherever it came.
        args = {k: v for k, v in args.items() if k != TOKEN_ARGUMENT}
        params["arguments"] = args
        if TOKEN_ARGUMENT in meta:
            params["_meta"] = {k: v for k, v in meta.items() if k != TOKEN_ARGUMENT}
        rules = self.live.of(exchange).rules
        found = rules.find("tool", tool)
        rule = found[1] if found else None
        if exchange.held is not None:  # held though no rule asks (a drifted pin): confirmed as the policy says
            rule = held_rule(rules, tool, exchange.held_confirm)
        outcome: Message | Answer | Conversation
        try:
            if rule is not None and (rule.confirmer == "human" or decision.confirmer == "human"):
                outcome = await self.human.approve(exchange, message, rule, token is not None,
                                                   self._bindings(exchange, tool, args),
                                                   lambda: self._held(exchange, message, tool, args, rule))
                if outcome is not HumanApproval.USE_TOKEN:
                    return outcome
            if token is None:
                outcome = await self._preview(await self._held(exchange, message, tool, args, rule))
            else:
                outcome = await self._confirm(exchange, message, tool, args, token)
        except StoreUnavailable:
            outcome = tool_result(exchange, message.get("id"), "confirmation store unavailable: the write was not "
                                  "made; retry shortly", error=True, decision="refuse", reason="store unavailable")
        return outcome  # a task-augmented call gets its answer as a held task: the pipeline's answer hook

    def _bindings(self, exchange: Exchange, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        principal = exchange.principal
        assert principal is not None
        return {"credential_id": principal.credential_id, "subject": principal.subject, "kind": principal.kind,
                "session": exchange.session_id or "", "tool": tool,
                "workspace": args.get(self.live.of(exchange).policy.workspace_property), "digest": digest(args)}

    async def _held(self, exchange: Exchange, message: Message, tool: str, args: dict[str, Any],
                    rule: Rule | None) -> Held:
        """What is held, as shown to whoever confirms: bindings, redacted arguments, the upstream's own dry run."""
        ttl = (rule.confirm_ttl_seconds if rule and rule.confirm_ttl_seconds else None) or \
            self.live.of(exchange).policy.confirm_ttl_seconds
        upstream_preview = None
        if rule is not None and rule.dry_run is not None:
            # The dry run is asked for plainly: never as a task the upstream would keep for nobody.
            params = {k: v for k, v in message["params"].items() if k != "task"}
            probe = {**message, "params": {**params, "arguments": {**args, rule.dry_run.argument: rule.dry_run.value}}}
            answer = await self.upstream(exchange, probe) or {}
            result = answer.get("result")
            # Its structured answer where it gives one; else its whole result (or error): what it said, unedited.
            upstream_preview = result.get("structuredContent", result) if isinstance(result, dict) \
                else answer.get("error")
        return Held(exchange=exchange, message=message, tool=tool, ttl=ttl, preview_id=secrets.token_hex(8),
                    expires=self.clock() + ttl, bindings=self._bindings(exchange, tool, args),
                    shown=redacted(args, rule.redact if rule else ()),
                    dry_run=rule is not None and rule.dry_run is not None, upstream_preview=upstream_preview,
                    why=exchange.held or "",
                    reason=exchange.decision.reason if exchange.decision is not None else "")

    async def _preview(self, held: Held) -> Answer:
        principal = held.exchange.principal
        assert principal is not None
        # One credential's unconfirmed previews are bounded: a flood of them cannot crowd out anyone else's.
        if not await self.store.reserve(pending_key(principal.kind, principal.credential_id), held.preview_id,
                                        self.max_pending, int(held.ttl) + 1):
            return tool_result(held.exchange, held.message.get("id"), f"too many unconfirmed previews for this "
                               f"credential (limit {self.max_pending}): confirm or let some expire, then retry",
                               error=True, decision="refuse", reason="pending limit")
        token = new_token()
        record = {"id": held.preview_id, "expires": held.expires, **held.bindings}
        # The store keeps the bindings and the digest, never the arguments themselves.
        await self.store.set(store_key(token), orjson.dumps(record).decode(), ttl=held.ttl + 3600)
        workspace = held.bindings["workspace"]
        structured = {
            "status": "confirmation_required",
            "preview": {"id": held.preview_id, "tool": held.tool, "workspace": workspace, "arguments": held.shown,
                        **({"upstream_preview": held.upstream_preview} if held.dry_run else {}),
                        **({"reason": held.reason} if held.reason else {})},
            "confirmationToken": token,
            "expiresAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(held.expires)),
        }
        text = describe(held.tool, workspace, held.shown, held.ttl, held.upstream_preview)
        if held.reason:  # a condition of the rule held this call: say which, in the policy's words
            text = f"{held.reason}\n{text}"
        if held.why:
            text += f"\nHeld for confirmation because {held.why}."
        return tool_result(held.exchange, held.message.get("id"), text, error=False, structured=structured,
                           decision="preview", reason=held.preview_id)

    async def _confirm(self, exchange: Exchange, message: Message, tool: str, args: dict[str, Any],
                       token: Any) -> Message | Answer:
        msg_id = message.get("id")
        if not isinstance(token, str):
            return tool_result(exchange, msg_id, f"{TOKEN_ARGUMENT} must be a string", error=True,
                               decision="refuse", reason="not a string")
        # Atomic, and the token is marked used in the same step: of concurrent confirmations one gets it, and every
        # other one is told "already used" (none looks in between and finds neither).
        raw = await self.store.take(store_key(token), mark=used_key(token), mark_ttl=3600)
        if raw is None:
            used = await self.store.exists(used_key(token))
            reason = "already used" if used else "unknown"
            return tool_result(exchange, msg_id, f"the confirmation token is {reason}: call {tool} without it for "
                               "a new preview", error=True, decision="refuse", reason=reason)
        preview = orjson.loads(raw)
        await self.store.release(pending_key(preview["kind"], preview["credential_id"]), preview["id"])
        code, problem = binding_problem(preview, self.clock(), **self._bindings(exchange, tool, args))
        if problem:
            return tool_result(exchange, msg_id, f"{tool} not applied: {problem}", error=True, decision="refuse",
                               reason=code)
        exchange.confirmed[str(msg_id)] = preview["id"]
        log.info("confirmed %s (preview %s)", tool, preview["id"], extra={"request_id": exchange.request_id})
        return message
