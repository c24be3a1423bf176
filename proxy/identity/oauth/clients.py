"""OAuth clients: who may ask for a grant, with which redirect URIs, and where we learned that.

Three sources: clients pre-registered in the policy, clients registered through RFC 7591 (kept in the shared store
so every replica knows them), and, later, Client ID Metadata Documents. Every client is public (no secret): PKCE
S256 is what binds a code to the client that asked for it, so a registration that asks for a secret method is
registered as `none` (RFC 7591 §3.2.1 lets the server say so in its answer).

Registration metadata is validated with our own rules for redirect URIs first (uris.py: RFC 3986 URIs whose parse
is unambiguous; https, http on loopback only, or a native app's private scheme; never a fragment), then with
Authlib's RFC 7591 claims (URIs, scope, grant and response types against our metadata).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.durable import Durable
from proxy.identity.oauth.uris import UriRefused, parse_redirect_uri
from proxy.store import Store

CLIENT_KEY = "scopegate:oauth-client:"  # a registration nobody has used yet: anonymous, brief, bounded
REGISTERED_GROUP = "scopegate:anonymous-clients"
KEPT_KEY = "scopegate:cred:client:"  # a client a grant was made for: durable, as long as a grant may live
REGISTRATION_TTL = 86400  # an unused registration is forgotten within a day
MAX_REGISTRATIONS = 10_000  # and when this many wait, the least recently used goes first
MAX_REDIRECT_URIS = 10
MAX_NAME = 200


class RegistrationRefused(Exception):
    """RFC 7591 §3.2.2: `error` is invalid_redirect_uri or invalid_client_metadata; the text is for the client."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    source: str  # shown on the consent page: where this client's name and redirect URIs came from
    # Vouched for by the organisation (the policy). Only such a client's /authorize errors are redirected to it
    # without a person in the loop: anyone can register a client, so its redirect URI may be anyone's site
    # (RFC 9700 §4.11.2). Never stored: a client read back from the store is one that registered itself.
    preregistered: bool = False
    # (what, https URL): homepage, terms, privacy, as the policy gives them for a pre-registered client; never from a
    # client's own registration or document (the consent page shows only what the organisation vouches for)
    links: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps({"client_id": self.client_id, "name": self.name,
                             "redirect_uris": list(self.redirect_uris), "source": self.source})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Client:
        data = orjson.loads(raw)
        return cls(data["client_id"], data["name"], tuple(data["redirect_uris"]), data["source"])


def trust(client: Client, preregistered: frozenset[str]) -> tuple[str, str]:
    """Pure: how far this client is vouched for, as a level and in plain words for the consent page."""
    if client.client_id in preregistered:
        return "preregistered", "Pre-registered by your organisation in this server's policy."
    if client.client_id.startswith("https://"):
        return "document", ("It describes itself in a metadata document it publishes on the web; its name and "
                            "addresses are its own claim: not verified by your organisation.")
    return "self", ("It registered itself with this server; its name is its own claim: not verified by your "
                    "organisation.")


def redirect_uri_problem(uri: Any) -> str | None:
    """None for an acceptable redirect URI, else why not (OAuth 2.1 §2.3.1, RFC 8252; the rules: uris.py)."""
    try:
        parse_redirect_uri(uri)
    except UriRefused as exc:
        return f"a redirect URI {exc}"
    return None


def check_metadata(body: Any, server_metadata: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """Validate RFC 7591 client metadata; returns (client name, redirect URIs). Raises RegistrationRefused."""
    from authlib.oauth2.rfc7591 import ClientMetadataClaims
    from joserfc.errors import JoseError

    if not isinstance(body, dict):
        raise RegistrationRefused("invalid_client_metadata", "the body must be a JSON object")
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
        raise RegistrationRefused("invalid_redirect_uri", f"redirect_uris: 1 to {MAX_REDIRECT_URIS} URIs")
    for uri in uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise RegistrationRefused("invalid_redirect_uri", problem)
    options = ClientMetadataClaims.get_claims_options(server_metadata)
    options.pop("token_endpoint_auth_method", None)  # any method is accepted and registered as `none`
    options.pop("scope", None)  # unknown scopes are not refused here: the consent page offers only what exists
    claims = ClientMetadataClaims(body, {}, options=options)
    try:
        claims.validate()
    except (JoseError, ValueError, TypeError) as exc:
        raise RegistrationRefused("invalid_client_metadata", str(getattr(exc, "description", "") or exc)) from None
    name = body.get("client_name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
        raise RegistrationRefused("invalid_client_metadata", f"client_name: at most {MAX_NAME} characters")
    return (name or "unnamed client").strip() or "unnamed client", tuple(uris)


class Clients:
    def __init__(self, store: Store, durable: Durable, preregistered: tuple[Client, ...], lifetime: int,
                 documents: Any = None) -> None:
        self.store = store  # what anyone may create: registrations
        self.durable = durable  # clients grants were made for
        self.preregistered = {c.client_id: c for c in preregistered}
        self.lifetime = lifetime
        self.documents = documents  # cimd.MetadataDocuments, when Client ID Metadata Documents are accepted

    async def register(self, body: Any, server_metadata: dict[str, Any]) -> Client:
        name, uris = check_metadata(body, server_metadata)
        client = Client("sgc_" + secrets.token_hex(16), name, uris, "registered itself (RFC 7591)")
        await self.store.set_capped(CLIENT_KEY + client.client_id, client.to_json().decode(), ttl=REGISTRATION_TTL,
                                    group=REGISTERED_GROUP, limit=MAX_REGISTRATIONS)
        return client

    async def keep(self, client: Client) -> None:
        """A self-registered client a person granted access to lives as long as a grant may: a flood of other
        registrations, or a restart, never takes it away from its grants."""
        if client.client_id.startswith("sgc_"):
            await self.durable.set(KEPT_KEY + client.client_id, client.to_json().decode(), ttl=self.lifetime)

    async def find(self, client_id: str, server_metadata: dict[str, Any]) -> Client | None:
        """The client, or None when unknown; a metadata document that cannot be used raises cimd.DocumentRefused."""
        if client_id in self.preregistered:
            return self.preregistered[client_id]
        if client_id.startswith("https://") and self.documents is not None and len(client_id) <= 2000:
            return await self.documents.client(client_id, server_metadata)
        if not client_id.startswith("sgc_") or len(client_id) > 40:
            return None
        raw = await self.durable.get(KEPT_KEY + client_id)
        if raw is None:
            raw = await self.store.get(CLIENT_KEY + client_id, refresh_ttl=REGISTRATION_TTL)
        return Client.from_json(raw) if raw else None
