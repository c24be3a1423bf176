"""The aiohttp application: one pooled upstream session, the MCP endpoint, and clean shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.config import Config, ConfigError
from proxy.console import api as console_api
from proxy.console import pages as console_pages
from proxy.console.service import Console, Trail
from proxy.durable import RedisState, StateError, open_state
from proxy.edge.approval_events import ApprovalEvents
from proxy.edge.cors import Cors
from proxy.edge.errors import answer_parser_errors, catch_all, scrub_aiohttp_logs
from proxy.edge.event_ids import EventIds, load_key
from proxy.edge.forward import Forwarder
from proxy.edge.stdio.bridge import KEY_HEADER, Bridge, StdioSettings
from proxy.edge.stdio.rules import child_env
from proxy.edge.tls import server_context
from proxy.edge.upstream_http import Pool
from proxy.edge.upstream_tools import UpstreamTools
from proxy.edge.workers import READY, WORKER_MARK
from proxy.exchange import Exchange, Outcome
from proxy.guards import pipeline as pipeline_module
from proxy.guards.pins import Drift, Report
from proxy.guards.pipeline import Pipeline, StampFailed
from proxy.identity import assertion
from proxy.identity.approvals import Approvals
from proxy.identity.lifecycle import Tree
from proxy.identity.loader import Identity
from proxy.identity.metadata import add_routes
from proxy.identity.oauth.server import OAuthServer
from proxy.jsonrpc import Message
from proxy.ops.audit import AuditWriter
from proxy.ops.health import ops_app, store_check, upstream_check
from proxy.ops.metrics import Metrics
from proxy.ops.sinks import FileSink, RedisStreamSink, Sink, StreamSink
from proxy.ops.tracing import setup as setup_tracing
from proxy.ops.trail import Chain, load_private_key
from proxy.policy.decide import Rules
from proxy.policy.reload import LivePolicy, PolicyReloader
from proxy.store import open_store

log = logging.getLogger("scopegate")

FORWARDER = web.AppKey("forwarder", Forwarder)
RELOADER = web.AppKey("policy_reloader", PolicyReloader)
OPS_PORT = web.AppKey("ops_port", int)
CREDENTIALS = web.AppKey("credentials", Tree)  # the durable credential state (revocations, grants): the tree
OAUTH = web.AppKey("oauth", OAuthServer)  # scopegate's own authorization server, when on
STDIO = web.AppKey("stdio", Bridge)  # the stdio server's children, when SCOPEGATE_UPSTREAM_COMMAND runs one
CONSOLE = web.AppKey("console", Console)  # the console pages and the admin API (off the request path)
SHUTDOWN_TIMEOUT = 3.0


OWN_CONNECTIONS = 8  # the proxy's own upstream requests: catalog fetches, its subscriptions/listen, readiness


def upstream_session(config: Config, connections: int,
                     trace_configs: list[aiohttp.TraceConfig] | None = None) -> aiohttp.ClientSession:
    """A pooled session for upstream requests; one for calls and one for GET streams, so neither can use up the
    other's connections. No total timeout: SSE streams live as long as they must (the forwarder bounds the wait
    for response headers and for JSON bodies)."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=30, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # bodies are relayed with the upstream's Content-Encoding intact
        cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every client: it must never keep state
        timeout=aiohttp.ClientTimeout(total=None, connect=config.connect_timeout),
        skip_auto_headers=("User-Agent",),
        trace_configs=trace_configs,
    )


def drift_reporter(metrics: Metrics, audit: AuditWriter) -> Report:
    """A definition that no longer matches its pin: one audit record (method `pins/check`, target the item's name,
    decision `drift`, the changes as the reason), one count, one log line."""

    def report(drift: Drift) -> None:
        metrics.pin_drift.labels(drift.kind, drift.status, drift.action).inc()
        said = "; ".join(drift.changes) or drift.status
        log.warning("%s %r %s (%s): %s", drift.kind, drift.name, drift.status, drift.action, said)
        exchange = Exchange(request_id=os.urandom(16).hex(), session_id=None, protocol_version=None,
                            upstream_headers=CIMultiDict(), http_method="POST")
        message = {"method": "pins/check", "params": {"name": drift.name}}
        reason = f"{drift.kind} {drift.status}, {drift.action}: {said}"
        exchange.outcomes.append(Outcome(message, "drift", reason[:500]))
        audit.add(exchange, 0.0)

    return report


