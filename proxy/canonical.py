"""One canonical form of JSON arguments, and its digest: what a preview binds and an audit record carries.

Two argument objects that mean the same JSON value give the same digest (key order; `1.0`, `1` and `1e0`; `1e20`
and `100000000000000000000`, which orjson reads as the same double); the confirmation token itself is never part of
it. Digests of values that had a canonical form before (whole numbers within 64 bits) are unchanged, so previews
issued by an older build still confirm.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

TOKEN_ARGUMENT = "confirmationToken"
MAX_DEPTH = 200  # orjson serialises at most 254 levels; the edge refuses far less (SCOPEGATE_MAX_DEPTH)
_LOW, _HIGH = -(2**63), 2**64  # the integers orjson writes as integers


class NotCanonical(ValueError):
    """A value with no canonical JSON form: not finite, an integer no JSON double holds, too deep, not JSON."""


def canonical(value: Any, depth: int = 0) -> Any:
    """One form per meaning. A whole number is an int when orjson can write it as one, else the double it equals
    (the wire cannot tell them apart: orjson reads a literal past 64 bits as a double); keys are sorted on dump."""
    if type(value) is dict and depth < MAX_DEPTH:  # the common flat object of strings: nothing to change
        for key, item in value.items():
            if type(item) is not str or type(key) is not str:
                break
        else:
            return value
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotCanonical("a number that is not finite")
        if value.is_integer() and _LOW <= value < _HIGH:
            return int(value)
        return value
    if isinstance(value, int):
        if _LOW <= value < _HIGH:
            return value
        try:
            as_double = float(value)
        except OverflowError:
            raise NotCanonical("an integer past the range of a JSON double") from None
        if int(as_double) != value:
            raise NotCanonical("an integer past 64 bits that no JSON double holds exactly")
        return as_double
    if depth >= MAX_DEPTH:
        raise NotCanonical(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotCanonical("an object key that is not a string")
        return {k: canonical(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v, depth + 1) for v in value]
    raise NotCanonical(f"a {type(value).__name__}, not a JSON value")


def digest(arguments: dict[str, Any]) -> str:
    """SHA-256 of the canonical form without the confirmation token. Raises NotCanonical."""
    if TOKEN_ARGUMENT in arguments:
        arguments = {k: v for k, v in arguments.items() if k != TOKEN_ARGUMENT}
    body = orjson.dumps(canonical(arguments), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()
