"""scopegate's own OAuth 2.1 authorization server, on when the policy has an `oauth:` section.

It lives in identity because what it makes is credentials: its access tokens come back through the same verifier
(`identity/jwt_auth.py`) as an issuer of kind oauth, so role ceilings and `oauth_excluded_scopes` apply to them
like to any other, and its grants are revoked through the same store key PATs use. One module per concern:
keys (signing, JWKS), clients (pre-registered, RFC 7591), cimd (Client ID Metadata Documents, SSRF guard),
authorization (pure checks of requests and consent), grants (codes, refresh families, revocation in the store),
sessions (browser sign-in, CSRF), oidc (sign-in through the organisation's provider), pages (Jinja2 and the
security headers), browser (authorize, sign-in, consent), connected_apps, server (metadata, token, register,
revoke), evidence (OAuth events into the audit trail), setup (configuration).
May import the policy model, identity's own modules and the base; never guards, the edge or ops.
"""
