"""Prometheus metrics, one registry per proxy (several proxies in one process, as in tests, never collide).

Label values stay bounded: methods are MCP's own (anything else is `other`), decisions and reasons come from small
fixed sets, and no credential id, argument or free text ever becomes a label. Label values are single words
(`no_bearer`, not `no bearer`): PromQL matchers and dashboards stay simple. Every metric is described, with its
labels and purpose, in docs/metrics.md (a test holds the two together).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector

from proxy import __version__

KNOWN_METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "tools/call", "prompts/list", "prompts/get",
    "resources/list", "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
    "completion/complete", "logging/setLevel", "tasks/get", "tasks/result", "tasks/list", "tasks/cancel",
    "notifications/initialized", "notifications/cancelled", "notifications/progress",
    "notifications/roots/list_changed", "subscriptions/listen", "response", "POST", "GET", "DELETE",
})
AUTH_REASONS = frozenset({"no bearer", "malformed", "unknown", "revoked", "expired", "invalid jwt",
                          "unknown issuer", "store unavailable"})
CONFIRM_REASONS = frozenset({"unknown", "already used", "expired", "credential", "session", "tool", "workspace",
                             "arguments", "store unavailable", "not a string",
                             # confirm: human (guards/human.py)
                             "rejected", "cancelled", "timeout", "unanswered", "no elicitation", "human required",
                             "unknown approval", "batch", "pending limit",
                             # approve: {via: page} (guards/page_approval.py)
                             "policy", "no approval page"})
OAUTH_EVENTS = frozenset({"register", "authorize", "signin", "consent", "token", "revoke"})
# What a limit refused: a credential's concurrent streams or calls, a body sent too slowly (pending previews are
# counted with the confirmations, reason pending_limit).
LIMITS = frozenset({"streams", "calls", "body_timeout"})


def bounded(value: str, allowed: frozenset[str]) -> str:
    """A label value: one of `allowed` (spaces become `_`), else `other`."""
    return value.replace(" ", "_") if value in allowed else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests: dict[tuple[str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self.requests = Counter("scopegate_requests", "MCP messages handled, by method and decision",
                                ["method", "decision"], registry=r)
        self.duration = Histogram("scopegate_request_duration_seconds", "Time to answer a request, by HTTP method",
                                  ["http_method"], registry=r)
        self.upstream_duration = Histogram("scopegate_upstream_duration_seconds",
                                           "Time to the upstream's response headers", registry=r)
        # kind: connect (no connection), timeout (no response headers in time), stall (a JSON body stopped
        # coming), response (broke while answering), cut (a stream ended mid-way)
        self.upstream_errors = Counter("scopegate_upstream_errors", "Upstream failures, by kind", ["kind"],
                                       registry=r)
        self.limited = Counter("scopegate_limited", "Requests refused by a limit, by limit", ["limit"], registry=r)
        # limit: a `limits:` name of the policy (at most 32, one word each) or oauth (the OAuth endpoints' own)
        self.limited_by_rate = Counter("scopegate_rate_limited", "Requests refused by a rate limit, by the "
                                       "limit's name", ["limit"], registry=r)
        self._rate_limits: dict[str, Counter] = {}
        self.auth_failures = Counter("scopegate_auth_failures", "Refused credentials, by reason", ["reason"],
                                     registry=r)
        self.confirmations = Counter("scopegate_confirmations", "Previews issued, confirmed and refused",
                                     ["outcome", "reason"], registry=r)
        # outcome: requested (a write started waiting on the approval page), approved, declined, refused_approver
        # (someone the rule does not allow tried to decide: four eyes, not an approver)
        self.approvals = Counter("scopegate_approvals", "Approvals on the approval page, by outcome", ["outcome"],
                                 registry=r)
        # livesum: in worker mode (prometheus_client multiprocess, edge/workers.py) the sum over live workers
        self.open_streams = Gauge("scopegate_open_streams", "SSE streams being relayed now", registry=r,
                                  multiprocess_mode="livesum")
        self.session_evictions = Counter("scopegate_session_evictions", "Session bindings dropped because their "
                                         "credential opened more than its quota (its least recently used)",
                                         registry=r)
        self.store_errors = Counter("scopegate_store_errors", "Shared store (Redis) operations that failed",
                                    registry=r)
        self.store_short_circuits = Counter("scopegate_store_short_circuits", "Store operations answered "
                                            "'unavailable' at once while the circuit breaker is open", registry=r)
        # kind: tool | prompt | template; status: drift | unpinned | unreadable; action: hide | hold | report | show
        self.pin_drift = Counter("scopegate_pin_drift", "Upstream definitions that no longer match their pin (or "
                                 "have none), once per change", ["kind", "status", "action"], registry=r)
        self.policy_reloads = Counter("scopegate_policy_reloads", "Policy reloads, by result", ["result"],
                                      registry=r)
        self.oauth_events = Counter("scopegate_oauth_events", "The OAuth server's events, by endpoint and outcome",
                                    ["event", "outcome"], registry=r)
        self.audit_records = Counter("scopegate_audit_records", "Audit records written, by type", ["type"],
                                     registry=r)
        self.audit_incomplete = Counter("scopegate_audit_incomplete_records",
                                        "Audit records written with an error field (a part could not be built)",
                                        registry=r)
        self.audit_write_failures = Counter("scopegate_audit_write_failures",
                                            "Audit sink writes that failed after their retries", registry=r)
        self.audit_dropped = Counter("scopegate_audit_dropped_records",
                                     "Audit records given up on: the sink failed for longer than the buffer lasts",
                                     registry=r)
        self.audit_pending = Gauge("scopegate_audit_pending_records", "Audit records not yet written to the sink",
                                   registry=r, multiprocess_mode="livesum")
        self.audit_folded = Counter("scopegate_audit_folded_refusals",
                                    "Refusals of requests without a credential past the audit's rate, counted in a "
                                    "`folded` record instead of a record each", registry=r)
        self.audit_anchor_failures = Counter("scopegate_audit_anchor_failures",
                                             "Writes of seals to the audit anchor sink that failed (kept for the next)",
                                             registry=r)
        # livemax: every worker and replica sees the same stream
        self.audit_stream_fill = Gauge("scopegate_audit_stream_fill_ratio",
                                       "The Redis audit stream's length over the length it is trimmed at",
                                       registry=r, multiprocess_mode="livemax")
        Info("scopegate_build", "scopegate version", registry=r).info({"version": __version__})
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
        PlatformCollector(registry=r)  # python_info

    def limit(self, limit: str) -> None:
        self.limited.labels(bounded(limit, LIMITS)).inc()

    def oauth_event(self, method: str, decision: str, reason: str) -> None:
        """One OAuth event (identity/oauth/evidence.py: method `oauth/<endpoint>`): a replayed code or refresh token
        is its own outcome, the one to alert on (someone else holds a token of that grant)."""
        outcome = "replay" if "replayed" in reason else decision if decision in ("allow", "deny") else "other"
        self.oauth_events.labels(bounded(method.removeprefix("oauth/"), OAUTH_EVENTS), outcome).inc()

    def rate_limited(self, limit: str) -> None:
        """Names come from the policy (validated one word, at most 32) and reloads may bring new ones: past 64
        distinct names in one process the rest count as `other`."""
        child = self._rate_limits.get(limit)
        if child is None:
            name = limit if len(self._rate_limits) < 64 and limit.replace("_", "").isalnum() else "other"
            child = self._rate_limits.setdefault(name, self.limited_by_rate.labels(name))
            if name == limit:
                self._rate_limits[limit] = child
        child.inc()

    def message(self, method: str, decision: str) -> None:
        # Every message passes here: the labelled child is looked up once per (bounded) label pair, not made anew.
        key = (bounded(method, KNOWN_METHODS), decision)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()

    def took(self, http_method: str, seconds: float) -> None:
        child = self._durations.get(http_method)
        if child is None:  # HTTP methods reaching the endpoint are its routes' (POST, GET, DELETE): bounded
            child = self._durations[http_method] = self.duration.labels(http_method)
        child.observe(seconds)

    def confirmation(self, decision: str, reason: str) -> None:
        if decision == "preview":
            self.confirmations.labels("issued", "").inc()
        elif decision == "confirm":
            self.confirmations.labels("confirmed", "").inc()
        elif decision == "refuse":
            self.confirmations.labels("expired" if reason == "expired" else "refused",
                                      bounded(reason, CONFIRM_REASONS)).inc()
