"""Preview-first writes, the pure part: tokens, previews, and the binding check.

A preview is bound to who asked (credential id, subject, kind), where (session), what (tool, workspace) and exactly
which arguments (a digest of their canonical form). Only a hash of the token names it in the store.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import orjson

from proxy.canonical import TOKEN_ARGUMENT

TOKEN_PREFIX = "sgc_"
REDACTED = "***"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def store_key(token: str) -> str:
    return "scopegate:preview:" + hashlib.sha256(token.encode()).hexdigest()


def used_key(token: str) -> str:
    return "scopegate:preview-used:" + hashlib.sha256(token.encode()).hexdigest()


def redacted(arguments: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: (REDACTED if k in names else v) for k, v in arguments.items() if k != TOKEN_ARGUMENT}


def binding_problem(preview: dict[str, Any], now: float, *, credential_id: str, subject: str, kind: str,
                    session: str, tool: str, workspace: Any, digest: str) -> tuple[str, str | None]:
    """(code, why) this call may not use this preview; ("", None) when every binding holds. Pure."""
    if preview["expires"] <= now:
        return "expired", "the confirmation token has expired: call the tool again without it for a new preview"
    if (preview["credential_id"], preview["subject"], preview["kind"]) != (credential_id, subject, kind):
        return "credential", "the confirmation token was issued to another credential"
    if preview["session"] != session:
        return "session", "the confirmation token was issued in another session"
    if preview["tool"] != tool:
        return "tool", f"the confirmation token was issued for {preview['tool']}, not {tool}"
    if preview["workspace"] != workspace:
        return "workspace", (f"the confirmation token was issued for workspace {preview['workspace']!r}, "
                             f"not {workspace!r}")
    if preview["digest"] != digest:
        return "arguments", ("the arguments differ from the previewed ones: call again without the token for a "
                             "new preview")
    return "", None


def describe(tool: str, workspace: Any, shown: dict[str, Any], expires_in: int, upstream_preview: Any) -> str:
    """The preview in plain words: what would change, and how to confirm."""
    where = f" in workspace {workspace}" if workspace else ""
    lines = [f"Nothing has changed yet. {tool} would run{where} with these arguments:",
             orjson.dumps(shown, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()]
    if upstream_preview is not None:
        lines += ["The service's own dry run says:",
                  orjson.dumps(upstream_preview, option=orjson.OPT_INDENT_2).decode()]
    lines.append(f"To apply exactly this, call {tool} again with the same arguments plus {TOKEN_ARGUMENT} (from "
                 f"structuredContent) within {expires_in} seconds. The token works once.")
    return "\n".join(lines)
