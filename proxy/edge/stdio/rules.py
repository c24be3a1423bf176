"""Pure decisions of the stdio bridge: the child's environment, where a child's message goes, and
how long to wait before starting a crashed child again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

# What a server needs to run at all (find its interpreter, a home for npx/uvx caches, a locale, a time zone, a
# scratch folder); anything else from scopegate's environment reaches the child only when the operator lists it.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
RESTART_FIRST = 0.5  # seconds before the second restart in a row; the first one is at once
RESTART_MOST = 30.0
STEADY_SECONDS = 60.0  # a child that ran this long before it died starts a fresh count of crashes


def header_variable(header: str) -> str:
    """The environment variable a server-side header's value is given to the child as: `x-app-token` ->
    `X_APP_TOKEN` (the same spelling as scopegate's own SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN)."""
    return header.upper().replace("-", "_")


def child_env(parent: Mapping[str, str], allowed: Iterable[str], secrets: Mapping[str, str]) -> dict[str, str]:
    """The child's whole environment: BASE_ENV and the `allowed` names where scopegate has them, then the upstream's
    secret headers as variables. scopegate's own settings (SCOPEGATE_*) never: they hold its keys."""
    env = {name: parent[name] for name in (*BASE_ENV, *allowed)
           if name in parent and not name.startswith("SCOPEGATE_")}
    env.update({header_variable(name): value for name, value in secrets.items()})
    return env


def restart_delay(crashes: int) -> float:
    """Seconds between a child's death and its next start, `crashes` deaths in a row: at once after the first,
    then RESTART_FIRST doubling up to RESTART_MOST (a server that cannot start is not started in a loop)."""
    if crashes <= 1:
        return 0.0
    return min(RESTART_FIRST * 2 ** min(crashes - 2, 16), RESTART_MOST)


def progress_token(message: Mapping[str, Any]) -> Any:
    """The progress token a request asks progress under (params._meta.progressToken), else None."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


def destination(message: Mapping[str, Any], waiting: Sequence[tuple[str, Any]]) -> int | None:
    """Which waiting request's stream carries a message the server sent of its own (a request or a notification):
    stdio has one pipe, so relation is inferred. `waiting`: (method, progress token) of the requests in flight,
    oldest first. A progress notice goes with the request that asked for it; a list-changed notice to a
    `subscriptions/listen` stream; anything else (a log line, an elicitation or sampling question) to the oldest
    call in flight, the one the server is most likely working on. None: no stream of a request fits (the session's
    GET stream, if one is open, takes it)."""
    method = message.get("method")
    if method == "notifications/progress":
        params = message.get("params")
        token = params.get("progressToken") if isinstance(params, dict) else None
        for index, (_, asked) in enumerate(waiting):
            if asked is not None and asked == token:
                return index
        return None
    listening = isinstance(method, str) and method.endswith("/list_changed")
    for index, (waiting_method, _) in enumerate(waiting):
        if (waiting_method == "subscriptions/listen") == listening:
            return index
    return None


MODERN = "2026-07-28"
LEGACY = "2025-11-25"  # the newest revision with an initialize handshake


def declared(message: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """What a request without a session declares in `_meta` (2026-07-28): its capabilities as a key (canonical
    JSON: children initialized for one set serve only requests declaring the same), the capabilities, the client's
    info."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    capabilities = meta.get("io.modelcontextprotocol/clientCapabilities")
    capabilities = capabilities if isinstance(capabilities, dict) else {}
    info = meta.get("io.modelcontextprotocol/clientInfo")
    info = info if isinstance(info, dict) and isinstance(info.get("name"), str) else {"name": "scopegate",
                                                                                        "version": "0"}
    return orjson.dumps(capabilities, option=orjson.OPT_SORT_KEYS).decode(), capabilities, info


def speaks_modern(answer: Mapping[str, Any] | None) -> bool:
    """Whether a server's answer to `server/discover` says it serves 2026-07-28 without a handshake."""
    result = answer.get("result") if answer is not None else None
    versions = result.get("supportedVersions") if isinstance(result, dict) else None
    return isinstance(versions, list) and MODERN in versions
