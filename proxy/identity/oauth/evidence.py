"""OAuth events as audit records: each consent, token, refusal, replay and revocation becomes one record in the
same hash-chained trail as the proxy's decisions (the edge hands in the writer; identity never imports ops).

An event is written as an Exchange with one outcome whose method is `oauth/<endpoint>` and whose target is the
client id; the principal is the person (and grant) concerned, when known. Never a token, code or secret."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from multidict import CIMultiDict

from proxy.exchange import Exchange, Outcome
from proxy.identity.principal import Principal

Writer = Callable[[Exchange], None]


class Evidence:
    def __init__(self) -> None:
        self.writer: Writer | None = None  # set by the edge once the audit trail is open

    def record(self, endpoint: str, decision: str, reason: str, *, client_id: str | None = None,
               subject: str | None = None, credential_id: str | None = None, label: str | None = None) -> None:
        if self.writer is None:
            return
        exchange = Exchange(request_id=secrets.token_hex(16), session_id=None, protocol_version=None,
                            upstream_headers=CIMultiDict(), http_method="POST")
        if subject is not None:
            exchange.principal = Principal(subject=subject, credential_id=credential_id or "", label=label or "",
                                           kind="oauth", scopes=frozenset())
        message = {"method": f"oauth/{endpoint}", "params": {"name": client_id} if client_id else {}}
        exchange.outcomes.append(Outcome(message, decision, reason))
        self.writer(exchange)
