"""Settings for `scopegate serve`: one table, read from `SCOPEGATE_*` variables and from flags (flags win).

`load` is pure (environment and flags in, a Config or a ConfigError out) so every bad configuration is refused
before anything listens. A `SCOPEGATE_*` variable this build does not know is an error too: an operator who sets,
say, a policy file for a build that cannot enforce one must not get a proxy that silently lets everything through.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from proxy.origin import OriginPolicy, default_policy, origin_pattern_problem
from proxy.ratelimit import parse_rate


class ConfigError(Exception):
    """One line saying which setting is wrong and what was expected."""


def _url(name: str, value: str) -> URL:
    try:
        url = URL(value)
        url.port  # noqa: B018 -- yarl checks the port's range only when asked
    except ValueError as exc:
        raise ConfigError(f"{name}: not a valid URL ({exc}), got {value!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{name}: expected an http:// or https:// URL with a host, got {value!r}")
    return url


def _command(name: str, value: str) -> tuple[str, ...]:
    """argv: a JSON array of strings (`["npx", "-y", "pkg"]`), or a line split as a POSIX shell splits words (quotes
    kept together), never run through a shell."""
    import shlex

    import orjson

    text = value.strip()
    if text.startswith("["):
        try:
            argv = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{name}: not a JSON array of strings ({exc})") from None
        if not isinstance(argv, list) or not all(isinstance(part, str) for part in argv):
            raise ConfigError(f"{name}: expected a JSON array of strings")
    else:
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: cannot split it into words ({exc})") from None
    if not argv or not argv[0]:
        raise ConfigError(f"{name}: expected a command, e.g. npx -y @modelcontextprotocol/server-filesystem /data")
    return tuple(argv)


def _directory(name: str, value: str) -> str:
    if not os.path.isdir(value):
        raise ConfigError(f"{name}: no directory at {value!r}")
    return value


def _env_names(name: str, value: str) -> tuple[str, ...]:
    names = _csv(name, value)
    for item in names:
        if not item.replace("_", "a").isalnum() or item[0].isdigit() or item.startswith("SCOPEGATE_"):
            raise ConfigError(f"{name}: {item!r} is not an environment variable scopegate passes on (names of "
                              "letters, digits and _, never SCOPEGATE_*)")
    return names


def _listen(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def _positive_int(name: str, value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise ConfigError(f"{name}: expected a positive whole number, got {value!r}")
    return int(value)


def _rate(name: str, value: str) -> tuple[int, float] | None:
    try:
        return parse_rate(value)
    except ValueError:
        raise ConfigError(f"{name}: expected N/S (N requests per S seconds, e.g. 30/60) or 0 for off, got "
                          f"{value!r}") from None


def cgroup_cpus(cpu_max: str | None, affinity: int) -> int:
    """CPUs a cgroup v2 `cpu.max` ("QUOTA PERIOD", or "max PERIOD": no quota) allows, rounded up, never more than
    the CPUs this process may run on, at least 1. Pure."""
    parts = (cpu_max or "").split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[0]) > 0 and int(parts[1]) > 0:
        return max(1, min(affinity, math.ceil(int(parts[0]) / int(parts[1]))))
    return max(affinity, 1)


def _workers(name: str, value: str) -> int:
    if value != "auto":
        return _positive_int(name, value)
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            cpu_max: str | None = f.read()
    except OSError:
        cpu_max = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    return cgroup_cpus(cpu_max, affinity)


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{name}: expected a positive number of seconds, got {value!r}")
    return seconds


def _file(name: str, value: str) -> str:
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ConfigError(f"{name}: no readable file at {value!r}")
    return value


def _files(name: str, value: str) -> tuple[str, ...]:
    return tuple(_file(name, item) for item in _csv(name, value))


def _csv(name: str, value: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise ConfigError(f"{name}: expected a comma-separated list, got {value!r}")
    return items


def _origins(name: str, value: str) -> tuple[str, ...]:
    patterns = _csv(name, value)
    for pattern in patterns:
        if (problem := origin_pattern_problem(pattern)) is not None:
            raise ConfigError(f"{name}: {pattern!r}: {problem}; each pattern is scheme://host, scheme://host:port or "
                              "scheme://host:* (any port), e.g. https://app.example.com")
    return patterns


def _redis_url(name: str, value: str) -> str:
    try:
        scheme = URL(value).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("redis", "rediss", "unix", "redis+sentinel"):
        raise ConfigError(f"{name}: expected a redis://, rediss://, unix:// or redis+sentinel:// URL")
    if scheme == "redis+sentinel":
        from proxy.store import sentinel_parts

        try:
            sentinel_parts(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return value


def _state_dir(name: str, value: str) -> str:
    if not os.path.isdir(value) or not os.access(value, os.W_OK):
        raise ConfigError(f"{name}: no writable directory at {value!r}")
    return value


def _audit_sink(name: str, value: str) -> str:
    if value not in ("stdout", "redis") and not (value.startswith("file:") and len(value) > 5):
        raise ConfigError(f"{name}: expected stdout, file:PATH or redis, got {value!r}")
    if value.startswith("file:"):
        folder = os.path.dirname(os.path.abspath(value[5:]))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ConfigError(f"{name}: no writable directory {folder!r} for the audit file")
    return value


def _audit_anchor(name: str, value: str) -> str:
    if value != "stdout" and not value.startswith("file:"):
        raise ConfigError(f"{name}: expected stdout or file:PATH, got {value!r}")
    return _audit_sink(name, value)


def _signing_key(name: str, value: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _file(name, value)
    try:
        with open(value, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{name}: {value!r} is not an unencrypted Ed25519 PEM private key (scopegate audit keygen)")
    return value


def _bool(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return value.lower() == "true"


def _text(name: str, value: str) -> str:
    return value


def _secret(name: str, value: str) -> str:
    if len(value) < 32:
        raise ConfigError(f"{name}: expected a random secret of at least 32 characters")
    return value


def _level(name: str, value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{name}: expected debug, info, warning or error, got {value!r}")
    return value.upper()


OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")


def _tracing(env: Mapping[str, str], endpoint: bool) -> bool:
    """On when an endpoint is set, ours or OpenTelemetry's standard variables (which the SDK then reads itself)."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER") == "none":
        return False
    if not (endpoint or any(env.get(name) for name in OTEL_VARIABLES)):
        return False
    import importlib.util

    if importlib.util.find_spec("opentelemetry.sdk") is None:
        raise ConfigError("tracing is configured (SCOPEGATE_OTEL_* / OTEL_*) but the OpenTelemetry SDK is not "
                          "installed: pip install 'scopegate[tracing]'")
    return True


