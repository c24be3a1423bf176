"""Preview-first writes, the pure part: tokens, previews, and the binding check.

A preview is bound to who asked (credential id, subject, kind), where (session), what (tool, workspace) and exactly
which arguments (a digest of their canonical form). Only a hash of the token names it in the store.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from proxy.canonical import TOKEN_ARGUMENT
from proxy.shown import shown_as_json, visible

TOKEN_PREFIX = "sgc_"
REDACTED = "***"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def store_key(token: str) -> str:
    return "scopegate:preview:" + hashlib.sha256(token.encode()).hexdigest()


def pending_key(kind: str, credential_id: str) -> str:
    """One credential's pending previews (a bounded set in the store)."""
    return f"scopegate:pending:{kind}:{credential_id}"


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
    """The preview in plain words: what would change, and how to confirm. Every value a caller (or the upstream's
    dry run) chose is quoted as escaped JSON, so the text says exactly what the write will do and nothing else."""
    where = f" in workspace {shown_as_json(workspace)}" if workspace else ""
    lines = [f"Nothing has changed yet. {visible(tool)} would run{where} with these arguments:", shown_as_json(shown)]
    if upstream_preview is not None:
        lines += ["The service's own dry run says:", shown_as_json(upstream_preview)]
    lines.append(f"To apply exactly this, call {visible(tool)} again with the same arguments plus {TOKEN_ARGUMENT} "
                 f"(from structuredContent) within {expires_in} seconds. The token works once.")
    return "\n".join(lines)


# What a held call's answer looks like, for clients that check structured results against the tool's outputSchema.
PREVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Confirmation required (nothing changed yet)",
    "properties": {
        "status": {"const": "confirmation_required"},
        "preview": {"type": "object"},
        TOKEN_ARGUMENT: {"type": "string"},
        "expiresAt": {"type": "string"},
    },
    "required": ["status", "preview"],
}
_LITERALS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas: their "$ref" keys are data


def _rebase(node: Any, base: str) -> Any:
    """Local `$ref`s ("#/$defs/X", "#") re-pointed at the schema's new place under `base`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                out[key] = base + value[1:]
            else:
                out[key] = value if key in _LITERALS else _rebase(value, base)
        return out
    if isinstance(node, list):
        return [_rebase(v, base) for v in node]
    return node


def with_preview(schema: Any) -> Any:
    """The tool's outputSchema widened to accept a preview too: `{type: object, anyOf: [own, preview]}`.

    MCP wants `type: object` at the top, so the choice goes one level down; local `$ref`s follow the own schema there
    (unless it names its own `$id`, which keeps them relative to itself). The own top-level `properties` are repeated
    at the top (minus the preview's own names), so clients that read them there (fastmcp unwraps `result`) still can.
    A tool without an outputSchema needs nothing: any structured content is acceptable then.
    """
    if not isinstance(schema, dict):
        return schema
    own = {k: v for k, v in schema.items() if k != "$schema"}
    rebased = "$id" not in own
    if rebased:
        own = _rebase(own, "#/anyOf/0")
    widened: dict[str, Any] = {"type": "object", "anyOf": [own, PREVIEW_SCHEMA]}
    if "$schema" in schema:
        widened["$schema"] = schema["$schema"]
    if rebased and isinstance(own.get("properties"), dict):  # (under an own $id, their $refs would not resolve here)
        widened["properties"] = {k: v for k, v in own["properties"].items() if k not in PREVIEW_SCHEMA["properties"]}
    return widened
