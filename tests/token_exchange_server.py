"""A small RFC 8693 token-exchange server for tests, built on Authlib's authorization server: an identity provider
that trusts scopegate's identity assertions (verified with scopegate's JWKS) as subject tokens and issues its own
opaque access tokens for them. It keeps every token it issued, for whom and with which scope, so tests can check
what the upstream received against what the provider really issued, and how often it was asked.

Served by uvicorn on its own thread (tests/conftest.py:ThreadedServer)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jwt
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic" and endpoint == "token"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE


@dataclass
class Issued:
    access_token: str
    subject: str
    scope: str | None
    audience: str | None


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    GRANT_TYPE = GRANT_TYPE
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic"]

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        data = self.request.payload.data
        if data.get("subject_token_type") != JWT_TYPE or not data.get("subject_token"):
            raise InvalidRequestError("subject_token of type jwt required")
        if data.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError("only access tokens are issued")
        server: Provider = self.server
        try:
            claims = server.trust.verify(data["subject_token"])
        except jwt.PyJWTError as exc:
            raise InvalidGrantError(f"subject_token refused: {type(exc).__name__}") from None
        self.request.client = client
        self.request.user = claims["sub"]

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        scope = self.request.payload.data.get("scope")
        token = self.generate_token(user=self.request.user, scope=scope, include_refresh_token=False)
        token["issued_token_type"] = ACCESS_TOKEN_TYPE
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class Provider(AuthorizationServer):
    def __init__(self, trust: Any, client: Client, expires_in: int) -> None:
        super().__init__()
        self.trust = trust  # what verifies a subject token (the demo ledger's IdentityCheck does the checks asked)
        self.client = client
        self.issued: list[Issued] = []
        self.refuse = False  # tests turn the provider down
        self.register_grant(TokenExchangeGrant)
        self.register_token_generator("default", BearerTokenGenerator(
            access_token_generator=lambda **_: "idp-" + secrets.token_urlsafe(24), expires_generator=expires_in))

    def query_client(self, client_id: str) -> Client | None:
        return self.client if client_id == self.client.client_id else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.issued.append(Issued(token["access_token"], request.user, token.get("scope"),
                                  request.payload.data.get("audience")))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers


@dataclass
class TokenService:
    provider: Provider
    app: Any = field(init=False)

    def __post_init__(self) -> None:
        import orjson

        async def token(request: Request) -> Response:
            if self.provider.refuse:
                return Response(b'{"error":"temporarily_unavailable"}', 503, media_type="application/json")
            form = await request.form()
            oauth = OAuth2Request("POST", str(request.url), headers=request.headers)
            oauth.payload = BasicOAuth2Payload({k: v for k, v in form.items() if isinstance(v, str)})
            status, body, headers = self.provider.create_token_response(oauth)
            return Response(orjson.dumps(body), status, headers=dict(headers), media_type="application/json")

        self.app = Starlette(routes=[Route("/token", token, methods=["POST"])])
