"""OpenTelemetry traces: a span for each request (continuing the client's W3C `traceparent`), for each pipeline step,
for the upstream call (which carries our `traceparent` on) and for each shared-store (Redis) call.

Off unless configured (`SCOPEGATE_OTEL_EXPORTER_OTLP_ENDPOINT`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_TRACES_EXPORTER`). Off costs nothing: this module's `setup` returns
None and nothing imports opentelemetry; on, the app wraps the steps, the store and the upstream session once, at
start, so the request path itself has no tracing branch at all. Needs the `tracing` extra
(`pip install 'scopegate[tracing]'`: opentelemetry-sdk and the OTLP/HTTP exporter).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from proxy.config import Config, ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

# Tests set this to the SDK's InMemorySpanExporter; production exports over OTLP/HTTP.
test_exporter: SpanExporter | None = None


def setup(config: Config) -> Tracing | None:
    if not config.tracing:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise ConfigError("tracing is configured (OTEL_* / SCOPEGATE_OTEL_*) but the OpenTelemetry SDK is not "
                          "installed: pip install 'scopegate[tracing]'") from None
    from proxy import __version__

    provider = TracerProvider(resource=Resource.create({"service.name": "scopegate",
                                                        "service.version": __version__}))
    if test_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(test_exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = str(config.otel_exporter_otlp_endpoint) if config.otel_exporter_otlp_endpoint else None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Tracing(provider)


class Tracing:
    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate, trace

        self.provider = provider
        self.tracer = provider.get_tracer("scopegate")
        self.propagate = propagate
        self.trace = trace

    def endpoint(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The request's span: a child of the client's `traceparent` when it sent one."""
        kind = self.trace.SpanKind.SERVER

        async def traced(request: web.Request) -> web.StreamResponse:
            parent = self.propagate.extract(request.headers)
            with self.tracer.start_as_current_span(f"{request.method} {request.path}", context=parent, kind=kind,
                                                   attributes={"http.request.method": request.method,
                                                               "url.path": request.path}) as span:
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                request_id = response.headers.get("X-Request-Id")
                if request_id:
                    span.set_attribute("scopegate.request_id", request_id)
                return response

        return traced

    def step(self, kind: str, step: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A pipeline step (admission check or guard) in a span named for it, with what it decided."""
        name = f"scopegate.{kind} {getattr(step, '__qualname__', None) or type(step).__name__}"

        async def traced(*args: Any) -> Any:
            with self.tracer.start_as_current_span(name) as span:
                message = args[1] if len(args) > 1 and isinstance(args[1], dict) else None
                if message is not None and isinstance(message.get("method"), str):
                    span.set_attribute("mcp.method", message["method"])
                outcome = await step(*args)
                decision = getattr(outcome, "decision", None)
                if isinstance(decision, str):  # a guard's own Answer
                    span.set_attribute("scopegate.decision", decision)
                    span.set_attribute("scopegate.reason", getattr(outcome, "reason", ""))
                elif isinstance(outcome, web.StreamResponse):  # an admission refusal
                    span.set_attribute("scopegate.decision", "refused")
                    span.set_attribute("http.response.status_code", outcome.status)
                return outcome

        if (methods := getattr(step, "methods", None)) is not None:
            traced.methods = methods  # type: ignore[attr-defined]  # a span where the guard acts, as untraced
        return traced

    def pipeline(self, pipeline: Any) -> Any:
        """The same pipeline (a frozen dataclass) with each admission check and guard in its own span."""
        return dataclasses.replace(pipeline, admission=tuple(self.step("admission", c) for c in pipeline.admission),
                                   guards=tuple(self.step("guard", g) for g in pipeline.guards))

    def client_trace(self) -> aiohttp.TraceConfig:
        """For the upstream session: a client span per upstream request, its context sent as `traceparent`."""
        config = aiohttp.TraceConfig()
        kind = self.trace.SpanKind.CLIENT

        async def start(session: Any, context: Any, params: aiohttp.TraceRequestStartParams) -> None:
            span = self.tracer.start_span(f"upstream {params.method}", kind=kind, attributes={
                "http.request.method": params.method, "server.address": params.url.host or "",
                "server.port": params.url.port or 0})
            context.span = span
            self.propagate.inject(params.headers, context=self.trace.set_span_in_context(span))

        async def end(session: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
            context.span.set_attribute("http.response.status_code", params.response.status)
            context.span.end()

        async def failed(session: Any, context: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
            context.span.record_exception(params.exception)
            context.span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, type(params.exception).__name__))
            context.span.end()

        config.on_request_start.append(start)
        config.on_request_end.append(end)
        config.on_request_exception.append(failed)
        return config

    def upstream_hooks(self) -> tuple[Any, Any, Any]:
        """The same client span for the request path's own upstream client (edge/upstream_http.py)."""
        kind = self.trace.SpanKind.CLIENT

        async def start(method: str, url: Any, headers: Any) -> Any:
            span = self.tracer.start_span(f"upstream {method}", kind=kind, attributes={
                "http.request.method": method, "server.address": url.host or "", "server.port": url.port or 0})
            self.propagate.inject(headers, context=self.trace.set_span_in_context(span))
            return span

        async def end(span: Any, status: int) -> None:
            span.set_attribute("http.response.status_code", status)
            span.end()

        async def failed(span: Any, exc: BaseException) -> None:
            span.record_exception(exc)
            span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, type(exc).__name__))
            span.end()

        return start, end, failed

    def store(self, store: Any) -> Any:
        """The shared store with a span around each of its calls (Redis round trips)."""
        return _TracedStore(store, self.tracer)

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is left


class _TracedStore:
    def __init__(self, store: Any, tracer: Any) -> None:
        self._store = store
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if not inspect.iscoroutinefunction(value):
            return value
        tracer = self._tracer

        @functools.wraps(value)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            with tracer.start_as_current_span(f"store {name}", attributes={"db.system": "redis",
                                                                           "db.operation.name": name}):
                return await value(*args, **kwargs)

        return traced
