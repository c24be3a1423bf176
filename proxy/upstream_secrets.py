"""Server-side headers for the upstream (e.g. `x-app-token`): the proxy holds them, nobody else ever sees them.

They come from SCOPEGATE_UPSTREAM_HEADERS_FILE (a YAML/JSON map) or SCOPEGATE_UPSTREAM_HEADER_<NAME> variables
(`_` stands for `-`), go on every upstream request, are refused when a client sends one (400: only the proxy may),
and are removed from upstream responses, by name and wherever their value appears.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import yaml
from aiohttp import web
from multidict import CIMultiDict

from proxy.config import ConfigError
from proxy.jsonrpc import INVALID_REQUEST
from proxy.replies import rpc_error

if TYPE_CHECKING:
    from proxy.exchange import Exchange

ENV_PREFIX = "SCOPEGATE_UPSTREAM_HEADER_"
_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # RFC 9110 token


def load_secret_headers(path: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """name (lower case) -> value. Raises ConfigError naming the source, never the value."""
    headers: dict[str, str] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                raw = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"SCOPEGATE_UPSTREAM_HEADERS_FILE: cannot read {path!r} ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise ConfigError("SCOPEGATE_UPSTREAM_HEADERS_FILE: expected a map of header name to value")
        headers.update({str(k): v for k, v in raw.items()})
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX:
            headers[key[len(ENV_PREFIX):].replace("_", "-")] = value
    out = {}
    for name, value in headers.items():
        if not _NAME.match(name) or not isinstance(value, str) or not value:
            raise ConfigError(f"upstream header {name!r}: expected a header name and a non-empty string value")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ConfigError(f"upstream header {name!r}: the value has control characters")
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            raise ConfigError(f"upstream header {name!r}: the proxy sets this header itself")
        out[name.lower()] = value
    return out


class RefuseSecretHeaders:
    """Admission check: a client may not send a header the proxy holds for the upstream."""

    def __init__(self, secret_headers: Mapping[str, str]) -> None:
        self.names = frozenset(secret_headers)

    async def __call__(self, request: web.Request, exchange: Exchange) -> web.StreamResponse | None:
        for name in self.names:
            if name in request.headers:
                return rpc_error(400, INVALID_REQUEST, f"header {name} is set by the proxy; clients may not send it",
                                 request_id=exchange.request_id)
        return None


class ScrubSecretHeaders:
    """Response hook: nothing the upstream echoes may carry a server-side secret back to the client."""

    def __init__(self, secret_headers: Mapping[str, str]) -> None:
        self.names = frozenset(secret_headers)
        self.values = tuple(secret_headers.values())

    async def __call__(self, exchange: Exchange, status: int, headers: CIMultiDict[str]) -> None:
        leaking = {name.lower() for name, value in headers.items()
                   if name.lower() in self.names or any(secret in value for secret in self.values)}
        for name in leaking:
            headers.popall(name, None)