def audit_sink(config: Config, setting: str | None = None) -> Sink:
    """The trail's sink (or the anchor's: `setting`)."""
    chosen = config.audit_sink if setting is None else setting
    if chosen == "redis" and config.redis_url:
        # One process name per worker: a worker started again names its own predecessor.
        worker = os.environ.get(WORKER_MARK)
        return RedisStreamSink(config.redis_url, socket.gethostname() + (f"/worker-{worker}" if worker else ""))
    if chosen.startswith("file:"):
        try:
            return FileSink(chosen[5:])
        except OSError as exc:
            name = "SCOPEGATE_AUDIT_SINK" if setting is None else "SCOPEGATE_AUDIT_ANCHOR"
            raise ConfigError(f"{name}: cannot open {chosen[5:]} ({exc.strerror})") from None
    return StreamSink()


def audit_chain(config: Config) -> Chain:
    """This process's chain, in its worker's slot (0 without workers). Without a signing key it is linked and
    sealed but unsigned: `audit verify --key` then refuses it (a trail anyone could rewrite proves nothing), and
    `run` says so once it listens."""
    key = load_private_key(config.audit_signing_key_file) if config.audit_signing_key_file else None
    return Chain(key, config.audit_checkpoint_records, config.audit_checkpoint_seconds,
                 slot=int(os.environ.get(WORKER_MARK) or 0))


async def stdio_upstream(config: Config, identity: Identity) -> tuple[Bridge | None, Config, Identity]:
    """With SCOPEGATE_UPSTREAM_COMMAND: the bridge that runs the stdio server, listening; the config naming it as
    the upstream, and the identity whose server-side headers carry its key (so clients may not send it, answers are
    scrubbed of it, and every upstream request, the catalog's and readiness's too, has it). The server's own
    secrets reach it as environment variables, never over the bridge."""
    if not config.upstream_command:
        return None, config, identity
    bridge = Bridge(StdioSettings(
        argv=config.upstream_command, cwd=config.upstream_cwd,
        env=child_env(os.environ, config.upstream_env, identity.secret_headers),
        sessions=config.upstream_sessions, pool=config.upstream_pool, idle_seconds=config.upstream_idle_seconds))
    url = await bridge.start()
    return (bridge, dataclasses.replace(config, upstream=url),
            dataclasses.replace(identity, secret_headers={**identity.secret_headers, KEY_HEADER: bridge.key}))


