"""From configuration to the OAuth server's Settings, once, before anything listens; every problem a ConfigError."""

from __future__ import annotations

import logging

from proxy.config import Config, ConfigError
from proxy.identity.oauth.clients import Client, redirect_uri_problem
from proxy.identity.oauth.keys import ALGORITHMS, KeyFileError, KeyRing, load_keys
from proxy.identity.oauth.oidc import OidcSettings, issuer_problem
from proxy.identity.oauth.server import BASE, Settings
from proxy.identity.pats import Registry
from proxy.identity.principal import matches_any
from proxy.policy.model import Issuer, Policy

log = logging.getLogger("scopegate.oauth")


def settings_from(config: Config, policy: Policy, registry: Registry | None) -> Settings | None:
    """None when the server is off. On takes both halves: the policy's `oauth:` section (what may be granted, for
    this system) and this deployment's signing key. A section without a key leaves it off, which refuses more,
    never less, and says so; a key without a section is a mistake."""
    oauth = policy.oauth
    if oauth is None:
        if config.oauth_signing_keys:
            raise ConfigError("SCOPEGATE_OAUTH_SIGNING_KEYS is set but the policy has no `oauth:` section")
        return None
    if not config.oauth_signing_keys:
        log.warning("the policy has an `oauth:` section but SCOPEGATE_OAUTH_SIGNING_KEYS is unset: scopegate's "
                    "OAuth server is off")
        return None
    if config.public_url is None:
        raise ConfigError("SCOPEGATE_OAUTH_SIGNING_KEYS needs SCOPEGATE_PUBLIC_URL: it is the tokens' audience "
                          "and the authorization server's address")
    try:
        keys = load_keys(config.oauth_signing_keys)
    except KeyFileError as exc:
        raise ConfigError(f"SCOPEGATE_OAUTH_SIGNING_KEYS: {exc}") from None
    if registry is None and set(oauth.sign_in) & {"pat", "admin_key"}:
        raise ConfigError("scopegate's OAuth server signs people in with their PAT or admin key: set "
                          "SCOPEGATE_PAT_FILE")
    clients = []
    for index, client in enumerate(oauth.clients):
        for uri in client.redirect_uris:
            problem = redirect_uri_problem(uri)
            if problem:
                raise ConfigError(f"{config.policy}: oauth.clients.{index}.redirect_uris: {problem}")
        links = tuple((what, uri) for what, uri in (("Homepage", client.client_uri), ("Terms", client.tos_uri),
                                                    ("Privacy", client.policy_uri)) if uri)
        clients.append(Client(client.client_id, client.client_name, client.redirect_uris,
                              "pre-registered in this server's policy", preregistered=True, links=links))
    oidc = None
    if oauth.oidc is None and config.oidc_client_secret_file:
        raise ConfigError("SCOPEGATE_OIDC_CLIENT_SECRET_FILE is set but the policy has no oauth.oidc section")
    if oauth.oidc is not None:
        problem = issuer_problem(oauth.oidc.issuer)
        if problem:
            raise ConfigError(f"{config.policy}: oauth.oidc.issuer: {problem}")
        secret = None
        if config.oidc_client_secret_file:
            try:
                with open(config.oidc_client_secret_file, encoding="utf-8") as handle:
                    secret = handle.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"SCOPEGATE_OIDC_CLIENT_SECRET_FILE: cannot read ({type(exc).__name__})") from None
        oidc = OidcSettings(issuer=oauth.oidc.issuer, client_id=oauth.oidc.client_id, name=oauth.oidc.name,
                            scopes=oauth.oidc.scopes, subject_claim=oauth.oidc.subject_claim,
                            role_claim=oauth.oidc.role_claim, roles=tuple(oauth.oidc.roles.items()),
                            client_secret=secret or None)
    offered = oauth.scopes or tuple(s for s in policy.scopes if not matches_any(s, policy.oauth_excluded_scopes))
    public = config.public_url
    return Settings(
        issuer=f"{public.origin()}{BASE}", resource=str(public), keys=KeyRing(keys), offered=offered,
        known=policy.scopes, excluded=policy.oauth_excluded_scopes, clients=tuple(clients),
        dynamic_registration=oauth.dynamic_registration, sign_in=oauth.sign_in,
        metadata_documents=oauth.client_id_metadata_documents, oidc=oidc,
        roles=tuple((role, tuple(scopes)) for role, scopes in policy.roles.items()),
        access_ttl=oauth.access_token_ttl_seconds, refresh_ttl=oauth.refresh_token_ttl_seconds,
        grant_lifetime=oauth.grant_lifetime_seconds, grants_per_person=oauth.max_grants_per_person,
        service_name=policy.title or policy.name or "this service", scope_words=scope_words(policy),
    )


def scope_words(policy: Policy) -> tuple[tuple[str, str | None, str | None, tuple[str, ...]], ...]:
    """Pure: each scope's title and description from the policy, and the tool rules that need it (what ticking
    it is for)."""
    needed: dict[str, list[str]] = {}
    for rule in policy.tools:
        for scope in rule.scopes:
            needed.setdefault(scope, []).append(rule.match)
    out = []
    for scope in policy.scopes:
        info = policy.scope_info.get(scope)
        out.append((scope, info.title if info else None, info.description if info else None,
                    tuple(needed.get(scope, ()))))
    return tuple(out)


def own_issuer(settings: Settings) -> Issuer:
    """The verifier's view of this server: an issuer of kind oauth, so exclusions and role ceilings apply."""
    # model_construct: no key file or JWKS URL; the keys are in memory (Settings.keys is the KeySource).
    return Issuer.model_construct(issuer=settings.issuer, kind="oauth", jwks_url=None, public_key_file=None,
                                  algorithms=ALGORITHMS, audience=settings.resource, role_claim="role",
                                  jwks_ttl_seconds=300.0, jwks_min_refetch_seconds=30.0)
