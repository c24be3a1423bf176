"""Which headers cross the proxy, in each direction. Pure functions over header mappings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

from proxy.memo import remember

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones the proxy re-frames or owns itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Never forwarded upstream from a client:
# - host: the upstream gets its own (MCP servers refuse a foreign Host to stop DNS rebinding);
# - authorization / cookie: the client's credential is for the proxy only (no token passthrough);
# - origin: checked by the proxy against its own allow-list; the upstream would judge it against the wrong host;
# - content-length: the body is re-serialised;
# - accept-encoding: the proxy reads what it relays, so the upstream answers uncompressed (it is on a local link);
# - forwarded, x-forwarded-*, x-real-ip: a client's claim about where it is or which host it asked for; an upstream
#   that trusts its proxy would believe it.
_NOT_UPSTREAM = HOP_BY_HOP | {"host", "authorization", "cookie", "origin", "content-length", "accept-encoding",
                              "forwarded", "x-real-ip"}

# Never relayed to the client: framing is the proxy's own, and so are these.
_NOT_DOWNSTREAM = HOP_BY_HOP | {"content-length", "date", "server", "set-cookie"}


def _connection_listed(headers: Mapping[str, str]) -> set[str]:
    """Names a `Connection` header lists are hop-by-hop too (RFC 9110 §7.6.1)."""
    values = headers.getall("connection", ()) if hasattr(headers, "getall") else [headers.get("connection", "")]
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


class _Crossing:
    """Which header names cross in one direction, each name decided once as it is spelled (a proxy sees the same
    few spellings on every request; bounded, so junk names cannot grow it)."""

    MEMO = 1024

    def __init__(self, drop: frozenset[str]) -> None:
        self.drop = drop
        self.seen: dict[str, bool] = {}

    def decide(self, name: str) -> bool:
        lower = name.lower()
        return remember(self.seen, name, lower not in self.drop and not lower.startswith(("proxy-", "x-forwarded-")),
                        self.MEMO)

    def filtered(self, headers: Mapping[str, str]) -> CIMultiDict[str]:
        seen, decide = self.seen, self.decide
        kept = [(name, value) for name, value in headers.items()
                if (crosses := seen.get(name)) or (crosses is None and decide(name))]
        if "connection" in headers:  # names it lists are hop-by-hop too, this once
            listed = _connection_listed(headers)
            kept = [(name, value) for name, value in kept if name.lower() not in listed]
        return CIMultiDict(kept)


_UPSTREAM = _Crossing(_NOT_UPSTREAM)
_DOWNSTREAM = _Crossing(_NOT_DOWNSTREAM)


def upstream_request_headers(client: Mapping[str, str], extra: Iterable[tuple[str, str]] = ()) -> CIMultiDict[str]:
    """Headers for the upstream request: the client's, less what must not cross, plus the proxy's own."""
    out = _UPSTREAM.filtered(client)
    out["Accept-Encoding"] = "identity"
    for name, value in extra:
        out[name] = value
    return out


def client_response_headers(upstream: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers for the client's response: the upstream's, less hop-by-hop and framing headers."""
    return _DOWNSTREAM.filtered(upstream)
