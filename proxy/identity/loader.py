"""Everything identity needs, loaded once before the proxy listens: policy, PAT registry, issuers, upstream secrets.

`load_identity` is where a bad file or a missing piece becomes a ConfigError (exit 2), never a proxy that runs open.
The asynchronous parts (JWKS fetching, the shared store) are made in the app's startup from what this returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from proxy.config import Config, ConfigError
from proxy.identity import assertion, token_exchange
from proxy.identity.jwks import JwksKeys, KeySource, StaticKey
from proxy.identity.jwt_auth import JwtVerifier, TrustedIssuer
from proxy.identity.oauth.keys import KeyFileError, KeyRing, load_keys
from proxy.identity.oauth.server import Settings
from proxy.identity.oauth.setup import own_issuer, settings_from
from proxy.identity.pats import Registry, RegistryError
from proxy.identity.upstream_secrets import load_secret_headers
from proxy.policy.model import Issuer, Policy, PolicyError, load_policy


@dataclass(frozen=True)
class Identity:
    policy: Policy
    registry: Registry | None
    issuers: tuple[Issuer, ...]
    dev_secret: str | None = field(default=None, repr=False)
    secret_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    oauth: Settings | None = None  # scopegate's own authorization server, when the policy has `oauth:`
    upstream_identity: assertion.Settings | None = None  # the policy's `upstream_identity:`, with its keys

    def verifier(self, config: Config, session: aiohttp.ClientSession) -> JwtVerifier | None:
        if not self.issuers and self.oauth is None:
            return None
        trusted = []
        if self.oauth is not None:
            trusted.append(TrustedIssuer(own_issuer(self.oauth), self.oauth.keys, self.oauth.resource,
                                         grant_claim="gid"))
        for issuer in self.issuers:
            keys: KeySource
            if issuer.jwks_url:
                keys = JwksKeys(session, issuer.jwks_url, ttl=issuer.jwks_ttl_seconds,
                                refetch_interval=issuer.jwks_min_refetch_seconds)
            elif issuer.public_key_file:
                keys = StaticKey.from_pem_file(issuer.public_key_file)
            else:
                keys = StaticKey((self.dev_secret or "").encode())
            trusted.append(TrustedIssuer(issuer, keys, issuer.audience or str(config.public_url)))
        return JwtVerifier(trusted, self.policy)

    @property
    def authorization_servers(self) -> list[str]:
        own = [self.oauth.issuer] if self.oauth is not None else []
        return own + [i.issuer for i in self.issuers if i.kind == "oauth"]


def load_identity(config: Config, env: Mapping[str, str]) -> Identity:
    if not config.policy:
        raise ConfigError("SCOPEGATE_POLICY (or --policy) is required: without a policy nothing could be allowed "
                          "(examples in policies/)")
    try:
        policy = load_policy(config.policy)
    except PolicyError as exc:
        raise ConfigError(f"SCOPEGATE_POLICY: {exc}") from None
    try:
        registry = Registry(config.pat_file, policy) if config.pat_file else None
    except RegistryError as exc:
        raise ConfigError(f"SCOPEGATE_PAT_FILE: {exc}") from None

    issuers = list(policy.issuers)
    if config.jwt_issuer:
        if config.jwt_dev_hs256_secret:
            # model_construct: HS256 is deliberately not an algorithm a policy file may name.
            issuers.append(Issuer.model_construct(issuer=config.jwt_issuer, kind="oauth", jwks_url=None,
                                                  public_key_file=None, algorithms=("HS256",), audience=None,
                                                  role_claim="role", jwks_ttl_seconds=300.0,
                                                  jwks_min_refetch_seconds=30.0))
        else:
            issuers.append(Issuer(issuer=config.jwt_issuer, jwks_url=str(config.jwks_url) if config.jwks_url else None,
                                  public_key_file=config.jwt_public_key_file))
    for issuer in issuers:
        if issuer.audience is None and config.public_url is None:
            raise ConfigError(f"issuer {issuer.issuer}: tokens must name this proxy as their audience; set "
                              "SCOPEGATE_PUBLIC_URL (or the issuer's `audience`)")
        if issuer.public_key_file:
            try:
                StaticKey.from_pem_file(issuer.public_key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"issuer {issuer.issuer}: cannot load public key ({type(exc).__name__})") from None
    secret_headers = load_secret_headers(config.upstream_headers_file, env)
    missing = [name for name in policy.upstream_headers if name.lower() not in secret_headers]
    if missing:
        raise ConfigError(f"the policy needs server-side header {missing[0]} for the upstream: set "
                          f"SCOPEGATE_UPSTREAM_HEADER_{missing[0].upper().replace('-', '_')} or "
                          "SCOPEGATE_UPSTREAM_HEADERS_FILE")
    if registry is None and not issuers and policy.anonymous is None:
        raise ConfigError("no credential source: set SCOPEGATE_PAT_FILE, a JWT issuer (SCOPEGATE_JWT_ISSUER), or "
                          "issuers in the policy (or, for a public server, an `anonymous:` section); every request "
                          "must authenticate")
    oauth = own_server(config, policy, registry, issuers)
    return Identity(
        policy=policy,
        registry=registry,
        issuers=tuple(issuers),
        dev_secret=config.jwt_dev_hs256_secret,
        secret_headers=secret_headers,
        oauth=oauth,
        upstream_identity=upstream_identity(config, policy, oauth, secret_headers),
    )


def upstream_identity(config: Config, policy: Policy, oauth: Settings | None,
                      secret_headers: Mapping[str, str]) -> assertion.Settings | None:
    """None when the policy asks for no assertion. Its keys: SCOPEGATE_UPSTREAM_IDENTITY_KEYS, else the OAuth
    server's; none at all is an error (the policy asked for it: never forward without it)."""
    wanted = policy.upstream_identity
    if wanted is None:
        if config.token_exchange_client_secret_file:
            raise ConfigError("SCOPEGATE_TOKEN_EXCHANGE_CLIENT_SECRET_FILE is set but the policy has no "
                              "upstream_identity.token_exchange")
        if config.upstream_identity_keys:
            raise ConfigError("SCOPEGATE_UPSTREAM_IDENTITY_KEYS is set but the policy has no `upstream_identity:` "
                              "section")
        return None
    if config.public_url is None:
        raise ConfigError("the policy's upstream_identity needs SCOPEGATE_PUBLIC_URL: it is the assertions' `iss`")
    if config.upstream_command:
        raise ConfigError("the policy's upstream_identity is a header on each request to the upstream; a stdio server "
                          "(SCOPEGATE_UPSTREAM_COMMAND) reads none: front it with an HTTP server, or drop the section")
    if config.upstream_identity_keys:
        try:
            keys = KeyRing(load_keys(config.upstream_identity_keys))
        except KeyFileError as exc:
            raise ConfigError(f"SCOPEGATE_UPSTREAM_IDENTITY_KEYS: {exc}") from None
    elif oauth is not None:
        keys = oauth.keys
    else:
        raise ConfigError("the policy's upstream_identity needs a signing key: set SCOPEGATE_UPSTREAM_IDENTITY_KEYS "
                          "(or SCOPEGATE_OAUTH_SIGNING_KEYS with an `oauth:` section, whose keys it then shares)")
    problem = assertion.header_problem(wanted.header, secret_headers)
    if problem:
        raise ConfigError(f"{config.policy}: upstream_identity.header: {problem}")
    exchange = None
    if wanted.token_exchange is not None:
        trade = wanted.token_exchange
        secret = None
        if config.token_exchange_client_secret_file:
            try:
                with open(config.token_exchange_client_secret_file, encoding="utf-8") as handle:
                    secret = handle.read().strip() or None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"SCOPEGATE_TOKEN_EXCHANGE_CLIENT_SECRET_FILE: cannot read "
                                  f"({type(exc).__name__})") from None
        exchange = token_exchange.Settings(token_endpoint=trade.token_endpoint, client_id=trade.client_id,
                                           client_secret=secret, audience=trade.audience, resource=trade.resource,
                                           send_scopes=trade.send_scopes, subject_audience=trade.subject_audience)
    elif config.token_exchange_client_secret_file:
        raise ConfigError("SCOPEGATE_TOKEN_EXCHANGE_CLIENT_SECRET_FILE is set but the policy has no "
                          "upstream_identity.token_exchange")
    return assertion.Settings(keys=keys, issuer=str(config.public_url),
                              audience=wanted.audience or str(config.upstream), header=wanted.header.lower(),
                              ttl=wanted.ttl_seconds, reuse=wanted.reuse_seconds, exchange=exchange)


def own_server(config: Config, policy: Policy, registry: Registry | None, issuers: list[Issuer]) -> Settings | None:
    settings = settings_from(config, policy, registry)
    if settings is not None and any(i.issuer == settings.issuer for i in issuers):
        raise ConfigError(f"issuer {settings.issuer} is scopegate's own OAuth server: no other issuer may use it")
    return settings
