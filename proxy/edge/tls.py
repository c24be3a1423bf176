"""TLS at the edge: HTTPS only, TLS 1.2 or newer; with a client CA, client certificates are required (mTLS)."""

from __future__ import annotations

import ssl

from proxy.config import Config, ConfigError


def server_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca is not None:
            context.load_verify_locations(cafile=config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"SCOPEGATE_TLS_*: cannot load the certificate, key or CA ({exc.__class__.__name__}: "
                          f"{getattr(exc, 'reason', None) or exc})") from None
    return context