@dataclass(frozen=True)
class Setting:
    key: str  # Config field; the variable is SCOPEGATE_<KEY>, the flag --<key with dashes>
    parse: Callable[[str, str], Any]
    help: str

    @property
    def env(self) -> str:
        return "SCOPEGATE_" + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


SETTINGS = (
    Setting("upstream", _url, "upstream MCP endpoint URL, e.g. http://127.0.0.1:8080/mcp (required)"),
    Setting("upstream_command", _command, "instead of --upstream: run a stdio MCP server as child processes, e.g. "
            "'npx -y @modelcontextprotocol/server-filesystem /data' or a JSON array of strings (never via a shell)"),
    Setting("upstream_cwd", _directory, "working directory of the stdio server's processes (default: scopegate's)"),
    Setting("upstream_env", _env_names, "comma-separated names of scopegate's environment variables the stdio server "
            "gets besides PATH, HOME, LANG, LC_ALL, LC_CTYPE, TZ and TMPDIR (server-side headers are given to it as "
            "variables: x-app-token as X_APP_TOKEN)"),
    Setting("upstream_sessions", _positive_int, "stdio server: most client sessions (one process each) at once "
            "(default 32)"),
    Setting("upstream_pool", _positive_int, "stdio server: most processes for requests without a session "
            "(2026-07-28) (default 4)"),
    Setting("upstream_idle_seconds", _seconds, "stdio server: a process idle this long is stopped (its session "
            "ends) (default 600)"),
    Setting("listen", _listen, "host:port to serve on (default 127.0.0.1:8443 with TLS, 127.0.0.1:8000 without)"),
    Setting("public_url", _url, "the canonical URL clients use; its host and origin are allowed by default"),
    Setting("tls_cert", _file, "PEM certificate chain: serve HTTPS only (TLS 1.2 or newer)"),
    Setting("tls_key", _file, "PEM private key for --tls-cert"),
    Setting("tls_client_ca", _file, "PEM CA bundle: require client certificates signed by it (mTLS)"),
    Setting("allowed_hosts", _csv, "comma-separated Host patterns (host, host:port, host:*); default loopback"),
    Setting("allowed_origins", _origins, "comma-separated Origin patterns (scheme://host[:port|:*]); default loopback"),
    Setting("max_body_bytes", _positive_int, "largest POST body accepted (default 4194304)"),
    Setting("max_depth", _positive_int, "deepest JSON nesting accepted (default 64)"),
    Setting("max_batch", _positive_int, "most messages in one JSON-RPC batch (default 100)"),
    Setting("connect_timeout", _seconds, "seconds to wait for a connection to the upstream (default 5)"),
    Setting("response_timeout", _seconds, "seconds to wait for upstream response headers; then 504 (default 120)"),
    Setting("read_timeout", _seconds, "seconds a JSON upstream body may stall between reads; then 504 (default 30)"),
    Setting("body_timeout", _seconds, "seconds a client has to send its whole request body; then 408 (default 30)"),
    Setting("stream_connections", _positive_int, "upstream connections for long-lived GET streams (default 500)"),
    Setting("call_connections", _positive_int, "upstream connections for calls: POST and DELETE (default 500)"),
    Setting("max_streams_per_credential", _positive_int, "concurrent GET streams one credential may hold; then 429 "
            "(default 16)"),
    Setting("max_calls_per_credential", _positive_int, "concurrent upstream calls one credential may have in flight; "
            "then 429 (default 64)"),
    Setting("max_sessions_per_credential", _positive_int, "sessions one credential may hold; past it, its least "
            "recently used session is dropped (404) (default 1000)"),
    Setting("max_pending_previews", _positive_int, "unconfirmed write previews one credential may hold (default 100)"),
    Setting("memory_store_keys", _positive_int, "in-memory store (no Redis): most keys per kind (default 100000)"),
    Setting("redis_breaker_seconds", _seconds, "after a Redis failure, answer 'store unavailable' at once for this "
            "long, then probe (default 2)"),
    Setting("log_level", _level, "debug, info, warning or error (default info)"),
    Setting("policy", _file, "policy file (YAML): scopes, roles, scopes withheld from OAuth, token issuers"),
    Setting("pat_file", _file, "PAT registry file (YAML), e.g. a mounted Secret; re-read when it changes"),
    Setting("jwt_issuer", _text, "the `iss` of the one JWT/OAuth issuer configured by variables (more: policy)"),
    Setting("jwks_url", _url, "JWKS URL of that issuer"),
    Setting("jwt_public_key_file", _file, "PEM public key of that issuer (instead of a JWKS URL)"),
    Setting("jwt_dev_hs256_secret", _text, "DEVELOPMENT ONLY: accept HS256 tokens of that issuer signed with this"),
    Setting("oauth_rate_limit", _rate, "requests per client address to the OAuth endpoints anyone can reach "
            "(register, authorize, token), as N/S: N per S seconds, N at once; 0: off (default 60/60)"),
    Setting("oauth_signing_keys", _files, "comma-separated PEM private keys (ES256 or Ed25519) of the built-in "
            "OAuth server: the first signs, all are published (rotation)"),
    Setting("upstream_identity_keys", _files, "comma-separated PEM private keys (ES256 or Ed25519) that sign the "
            "policy's upstream_identity assertions: the first signs, all are published at /.well-known/jwks.json "
            "(rotation); unset: the OAuth server's keys"),
    Setting("token_exchange_client_secret_file", _file, "file holding scopegate's client secret at the token "
            "endpoint of the policy's upstream_identity.token_exchange (unset: a public client)"),
    Setting("oidc_client_secret_file", _file, "file holding the client secret scopegate uses at the OIDC provider "
            "of the policy's oauth.oidc (none: a public client with PKCE)"),
    Setting("redis_url", _redis_url, "redis://, rediss://, unix:// or redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE "
            "URL; unset: in-process memory (one replica)"),
    Setting("state_dir", _state_dir, "directory for the durable credential state without Redis (revocations, grants, "
            "consents, last use: a SQLite file); unset: kept in memory and lost on restart"),
    Setting("upstream_headers_file", _file, "YAML/JSON map of server-side headers for the upstream (x-app-token)"),
    Setting("tool_prefix", _csv, "comma-separated tool-name prefixes: only matching tools are visible and callable"),
    Setting("default_workspace", _text, "workspace injected when the credential has no bound or default one"),
    Setting("metrics_listen", _listen, "host:port for /metrics, /healthz and /readyz (default 127.0.0.1:9464)"),
    Setting("audit_sink", _audit_sink, "where audit records go: stdout (default), file:PATH, or redis (a Stream)"),
    Setting("audit_anchor", _audit_anchor, "a second sink that gets every seal of the audit trail (stdout or "
            "file:PATH, out of reach of whoever can write the trail): `scopegate audit verify --anchor` proves "
            "against it that the trail was not rolled back or cut; unset: none"),
    Setting("audit_arguments", _bool, "true: audit records carry the raw tool arguments too (default false)"),
    Setting("workers", _workers, "serving processes on the one port (default 1; auto: the CPUs of the cgroup's "
            "quota); more than 1 needs SCOPEGATE_REDIS_URL"),
    Setting("audit_signing_key_file", _signing_key, "Ed25519 private key (PEM) that signs the audit trail's "
            "checkpoints (`scopegate audit keygen`); unset: the trail is chained but unsigned"),
    Setting("audit_checkpoint_records", _positive_int, "seal the audit chain every N records (default 1000)"),
    Setting("audit_checkpoint_seconds", _seconds, "and every T seconds, even when idle (default 60)"),
    Setting("otel_exporter_otlp_endpoint", _url, "OTLP/HTTP endpoint for OpenTelemetry traces, e.g. "
            "http://otel-collector:4318 (the standard OTEL_EXPORTER_OTLP_* variables work too); unset: no tracing"),
    Setting("stream_key", _secret, "secret (32+ chars) that seals SSE event ids to caller and session; default: "
                                   "one random key shared through Redis, or per process without Redis"),
    Setting("approval_webhook", _url, "URL that gets a Slack-compatible JSON message with the link whenever a write "
            "waits for approval on the approval page (policy approve: {via: page})"),
    Setting("approval_hold_seconds", _seconds, "how long a 2026-07-28 retry is held while its approval still waits "
            "before it is answered with a fresh requestState (default 20)"),
)