def build_app(config: Config, identity: Identity, pipeline: Pipeline | None = None) -> web.Application:
    """`pipeline` replaces the one built from `identity` (tests of the pipeline seam use that)."""
    scrub_aiohttp_logs()  # aiohttp's own error logs quote raw request lines: never let them
    answer_parser_errors()  # nor its own error answers
    app = web.Application(client_max_size=config.max_body_bytes)  # every handler wrapped in catch_all as added
    oauth = OAuthServer(identity.oauth, identity.registry) if identity.oauth is not None else None
    if oauth is not None:
        app[OAUTH] = oauth
    tracing = setup_tracing(config)  # None unless configured: then nothing below wraps anything
    console = Console(identity.registry, oauth,
                      Trail(config.audit_sink, config.redis_url, config.audit_signing_key_file),
                      str(config.public_url.origin()) if config.public_url else None)
    app[CONSOLE] = console

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        bridge, upstream_config, upstream_identity = await stdio_upstream(config, identity)
        if bridge is not None:
            app[STDIO] = bridge
        try:
            async for _ in serving(app, upstream_config, upstream_identity):
                yield
        finally:
            if bridge is not None:
                await bridge.close()  # after the pools: no child is left running

    async def serving(app: web.Application, config: Config, identity: Identity) -> AsyncIterator[None]:
        metrics = Metrics()
        store = open_store(config.redis_url, metrics.store_errors.inc, memory_keys=config.memory_store_keys,
                           breaker_seconds=config.redis_breaker_seconds,
                           on_short_circuit=metrics.store_short_circuits.inc)
        untraced = store  # startup reads (the event id key) belong to no request's trace
        try:
            durable = open_state(config.state_dir, untraced)
        except StateError as exc:
            await store.close()
            raise ConfigError(f"SCOPEGATE_STATE_DIR: {exc}") from None
        tree = Tree(durable, child_ttl=oauth.settings.grant_lifetime + oauth.settings.access_ttl if oauth else None)
        app[CREDENTIALS] = tree
        if identity.registry is not None:  # PATs made at run time (the admin API) live in the durable state
            identity.registry.attach(durable)
            await identity.registry.load_runtime()
        if isinstance(durable, RedisState) and (evicts := await durable.eviction()) not in (None, "noeviction"):
            log.warning("Redis evicts keys when full (maxmemory-policy %s): a revocation could be dropped and its "
                        "credential work again; set maxmemory-policy noeviction", evicts)
        if oauth is not None and not durable.durable:
            log.warning("credential state is in memory: revocations made on Connected apps, OAuth grants and "
                        "registered clients are lost on restart; set SCOPEGATE_STATE_DIR (one replica) or "
                        "SCOPEGATE_REDIS_URL")
        if tracing is not None and config.redis_url:
            store = tracing.store(store)
        if oauth is not None:
            oauth.attach(store, tree)
            oauth.address_limit = config.oauth_rate_limit
            oauth.on_limited = lambda: metrics.rate_limited("oauth")
        ops: web.AppRunner | None = None
        hooks = tracing.upstream_hooks() if tracing is not None else None
        # The request path's own pools (calls apart from long-lived streams, so neither can use up the other's
        # connections); the proxy's own upstream requests (its catalog, readiness pings) use aiohttp's client.
        calls = Pool(config.upstream, config.call_connections, config.connect_timeout, hooks=hooks)
        streams = Pool(config.upstream, config.stream_connections, config.connect_timeout, hooks=hooks)
        try:
            traces = [tracing.client_trace()] if tracing is not None else None
            async with upstream_session(config, OWN_CONNECTIONS, traces) as session, \
                    aiohttp.ClientSession() as key_session:
                verifier = identity.verifier(config, key_session)
                live = LivePolicy(identity.policy, Rules(identity.policy, config.tool_prefix))

                async def upstream_call(exchange: Exchange, message: Message) -> Message | None:
                    forwarder = app[FORWARDER]
                    if (stamp := forwarder.pipeline.stamp) is not None:
                        try:
                            await stamp(exchange)  # a dry run is a request on the caller's behalf too
                        except StampFailed:
                            return None  # no dry run without the caller's identity: the preview says so
                    return await forwarder.probe(exchange, message)

                fetch_tools = UpstreamTools(session, config.upstream, identity.secret_headers.items())
                # One key seals what the upstream numbers for a caller: SSE event ids and task ids.
                key = await load_key(config.stream_key, untraced, shared=config.redis_url is not None)
                # approve: {via: page}: requests in the store, decisions in the durable state, the page on the
                # OAuth server (its sign-in); without it no page is served and such writes are refused
                approvals = Approvals(store, durable)
                if oauth is not None:
                    oauth.approvals = approvals
                issuer = oauth.settings.issuer.rstrip("/") if oauth is not None else None
                audit = AuditWriter(audit_sink(config), audit_chain(config), metrics,
                                    raw_arguments=config.audit_arguments,
                                    anchor=audit_sink(config, config.audit_anchor) if config.audit_anchor else None)
                chosen = pipeline or pipeline_module.build(config, identity, store, verifier, live, upstream_call,
                                                           fetch_tools, session_evictions=metrics.session_evictions.inc,
                                                           seal_key=key, tree=tree, http=key_session,
                                                           on_drift=drift_reporter(metrics, audit),
                                                           approvals=approvals, approval_base=lambda: issuer)
                if tracing is not None:
                    chosen = tracing.pipeline(chosen)
                await audit.start()
                if oauth is not None:  # consents, tokens, refusals and revocations join the same trail
                    def evidence(exchange: Exchange) -> None:
                        outcome = exchange.outcomes[0]
                        metrics.oauth_event(str(outcome.message.get("method", "")), outcome.decision, outcome.reason)
                        audit.add(exchange, 0.0)

                    oauth.evidence.writer = evidence
                events = ApprovalEvents(lambda exchange: audit.add(exchange, 0.0), metrics,
                                        str(config.approval_webhook) if config.approval_webhook else None,
                                        key_session)
                approvals.on_waiting, approvals.on_decided = events.waiting, events.decided
                approvals.on_refused = events.refused
                app[FORWARDER] = Forwarder(config, chosen, calls, metrics, audit, EventIds(key), stream_session=streams)
                # the console reads the policy in force and asks the upstream for its lists itself (the catalog's
                # source), never on a client's request path; what people do there joins the same trail
                console.attach(tree, lambda: live.rules, fetch_tools.lists, lambda exchange: audit.add(exchange, 0.0))
                followers = tuple(f.follow for f in (identity.registry, verifier) if f is not None)
                reloader = PolicyReloader(str(config.policy), live, config.tool_prefix, followers,
                                          on_result=lambda result: metrics.policy_reloads.labels(result).inc())
                app[RELOADER] = reloader
                if config.metrics_listen is not None:
                    checks = {"upstream": upstream_check(config.upstream, session, dict(chosen.upstream_headers))}
                    if config.redis_url:
                        checks["redis"] = store_check(store)

                    def details() -> dict[str, object]:
                        return {"policy": live.policy.name or str(config.policy),
                                "policy_reloads": dict(reloader.results)}

                    jwks = assertion.jwks(identity.upstream_identity) if identity.upstream_identity else None
                    ops = web.AppRunner(ops_app(metrics.registry, checks, details, jwks), access_log=None)
                    await ops.setup()
                    site = web.TCPSite(ops, *config.metrics_listen)
                    try:
                        await site.start()
                    except OSError as exc:
                        raise ConfigError(f"SCOPEGATE_METRICS_LISTEN: cannot listen on "
                                          f"{_where(config.metrics_listen)} ({_reason(exc)})") from None
                    app[OPS_PORT] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                watcher = asyncio.get_running_loop().create_task(reloader.watch())

                def upstream_said(message: Message) -> None:
                    for watch in chosen.upstream_watches:
                        watch(message)

                listener = asyncio.get_running_loop().create_task(fetch_tools.watch(upstream_said))
                try:
                    yield
                finally:
                    watcher.cancel()
                    listener.cancel()
                    await events.close()
                    await audit.close()
                    await fetch_tools.close()
        finally:
            await calls.close()
            await streams.close()
            if ops is not None:
                await ops.cleanup()
            if oauth is not None:
                await oauth.close()
            await durable.close()
            await store.close()
            if tracing is not None:
                tracing.shutdown()

    async def close_streams(app: web.Application) -> None:
        await app[FORWARDER].close_streams()

    async def mcp_endpoint(request: web.Request) -> web.StreamResponse:
        return await request.app[FORWARDER].handle(request)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_streams)
    path = config.upstream.path or "/"
    add_routes(app, path, str(config.public_url) if config.public_url else None, identity.authorization_servers,
               identity.policy.scopes, config.origin_policy.host_allowed, wrap=catch_all)
    if oauth is not None:
        oauth.add_routes(app, config.origin_policy.host_allowed, wrap=catch_all)
    host_allowed = config.origin_policy.host_allowed

    def host_checked(handler: Any) -> Any:
        async def run(request: web.Request) -> web.StreamResponse:
            if not host_allowed(request.headers.get("Host")):
                return console_api.problem(403, "Host not allowed")
            return await handler(request)

        return catch_all(run)

    console_api.add_routes(app, console_api.AdminApi(console), host_checked)
    console_pages.add_routes(app, console, host_checked)
    if identity.upstream_identity is not None:  # the keys the upstream verifies the caller's assertions with
        assertion.add_routes(app, identity.upstream_identity, config.origin_policy.host_allowed, wrap=catch_all)
    endpoint = catch_all(tracing.endpoint(mcp_endpoint) if tracing is not None else mcp_endpoint)
    for method in ("POST", "GET", "DELETE"):
        app.router.add_route(method, path, endpoint)
    Cors(config.origin_policy).install(app)  # last: it answers preflights on every route above
    return app


