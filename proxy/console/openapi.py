"""The admin API's OpenAPI 3.1 document (served at /admin/api/openapi.json). Written by hand, beside the handlers
in api.py; tests/test_console_api.py checks that every route is described and every described route exists."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "refused or malformed: `error` says why",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_COMMON = {"401": _ERROR, "403": _ERROR, "503": _ERROR}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _op(summary: str, ok: str, *, body: str | None = None, params: list[dict[str, Any]] | None = None,
        status: str = "200", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: {"description": "done", **_json(ok)},
                                                            **_COMMON, **(extra or {})}}
    if body:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_STRINGS = {"type": "array", "items": {"type": "string"}}
_NULLABLE_STRINGS = {"type": ["array", "null"], "items": {"type": "string"}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "scopegate admin API", "version": "1",
                 "description": "Credentials, activity and access of one scopegate. Authenticate with an admin key "
                                "(`Authorization: Bearer sgk_...`), or a browser sign-in session plus "
                                "`X-CSRF-Token` on POSTs. Administrators only."},
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"},
                                "session": {"type": "apiKey", "in": "cookie", "name": "scopegate_session"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "Credential": {"type": "object", "required": ["id", "kind", "label", "subject", "status"],
                               "properties": {
                                   "id": {"type": "string"}, "kind": {"enum": ["pat", "admin_key", "oauth"]},
                                   "origin": {"enum": ["file", "runtime", "consent"]}, "label": {"type": "string"},
                                   "subject": {"type": "string"}, "scopes": _STRINGS,
                                   "workspace": {"type": ["string", "null"]}, "workspaces": _NULLABLE_STRINGS,
                                   "projects": _NULLABLE_STRINGS, "capabilities": _STRINGS,
                                   "role": {"type": ["string", "null"]}, "parent": {"type": ["string", "null"]},
                                   "client": {"type": ["object", "null"]},
                                   "created": {"type": ["string", "null"], "format": "date-time"},
                                   "expires": {"type": ["string", "null"], "format": "date-time"},
                                   "last_used": {"type": ["string", "null"], "format": "date-time"},
                                   "status": {"enum": ["active", "expired", "revoked"]},
                                   "revoked": {"type": ["object", "null"], "description": "at, by, reason, ended"},
                                   "rotated": {"type": ["object", "null"]}}},
                "CredentialList": {"type": "object", "properties": {
                    "credentials": {"type": "array", "items": {"$ref": "#/components/schemas/Credential"}}}},
                "Create": {"type": "object", "required": ["label"], "properties": {
                    "kind": {"enum": ["pat", "admin_key"]}, "label": {"type": "string"},
                    "subject": {"type": "string", "description": "default: yourself"}, "scopes": _STRINGS,
                    "workspace": {"type": "string"}, "workspaces": _STRINGS, "projects": _STRINGS,
                    "role": {"type": "string"}, "expires": {"type": "string", "description": "30d, 12h, never"}}},
                "Issued": {"type": "object", "properties": {
                    "credential": {"$ref": "#/components/schemas/Credential"},
                    "token": {"type": "string", "description": "shown once, never stored"}}},
                "Rotate": {"type": "object", "properties": {
                    "grace": {"type": "string", "description": "how long the old secret still works: 1h, 0"}}},
                "Revoke": {"type": "object", "properties": {
                    "dry_run": {"type": "boolean", "description": "true: only say what would end"}}},
                "Revoked": {"type": "object", "properties": {"would_end": {"type": "array"},
                                                             "revoked": {"type": "object"},
                                                             "credential": {"type": ["object", "null"]}}},
                "Activity": {"type": "object", "properties": {
                    "records": {"type": "array", "items": {"type": "object", "properties": {
                        "record": {"type": "object"}, "status": {"enum": ["sealed", "unsealed", "broken"]}}}},
                    "verified_with": {"type": "string"}}},
                "Verify": {"type": "object", "properties": {"public_key": {"type": "string",
                                                                           "description": "Ed25519, PEM"}}},
                "Report": {"type": "object", "properties": {"whole": {"type": "boolean"},
                                                            "records": {"type": "integer"},
                                                            "chains": {"type": "integer"}, "problems": _STRINGS,
                                                            "notes": _STRINGS, "head": _STRINGS}},
                "AccessQuery": {"type": "object", "properties": {
                    "credential": {"type": "string"}, "scopes": _STRINGS, "workspace": {"type": "string"}}},
                "Access": {"type": "object", "properties": {
                    "scopes": _STRINGS, "tools": {"type": "array"}, "prompts": {"type": "array"},
                    "resources": {"type": "array"}, "resourceTemplates": {"type": "array"}}},
            }},
        "security": [{"adminKey": []}, {"session": []}],
        "paths": {
            "/admin/api/credentials": {
                "get": _op("every PAT, admin key and OAuth grant", "CredentialList",
                           params=[_q("q", "search id, label, person, client"), _q("kind", "pat, admin_key, oauth"),
                                   _q("status", "active, expired, revoked"), _q("subject", "one person")]),
                "post": _op("create a PAT or admin key (within your own credential's reach)", "Issued",
                            body="Create", status="201")},
            "/admin/api/credentials/{id}/rotate": {
                "post": {**_op("a new secret; the old one works for the grace period", "Issued", body="Rotate"),
                         "parameters": _ID}},
            "/admin/api/credentials/{id}/revoke": {
                "post": {**_op("revoke it and what was signed in with it (dry_run: only list)", "Revoked",
                               body="Revoke"), "parameters": _ID}},
            "/admin/api/activity": {
                "get": _op("search the audit trail", "Activity",
                           params=[_q("subject", "person"), _q("credential", "credential id"),
                                   _q("tool", "tool, prompt or resource"), _q("workspace", "workspace"),
                                   _q("decision", "allow, deny, preview, ..."), _q("since", "2026-01-02T03:04"),
                                   _q("until", "2026-01-02T03:04"), _q("limit", "at most 500")])},
            "/admin/api/activity/verify": {"post": _op("verify the whole trail", "Report", body="Verify")},
            "/admin/api/access": {"post": _op("what a credential or scope set would see and meet", "Access",
                                              body="AccessQuery")},
        },
    }
