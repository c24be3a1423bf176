"""Server-side headers for the upstream (e.g. `x-app-token`): the proxy's own credential, loaded before it listens.

They come from SCOPEGATE_UPSTREAM_HEADERS_FILE (a YAML/JSON map) or SCOPEGATE_UPSTREAM_HEADER_<NAME> variables
(`_` stands for `-`). The pipeline steps that keep them server-side are in `proxy/guards/secret_headers.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from proxy.config import ConfigError

ENV_PREFIX = "SCOPEGATE_UPSTREAM_HEADER_"
_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # RFC 9110 token (fullmatch: `$` would let a final LF in)


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
        if not _NAME.fullmatch(name) or not isinstance(value, str) or not value:
            raise ConfigError(f"upstream header {name!r}: expected a header name and a non-empty string value")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ConfigError(f"upstream header {name!r}: the value has control characters")
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            raise ConfigError(f"upstream header {name!r}: the proxy sets this header itself")
        out[name.lower()] = value
    return out
