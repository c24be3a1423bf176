"""The request path as one ordered list: what every request goes through, read top to bottom in `build`.

Four kinds of step, each a small callable that owns its settings:

- admission checks, once per HTTP request (POST, GET, DELETE), before the body is read: they refuse the whole
  request with an HTTP response, or let it in (and may note facts on the Exchange, e.g. who the caller is);
- guards, once per JSON-RPC message of a POST, in order: each passes the message on (possibly rewritten) or answers
  it itself with an `Answer`, and then the message is not forwarded (or, when it must ask the client first, with a
  `Conversation` the edge holds on the request's own SSE stream: `edge/converse.py`);
- response hooks, once per upstream answer, on its status and headers, before anything reaches the client;
- rewriters, once per JSON-RPC response coming back, wherever it travels: JSON bodies, POST and GET streams event
  by event, resumed streams and replays, batches. They are told the method of the request it answers when this
  POST forwarded it (ids compared exactly: "7" is not 7), None otherwise: a rewriter that protects something must
  recognise what it protects by its shape, never by the method.
Upstream watches (below) see every parsed message the upstream sends, before the rewriters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.config import Config
from proxy.durable import SqliteState
from proxy.exchange import Answer, Conversation, Exchange
from proxy.guards import client_caps
from proxy.guards.catalog import Catalog, FetchTools
from proxy.guards.client_caps import ClientCapabilities
from proxy.guards.confirm import ConfirmGuard, UpstreamCall
from proxy.guards.human import ApprovalAnswers, HumanApproval
from proxy.guards.limits import RateLimits
from proxy.guards.list_filter import ListFilter
from proxy.guards.need_to_know import NeedToKnow
from proxy.guards.origin_check import OriginCheck
from proxy.guards.page_approval import PageApproval
from proxy.guards.pins import PinWatch, Report
from proxy.guards.provenance import Marks, Provenance
from proxy.guards.scope import ScopeGuard
from proxy.guards.secret_headers import RefuseSecretHeaders, ScrubSecretHeaders
from proxy.guards.session_binding import SessionBinding
from proxy.guards.tasks import HeldTasks, TaskGuard, TaskIds, UpstreamTasks
from proxy.guards.workspace import WorkspaceGuard
from proxy.identity.approvals import Approvals
from proxy.identity.assertion import DEFAULT_HEADER, Assertions
from proxy.identity.assertion import Settings as AssertionSettings
from proxy.identity.authenticate import Authenticate, Challenge, anonymous_principal
from proxy.identity.lifecycle import Tree
from proxy.identity.metadata import WELL_KNOWN
from proxy.identity.token_exchange import ExchangeFailed, TokenExchanger
from proxy.jsonrpc import Message, RawResponse, dumps

if TYPE_CHECKING:
    from proxy.identity.jwt_auth import JwtVerifier
    from proxy.identity.loader import Identity
    from proxy.identity.principal import Principal
    from proxy.policy.reload import LivePolicy
    from proxy.store import Store


log = logging.getLogger("scopegate.identity")

AdmissionCheck = Callable[[web.Request, Exchange], Awaitable[web.StreamResponse | None]]
ResponseHook = Callable[[Exchange, int, CIMultiDict[str]], Awaitable[None]]


class Guard(Protocol):
    """A guard may say which messages it acts on: `methods`, the `method` values it looks at (None stands for a
    response, which has no method); the pipeline then does not call it for any other message. Without `methods` it
    sees every message. What it says must be what its own first check is (each guard keeps that check too)."""

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer | Conversation: ...


def plans(guards: tuple[Guard, ...]) -> tuple[dict[str | None, tuple[Guard, ...]], tuple[Guard, ...]]:
    """For each method some guard names, the guards that act on it, in order; and the guards for any other
    method (those without `methods`). Pure."""
    named: set[str | None] = set()
    for guard in guards:
        named |= getattr(guard, "methods", frozenset())
    every = tuple(g for g in guards if getattr(g, "methods", None) is None)
    by_method = {method: tuple(g for g in guards if method in getattr(g, "methods", (method,))) for method in named}
    return by_method, every


class MethodChanged(Exception):
    """A guard rewrote a message into one of another method (a new dict, or the one it was given, changed in
    place): never forwarded (the guards after it were chosen for the method it had)."""


class StampFailed(Exception):
    """The request cannot go upstream as the policy wants it to (e.g. no token from the upstream's identity
    provider): nothing of it is forwarded."""


class Rewriter(Protocol):
    def __call__(self, exchange: Exchange, response: Message, method: str | None) -> Message: ...


@dataclass(frozen=True)
class Pipeline:
    admission: tuple[AdmissionCheck, ...] = ()
    guards: tuple[Guard, ...] = ()
    response_hooks: tuple[ResponseHook, ...] = ()
    rewriters: tuple[Rewriter, ...] = ()
    upstream_headers: tuple[tuple[str, str], ...] = ()  # the proxy's own, on every upstream request
    # Called with every message the upstream sends that the relay parsed (JSON bodies, SSE events, batch elements,
    # on POST answers and GET streams alike): how steps notice what the upstream says, e.g. that its tools changed.
    # A plain response the relay recognises in its bytes (`ServerMessages.plain`) is not parsed and not shown here:
    # a response announces nothing.
    upstream_watches: tuple[Callable[[Message], None], ...] = ()
    # What any guard's own answer becomes before it is sent, given the message it answers (e.g. a held task for a
    # task-augmented call, whichever guard answered it).
    answer_hook: Callable[[Exchange, Message, Answer], Awaitable[Answer]] | None = None
    # What the proxy adds to a request as it goes upstream, after every guard (the caller's identity assertion:
    # it states the workspace and the approval the guards settled). StampFailed: the request must not go.
    stamp: Callable[[Exchange], Awaitable[None]] | None = None
    live: LivePolicy | None = None  # the policy the guards decide by: pinned per request
    # The upstream's task ids, sealed to their caller wherever the relay meets them (answers to requests that
    # touched tasks, the upstream's own messages), and the tasks its answers create recorded before they are relayed.
    tasks: UpstreamTasks | None = None

    _by_method: dict[str | None, tuple[Guard, ...]] = field(init=False, repr=False, compare=False)
    _every: tuple[Guard, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_method, every = plans(self.guards)
        object.__setattr__(self, "_by_method", by_method)
        object.__setattr__(self, "_every", every)

    def pin(self, exchange: Exchange) -> None:
        if self.live is not None:
            self.live.pin(exchange)

    async def admit(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | None:
        for check in self.admission:
            refusal = await check(request, exchange)
            if refusal is not None:
                return refusal
        return None

    async def guard(self, exchange: Exchange, message: Message) -> Message | Answer | Conversation:
        method = message.get("method")  # a string (framing checked it) or None: a response
        for guard in self._by_method.get(method, self._every):
            outcome = await guard(exchange, message)
            if type(outcome) is not dict:  # passed on (possibly rewritten) is the common case, checked first
                if isinstance(outcome, Answer) and self.answer_hook is not None:
                    return await self.answer_hook(exchange, message, outcome)
                if isinstance(outcome, Answer | Conversation):
                    return outcome
            # A copy, the very dict it was given (guards rewrite in place too) or another mapping: same method.
            if outcome.get("method") != method:
                raise MethodChanged(f"a guard changed {method!r} into {outcome.get('method')!r}")
            message = outcome
        return message

    async def on_response(self, exchange: Exchange, status: int, headers: CIMultiDict[str]) -> None:
        for hook in self.response_hooks:
            await hook(exchange, status, headers)

    def rewrite(self, exchange: Exchange, response: Message, method: str | None) -> Message:
        for rewriter in self.rewriters:
            response = rewriter(exchange, response, method)
        return response

    def rewrite_raw(self, exchange: Exchange, response: RawResponse, method: str | None) -> bytes:
        """The rewritten result's bytes of a response not yet parsed: the rewriter's own `raw` when there is one
        rewriter with work for this exchange and it has one (lists: a cache in front of the same filter; a later
        rewriter may say it is `idle` for the exchange), else parsed and rewritten here.
        Raises orjson.JSONDecodeError when the result is not JSON."""
        if self.rewriters and (raw := getattr(self.rewriters[0], "raw", None)) is not None and \
                all(getattr(r, "idle", _busy)(exchange) for r in self.rewriters[1:]):
            return raw(exchange, response, method)
        rewritten = self.rewrite(exchange, response.message(), method)
        return dumps(rewritten["result"])


def _busy(exchange: Exchange) -> bool:
    return False


def anonymous_of(live: LivePolicy) -> Callable[[], Principal | None]:
    """The `anonymous:` principal of the policy in force (a reload can turn it on or off), made once per policy."""
    made: list[tuple[object, Principal | None]] = []

    def current() -> Principal | None:
        if not made or made[0][0] is not live.policy:
            made[:] = [(live.policy, anonymous_principal(live.policy))]
        return made[0][1]

    return current


def identity_stamp(settings: AssertionSettings,
                   http: aiohttp.ClientSession | None) -> Callable[[Exchange], Awaitable[None]]:
    """The caller's assertion on each request going upstream; with a token exchange, also the provider's token for
    the caller in `Authorization` (StampFailed when there is none)."""
    assertions = Assertions(settings)
    if settings.exchange is None:
        async def stamp(exchange: Exchange) -> None:
            assertions.stamp(exchange)

        return stamp
    exchanger = TokenExchanger(settings.exchange, assertions, http)

    async def stamp_and_exchange(exchange: Exchange) -> None:
        assertions.stamp(exchange)
        if exchange.principal is None:
            return
        try:
            token = await exchanger.token(exchange.principal)
        except ExchangeFailed as exc:
            log.warning("token exchange failed: %s", exc, extra={"request_id": exchange.request_id})
            raise StampFailed("the caller's token for the upstream is unavailable") from None
        exchange.upstream_headers["Authorization"] = f"Bearer {token}"

    return stamp_and_exchange


def build(config: Config, identity: Identity, store: Store, verifier: JwtVerifier | None,
          live: LivePolicy, upstream_call: UpstreamCall, fetch_tools: FetchTools | None = None, *,
          session_evictions: Callable[[int], None] | None = None, seal_key: bytes | None = None,
          tree: Tree | None = None, http: aiohttp.ClientSession | None = None,
          on_drift: Report | None = None, approvals: Approvals | None = None,
          approval_base: Callable[[], str | None] = lambda: None) -> Pipeline:
    """The whole pipeline, in order. `session_evictions` counts the sessions a credential's quota dropped;
    `seal_key` seals the upstream's task ids (the key SSE event ids are sealed with; None: one for this process);
    `tree`: the durable credential state (revocations), in memory when not given (tests of the pipeline alone);
    `http`: the client for the proxy's own calls to identity providers (a token exchange); `on_drift`: told of
    each definition that no longer matches its pin, once per change (audit, metric); `approvals`: the approval
    page's records (in memory when not given), `approval_base` the page's base URL (None: no page served)."""
    metadata_url = None
    if config.public_url is not None:
        metadata_url = f"{config.public_url.origin()}{WELL_KNOWN}{config.public_url.path.rstrip('/')}"
    challenge = Challenge(metadata_url, identity.policy.scopes)
    # A credential's sessions beyond its quota drop its least recently used; what a session's client can do
    # (client_caps) is kept beside its binding and goes with it.
    sessions = SessionBinding(store, config.max_sessions_per_credential, companions=(client_caps.KEY,),
                              on_evict=session_evictions)
    secrets = identity.secret_headers
    asserted = identity.upstream_identity
    stamp = identity_stamp(asserted, http) if asserted is not None else None
    # The assertion's header is the proxy's to send, like the secrets (`authorization` never crosses anyway).
    refused = {*secrets, DEFAULT_HEADER, *([asserted.header] if asserted is not None and not asserted.bearer else [])}
    catalog = Catalog(fetch_tools)  # the upstream's schema as the proxy itself fetched it
    clients = ClientCapabilities(store)
    # definitions against the policy's pins: lists and calls alike, reported once; a change a list shows first makes
    # the catalog fetch again, so the next call is judged by what the upstream says now
    pins = PinWatch(on_drift, catalog.stale)
    lists = ListFilter(live, pins=pins)
    scope = ScopeGuard(live, catalog, pins)
    tasks = UpstreamTasks(store, TaskIds(seal_key if seal_key is not None else os.urandom(32)))
    provenance = Provenance(live, store, catalog)
    human = HumanApproval(store, clients, max_pending=config.max_pending_previews)
    # approve: {via: page}: a named person approves on the page; the records outlive the request that asked
    human.page = PageApproval(human, live, approvals or Approvals(store, SqliteState(None)), approval_base,
                              config.approval_hold_seconds)
    return Pipeline(
        admission=(
            OriginCheck(config.origin_policy),  # DNS-rebinding protection: Host and Origin allow-lists
            RefuseSecretHeaders(refused),  # only the proxy may send the upstream's secrets and the caller's identity
            # a Principal, or 401; a token derived from another credential lives within it (the credential tree)
            Authenticate(identity.registry, verifier, tree or Tree(SqliteState(None)), challenge, anonymous_of(live)),
            sessions.check,  # a session belongs to the credential that opened it
        ),
        guards=(
            sessions.opening,  # no `initialize` opens an upstream session that the store could not bind
            clients,  # note what an `initialize` declares (can this client ask its person?)
            ApprovalAnswers(store),  # answers to the proxy's own approval questions: never the upstream's business
            scope,  # calls, reads, prompts: the policy's decision, or 403 (step-up)
            WorkspaceGuard(live, catalog, config.default_workspace),  # inject or verify workspace and project
            # open-world output noted (its results marked below); a write after it held for confirmation
            provenance,
            # the policy's rate limits: after the decision (a refused call costs nothing) and the workspace (the one
            # the call acts in); before confirmation (a preview counts, its confirmation completes it)
            RateLimits(live, store),
            # writes: a preview and a token first, or a person's approval; then one confirmed call
            # (and a credential's unconfirmed previews are bounded)
            ConfirmGuard(live, store, upstream_call, human, max_pending=config.max_pending_previews),
            # tasks/*: the proxy's own tasks for their owner; the upstream's for the caller whose call made them (ids
            # unsealed, the creating tool's scope), tasks/list reduced to the caller's own
            TaskGuard(store, tasks, scope, upstream_call),
        ),
        response_hooks=(
            # no secret (nor an identity assertion) comes back in a response header
            *([ScrubSecretHeaders(secrets, [asserted.header] if asserted else [])] if secrets or asserted else []),
            sessions.on_response,  # bind new sessions to their credential; forget deleted ones
            clients.on_response,  # and remember whether their client can show an approval form
        ),
        rewriters=(
            lists,  # lists show what the same decision allows, nothing more (made once per caller's scopes)
            Marks(live),  # results of untrusted tools say so (idle unless this request called one)
            NeedToKnow(live),  # results: fields a rule masks for callers without its scope (idle when none does)
        ),
        upstream_headers=tuple(identity.secret_headers.items()),
        # notifications/tools/list_changed: the catalog is fetched again, the filtered lists are forgotten
        upstream_watches=(catalog.saw, lists.saw),
        # A task-augmented call the proxy answers itself (a preview, any guard's refusal) gets a task it holds.
        answer_hook=HeldTasks(store, live),
        stamp=stamp,  # who is calling, signed, for the upstream (and exchanged for its provider's token)
        live=live,
        tasks=tasks,
    )
