"""One canonical form of JSON arguments, and its digest: what a preview binds and an audit record carries.

Two argument objects that mean the same thing (key order, `1.0` vs `1`) give the same digest; the confirmation token
itself is never part of it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

TOKEN_ARGUMENT = "confirmationToken"


def canonical(value: Any) -> Any:
    """One form per meaning: integral floats become ints (1.0 and 1 are the same amount); keys are sorted on dump."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def digest(arguments: dict[str, Any]) -> str:
    body = orjson.dumps(canonical({k: v for k, v in arguments.items() if k != TOKEN_ARGUMENT}),
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()