# The stdio bridge's address until it listens (edge/stdio/bridge.py): its path is the MCP endpoint's path.
STDIO_UPSTREAM = URL("http://127.0.0.1:0/mcp")


def _runnable(argv: tuple[str, ...], cwd: str | None, path: str | None) -> None:
    """The command's program exists and may be run (found on PATH, or relative to the working directory)."""
    import shutil

    program = argv[0]
    if os.sep in program:
        found = os.path.join(cwd or ".", program)
        ok = os.path.isfile(found) and os.access(found, os.X_OK)
    else:
        ok = shutil.which(program, path=path) is not None
    if not ok:
        raise ConfigError(f"SCOPEGATE_UPSTREAM_COMMAND: {program!r} is not a program scopegate can run (not found "
                          "on PATH, or not executable)")


# SCOPEGATE_UPSTREAM_HEADER_<NAME> variables carry server-side header values, one each (`_` stands for `-`).
UPSTREAM_HEADER_PREFIX = "SCOPEGATE_UPSTREAM_HEADER_"


@dataclass(frozen=True)
class Config:
    upstream: URL  # with upstream_command: where the stdio bridge listens, known once it does (edge/stdio)
    listen: tuple[str, int] = ("127.0.0.1", 8000)
    upstream_command: tuple[str, ...] = ()
    upstream_cwd: str | None = None
    upstream_env: tuple[str, ...] = ()
    upstream_sessions: int = 32
    upstream_pool: int = 4
    upstream_idle_seconds: float = 600.0
    public_url: URL | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    origin_policy: OriginPolicy = field(default_factory=lambda: default_policy(None, None))
    max_body_bytes: int = 4 * 1024 * 1024
    max_depth: int = 64
    max_batch: int = 100
    connect_timeout: float = 5.0
    response_timeout: float = 120.0
    read_timeout: float = 30.0
    body_timeout: float = 30.0
    stream_connections: int = 500
    call_connections: int = 500
    max_streams_per_credential: int = 16
    max_calls_per_credential: int = 64
    max_pending_previews: int = 100
    approval_webhook: URL | None = None
    approval_hold_seconds: float = 20.0
    max_sessions_per_credential: int = 1000
    memory_store_keys: int = 100_000
    redis_breaker_seconds: float = 2.0
    log_level: str = "INFO"
    policy: str | None = None
    pat_file: str | None = None
    jwt_issuer: str | None = None
    jwks_url: URL | None = None
    jwt_public_key_file: str | None = None
    jwt_dev_hs256_secret: str | None = field(default=None, repr=False)
    oauth_rate_limit: tuple[int, float] | None = (60, 60.0)
    oauth_signing_keys: tuple[str, ...] = ()
    upstream_identity_keys: tuple[str, ...] = ()
    token_exchange_client_secret_file: str | None = field(default=None, repr=False)
    oidc_client_secret_file: str | None = None
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    state_dir: str | None = None
    upstream_headers_file: str | None = None
    tool_prefix: tuple[str, ...] = ()
    default_workspace: str | None = None
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    audit_sink: str = "stdout"
    audit_anchor: str | None = None
    audit_arguments: bool = False
    workers: int = 1
    audit_signing_key_file: str | None = None
    audit_checkpoint_records: int = 1000
    audit_checkpoint_seconds: float = 60.0
    otel_exporter_otlp_endpoint: URL | None = None
    tracing: bool = False  # an OTLP endpoint, or the standard OTEL_* variables, are set
    stream_key: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def load(env: Mapping[str, str], flags: Mapping[str, str | None]) -> Config:
    """Build the Config from `SCOPEGATE_*` variables and flags (flags win). Raises ConfigError."""
    known = {s.env for s in SETTINGS}
    unknown = sorted(
        k for k in env if k.startswith("SCOPEGATE_") and k not in known and not k.startswith(UPSTREAM_HEADER_PREFIX)
    )
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a setting this version of scopegate understands (refusing to start)")

    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = flags.get(s.key)
        source = s.flag
        if raw is None:
            raw, source = env.get(s.env), s.env
        if raw is not None and raw != "":
            values[s.key] = s.parse(source, raw)

    if "upstream_command" in values:
        if "upstream" in values:
            raise ConfigError("SCOPEGATE_UPSTREAM and SCOPEGATE_UPSTREAM_COMMAND: set one of them (an HTTP server's "
                              "URL, or the command of a stdio server scopegate runs)")
        _runnable(values["upstream_command"], values.get("upstream_cwd"), env.get("PATH"))
        if values.get("workers", 1) > 1:
            raise ConfigError("SCOPEGATE_WORKERS: a stdio server's sessions live in one process's children; run "
                              "one worker (and one replica per session: sticky sessions)")
        values["upstream"] = STDIO_UPSTREAM
    for key in ("upstream_cwd", "upstream_env", "upstream_sessions", "upstream_pool", "upstream_idle_seconds"):
        if key in values and "upstream_command" not in values:
            raise ConfigError(f"SCOPEGATE_{key.upper()} is for a stdio server: it needs SCOPEGATE_UPSTREAM_COMMAND")
    if "upstream" not in values:
        raise ConfigError("SCOPEGATE_UPSTREAM (or --upstream): the upstream MCP endpoint URL is required")
    if ("tls_cert" in values) != ("tls_key" in values):
        raise ConfigError("SCOPEGATE_TLS_CERT and SCOPEGATE_TLS_KEY go together: set both or neither")
    if "tls_client_ca" in values and "tls_cert" not in values:
        raise ConfigError("SCOPEGATE_TLS_CLIENT_CA needs SCOPEGATE_TLS_CERT and SCOPEGATE_TLS_KEY (mTLS is TLS)")
    values.setdefault("listen", ("127.0.0.1", 8443 if "tls_cert" in values else 8000))
    if values.get("workers", 1) > 1 and "redis_url" not in values:
        raise ConfigError(f"SCOPEGATE_WORKERS={values['workers']} needs SCOPEGATE_REDIS_URL: sessions, previews and "
                          "revocations must be shared by the workers")
    if values.get("workers", 1) > 1 and values["listen"][1] == 0:
        raise ConfigError("SCOPEGATE_WORKERS: workers share one port, so SCOPEGATE_LISTEN needs a port other than 0")
    if "state_dir" in values and "redis_url" in values:
        raise ConfigError("SCOPEGATE_STATE_DIR is for one replica without Redis: with SCOPEGATE_REDIS_URL the "
                          "credential state lives in Redis (unset one of them)")
    if values.get("audit_sink") == "redis" and "redis_url" not in values:
        raise ConfigError("SCOPEGATE_AUDIT_SINK=redis needs SCOPEGATE_REDIS_URL")
    if "audit_anchor" in values and values["audit_anchor"] == values.get("audit_sink", "stdout"):
        raise ConfigError("SCOPEGATE_AUDIT_ANCHOR: the anchor is the audit sink itself; it proves something only "
                          "where the trail's writer cannot roll it back (another file, or stdout)")
    jwt_sources = [k for k in ("jwks_url", "jwt_public_key_file", "jwt_dev_hs256_secret") if k in values]
    if ("jwt_issuer" in values) != bool(jwt_sources) or len(jwt_sources) > 1:
        raise ConfigError("SCOPEGATE_JWT_ISSUER needs exactly one of SCOPEGATE_JWKS_URL, SCOPEGATE_JWT_PUBLIC_KEY_FILE "
                          "and SCOPEGATE_JWT_DEV_HS256_SECRET (and they need it)")

    values["tracing"] = _tracing(env, "otel_exporter_otlp_endpoint" in values)

    public: URL | None = values.get("public_url")
    policy = default_policy(
        public.host if public else None, str(public.origin()) if public else None
    )
    policy = OriginPolicy(
        hosts=values.pop("allowed_hosts", policy.hosts), origins=values.pop("allowed_origins", policy.origins)
    )
    return Config(origin_policy=policy, **values)
