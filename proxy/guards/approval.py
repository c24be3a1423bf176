"""Human approval of a held write, the pure part: the question put to the person, and what their answer means.

The question is an MCP elicitation in form mode: the preview in plain words (tool, workspace, arguments with
redactions, the upstream's own dry run) and one required boolean, `approve`. Only `accept` with `approve: true`
applies the write; everything else forwards nothing, each with its own reason for the audit trail.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from typing import Any, Literal

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.guards.confirmation import shown_as_json, visible

ELICIT_ID_PREFIX = "scopegate-approval-"  # ids of the proxy's own elicitation/create requests (2025-11-25)
STATE_PREFIX = "sga_"  # the proxy's requestState (2026-07-28): names a record in the store, single use
INPUT_KEY = "scopegate_approval"  # the proxy's key in inputRequests / inputResponses

APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approve": {"type": "boolean", "title": "Apply this change?",
                    "description": "Yes applies exactly the change shown, once. No changes nothing."},
    },
    "required": ["approve"],
}

Verdict = Literal["approved", "rejected", "cancelled", "unanswered"]


def new_handle(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def record_key(handle: str) -> str:
    return "scopegate:approval:" + hashlib.sha256(handle.encode()).hexdigest()


def answer_key(handle: str) -> str:
    return "scopegate:approval-answer:" + hashlib.sha256(handle.encode()).hexdigest()


def can_elicit(capabilities: Any) -> bool:
    """Whether a client's declared capabilities include form elicitation (`{}` means form, for older clients)."""
    if not isinstance(capabilities, dict):
        return False
    elicitation = capabilities.get("elicitation")
    if not isinstance(elicitation, dict):
        return False
    return not elicitation or isinstance(elicitation.get("form"), dict)


def can_open_urls(capabilities: Any) -> bool:
    """Whether a client's declared capabilities include URL-mode elicitation (it can send its person to a page)."""
    if not isinstance(capabilities, dict):
        return False
    elicitation = capabilities.get("elicitation")
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def question(tool: str, workspace: Any, shown: dict[str, Any], upstream_preview: Any, expires_in: int) -> str:
    """The preview in plain words, for a person. Every value a caller chose is quoted as escaped JSON."""
    where = f" in workspace {shown_as_json(workspace)}" if workspace else ""
    lines = [f"An agent asks to run {visible(tool)}{where}. Nothing has changed yet. It would run with:",
             shown_as_json(shown)]
    if upstream_preview is not None:
        lines += ["The service's own dry run says:", shown_as_json(upstream_preview)]
    lines.append(f"Approve to apply exactly this, once (within {expires_in} seconds). Decline to change nothing.")
    return "\n".join(lines)


def elicitation(text: str) -> dict[str, Any]:
    """`elicitation/create` params (form mode)."""
    return {"mode": "form", "message": text, "requestedSchema": APPROVAL_SCHEMA}


def verdict(answer: Any) -> Verdict:
    """What the person said, from the client's `ElicitResult` (or anything else a client sent in its place)."""
    if not isinstance(answer, dict):
        return "unanswered"
    action = answer.get("action")
    if action == "accept":
        content = answer.get("content")
        approve = content.get("approve") if isinstance(content, dict) else None
        if approve is True:
            return "approved"
        return "rejected" if approve is False else "unanswered"
    if action == "decline":
        return "rejected"
    if action == "cancel":
        return "cancelled"
    return "unanswered"


def _carry_key(handle: str) -> AESGCM:
    # The handle is 256 random bits the store never sees (it keeps only its hash): a key only its bearer can make.
    return AESGCM(hashlib.sha256(b"scopegate/approval-carry:" + handle.encode()).digest())


def seal_carry(handle: str, value: Any) -> str:
    """What must travel with an approval (an upstream's own round: its requestState and the client's answers to
    it), encrypted so that the store holds nothing readable without the handle the client brings back."""
    nonce = os.urandom(12)
    return base64.b64encode(nonce + _carry_key(handle).encrypt(nonce, orjson.dumps(value), None)).decode()


def open_carry(handle: str, sealed: str) -> Any:
    raw = base64.b64decode(sealed)
    return orjson.loads(_carry_key(handle).decrypt(raw[:12], raw[12:], None))