async def start(config: Config, identity: Identity, pipeline: Pipeline | None = None) -> tuple[web.AppRunner, int]:
    """Start serving (for tests and embedding); returns the runner and the port actually bound."""
    runner = web.AppRunner(
        build_app(config, identity, pipeline), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
    )
    await runner.setup()
    host, port = config.listen
    site = web.TCPSite(runner, host, port, ssl_context=server_context(config))
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server else port  # type: ignore[union-attr]
    return runner, bound


def run(config: Config, identity: Identity, worker: bool = False) -> None:
    """Serve until SIGINT or SIGTERM; open streams are closed on the way out, so exit takes seconds at most.
    `worker`: one of several processes sharing the port with SO_REUSEPORT (`edge/workers.py`)."""
    ssl_context = server_context(config)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # uvloop is a Linux/macOS speed-up, not a requirement
        loop = asyncio.new_event_loop()
    host, port = config.listen
    scheme = "https" if ssl_context else "http"
    path = config.upstream.path or "/"
    app = build_app(config, identity)

    async def on_sighup(app: web.Application) -> None:
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app[RELOADER].reload)

    def listening(_: object) -> None:
        if worker:  # the supervisor counts it as listening (its first line, never relayed)
            sys.stdout.buffer.write(READY)
            sys.stdout.buffer.flush()
        upstream = f"the stdio server {config.upstream_command[0]}" if config.upstream_command else config.upstream
        log.info("scopegate listening on %s://%s:%d%s, upstream %s, policy %s", scheme, host, port, path,
                 upstream, identity.policy.name or config.policy)
        if not config.audit_signing_key_file:
            log.warning("audit trail is NOT signed: set SCOPEGATE_AUDIT_SIGNING_KEY_FILE (scopegate audit keygen)")

    app.on_startup.append(on_sighup)
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handler_cancellation=True,
            access_log=None,
            reuse_port=worker or None,
            # run_app "prints" once every socket is bound: only then is it true that scopegate listens.
            print=listening,
            loop=loop,
        )
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        raise ConfigError(f"SCOPEGATE_LISTEN: cannot listen on {_where(config.listen)} ({_reason(exc)})") from None


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)  # aiohttp wraps it in a sentence naming the address


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
