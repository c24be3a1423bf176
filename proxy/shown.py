"""Values as a person reads them, with nothing hidden: every character that changes how text reads without being
read is written as an escape. Used wherever a caller's or an upstream's value is shown: previews, questions, the
approval page."""

from __future__ import annotations

import unicodedata
from typing import Any

import orjson

# What changes how text reads without being read: controls, format characters (bidi embeddings, overrides and
# isolates, zero-width characters), line and paragraph separators, spaces other than the plain one, and code points
# that are private, lone surrogates or unassigned. Shown escaped, a caller's value cannot reorder, hide or forge text.
_HIDDEN = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"})


def _escaped(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:  # as a JSON surrogate pair, so escaped JSON stays JSON
        high, low = divmod(code - 0x10000, 0x400)
        return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
    return f"\\u{code:04x}"


def visible(text: str, keep: str = " ") -> str:
    """`text` with every character that is not plainly visible written as a `\\uXXXX` escape. Pure."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch if ch in keep or unicodedata.category(ch) not in _HIDDEN else _escaped(ch) for ch in text)


def shown_as_json(value: Any) -> str:
    """A value as JSON, every string in it escaped: newlines stay layout, never content."""
    return visible(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(), keep=" \n")
