"""Server-rendered pages (Jinja2, autoescaped; no JavaScript) and the headers every page carries.

The CSP allows nothing but our own stylesheet and forms posting to ourselves; a form that redirects on to a client
(the consent form) also names that client's redirect origin, because browsers apply `form-action` to redirects;
that origin is serialised from the redirect URI's parsed parts (uris.py), never copied from its text.
`frame-ancestors 'none'` (and X-Frame-Options for old browsers) stops clickjacking of the consent button.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.identity.oauth.uris import Uri

TEMPLATES = Path(__file__).resolve().parent / "templates"


@cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def security_headers(form_target: Uri | None = None) -> dict[str, str]:
    # The client's source is serialised from a parsed, validated URI (scheme://host[:port] or scheme:), never
    # copied from its text: a `;` or a space there would end the directive and start one of the client's choosing.
    form_action = "'self'" if form_target is None else f"'self' {form_target.csp_source}"
    return {
        "Content-Security-Policy": f"default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; "
                                   "frame-ancestors 'none'; base-uri 'none'",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # same-origin, not no-referrer: under no-referrer browsers send `Origin: null` on our own form posts,
        # which the Origin check must refuse; nothing leaks to other sites either way.
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def render(name: str, *, status: int = 200, form_target: Uri | None = None, headers: dict[str, str] | None = None,
           **context: Any) -> web.Response:
    body = _environment().get_template(name).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                        headers={**security_headers(form_target), **(headers or {})})


def stylesheet() -> web.Response:
    return web.Response(body=(TEMPLATES / "style.css").read_bytes(), content_type="text/css",
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})
