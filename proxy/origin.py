"""Host and Origin allow-lists: DNS-rebinding protection the upstream can no longer do, since it sees the proxy's Host.

Host patterns: `host` or `host:*` (any port, or none), `host:port`. Origin patterns: `scheme://host` (the default
port only), `scheme://host:port`, or `scheme://host:*`. Matching is case-insensitive. A request without `Origin` is
not from a browser and passes the Origin check; a request without `Host` fails the Host check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from proxy.memo import remember

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _split_host(value: str) -> tuple[str, str | None]:
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end == -1:
            return value, None
        rest = value[end + 1 :]
        return value[: end + 1], rest[1:] if rest.startswith(":") else None
    host, sep, port = value.rpartition(":")
    return (host, port) if sep else (value, None)


def _host_matches(pattern: str, value: str, *, portless_means_any: bool) -> bool:
    p_host, p_port = _split_host(pattern)
    v_host, v_port = _split_host(value)
    if p_host != v_host:
        return False
    if p_port == "*" or (p_port is None and portless_means_any):
        return True
    return p_port == v_port


MEMO = 4096  # distinct Host (and Origin) values decided once each; bounded, so junk cannot grow it


@dataclass(frozen=True)
class OriginPolicy:
    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    # A proxy sees a handful of distinct Host and Origin values: each is decided once, per policy (a plain dict:
    # an lru_cache keyed on the policy would hash this dataclass on every request).
    _hosts_seen: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    _origins_seen: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def host_allowed(self, host: str | None) -> bool:
        if not host:
            return False
        allowed = self._hosts_seen.get(host)
        if allowed is None:
            allowed = remember(self._hosts_seen, host,
                               any(_host_matches(p, host, portless_means_any=True) for p in self.hosts), MEMO)
        return allowed

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        allowed = self._origins_seen.get(origin)
        if allowed is None:
            allowed = remember(self._origins_seen, origin, _origin_allowed(self.origins, origin), MEMO)
        return allowed


_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
_PORT = re.compile(r"\*|[0-9]{1,5}")
_HOST = re.compile(r"\[[0-9a-f:.]+\]|[a-z0-9_\-.]+")


def origin_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is not an Origin pattern (`scheme://host`, `scheme://host:port`, `scheme://host:*`), or None.
    There is no wildcard host: allowing every origin would let any page a browser shows call the proxy with the
    browser's reach (DNS rebinding), which is what the check is for; name each origin instead. Pure."""
    if "*" in (pattern[:-2] if pattern.endswith(":*") else pattern):
        return ("a wildcard stands only for the port (scheme://host:*): allowing every origin, or every subdomain, "
                "would undo the DNS-rebinding protection")
    scheme, sep, rest = pattern.strip().lower().partition("://")
    host, port = _split_host(rest)
    if not sep or not _SCHEME.fullmatch(scheme) or not _HOST.fullmatch(host) or \
            (port is not None and (not _PORT.fullmatch(port) or (port != "*" and not 0 < int(port) < 65536))):
        return "not an origin pattern"
    return None


def _origin_allowed(patterns: tuple[str, ...], origin: str) -> bool:
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or "/" in rest:
        return False
    for pattern in patterns:
        p_scheme, _, p_rest = pattern.lower().partition("://")
        if p_scheme == scheme and _host_matches(p_rest, rest, portless_means_any=False):
            return True
    return False


def default_policy(public_url_host: str | None, public_url_origin: str | None) -> OriginPolicy:
    """Loopback on any port, plus the public URL's host and origin when one is configured."""
    hosts = list(LOOPBACK_HOSTS)
    origins = [f"{scheme}://{host}:*" for scheme in ("http", "https") for host in LOOPBACK_HOSTS]
    if public_url_host:
        hosts.append(public_url_host)
    if public_url_origin:
        origins.append(public_url_origin)
    return OriginPolicy(tuple(hosts), tuple(origins))
