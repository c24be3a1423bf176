"""Rewriter: results on a need-to-know basis. A tool rule's `mask:` names fields of its `structuredContent` that
callers without a given scope see masked, at any depth, and the same values wherever they appear in the result's
text content (servers put the structured result there as JSON too). Masked, not dropped: a string stays a string
(`***`, or `***` and its last characters), so a client that validates the result against the tool's
`outputSchema` still accepts it; numbers, booleans and null under a masked name are left as they are (the fields
this is for, IBANs and e-mail addresses, are strings).

A result is recognised by its shape (a `result` holding `structuredContent` or `content`), wherever it travels.
Which tool it came from is known for an answer to a call of this very request (the scope guard notes the ids of
the calls it let through, when the policy masks anything); any other (a resumed stream, a task's result) gets every
mask whose scope the caller lacks.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from proxy.exchange import Exchange
from proxy.jsonrpc import Message
from proxy.policy.reload import LivePolicy

MASK = "***"


def masked(value: str, keep_last: int) -> str:
    """A masked string: nothing of it, or its last `keep_last` characters when it is long enough to hide the rest."""
    return MASK + value[-keep_last:] if keep_last and len(value) >= keep_last * 3 else MASK


def _all(value: Any, keep: int, seen: dict[str, str]) -> Any:
    if isinstance(value, str):
        shown = masked(value, keep)
        if len(value) >= 4:  # shorter values are too common in text to find them there
            seen[value] = shown
        return shown
    if isinstance(value, list):
        return [_all(item, keep, seen) for item in value]
    if isinstance(value, dict):
        return {k: _all(v, keep, seen) for k, v in value.items()}
    return value


def mask_structured(data: Any, fields: dict[str, int], seen: dict[str, str]) -> Any:
    """`data` with every value under one of `fields` masked (all the strings in it), at any depth; the original
    strings and what they became are added to `seen`. A new structure; `data` is not changed. Pure."""
    if isinstance(data, dict):
        return {k: _all(v, fields[k], seen) if k in fields else mask_structured(v, fields, seen)
                for k, v in data.items()}
    if isinstance(data, list):
        return [mask_structured(item, fields, seen) for item in data]
    return data


def mask_text(text: str, seen: dict[str, str]) -> str:
    """`text` with each masked value replaced wherever it appears, as written and as JSON escapes it. Pure."""
    for value in sorted(seen, key=len, reverse=True):  # a value inside a longer one goes after it
        shown = seen[value]
        text = text.replace(value, shown)
        escaped = orjson.dumps(value).decode()[1:-1]
        if escaped != value:
            text = text.replace(escaped, shown)
    return text


class NeedToKnow:
    def __init__(self, live: LivePolicy) -> None:
        self.live = live

    def idle(self, exchange: Exchange) -> bool:
        """Nothing to mask under this request's policy (the list filter's raw path may then skip this one)."""
        return not self.live.of(exchange).rules.masks

    def __call__(self, exchange: Exchange, response: Message, method: str | None) -> Message:
        rules = self.live.of(exchange).rules
        if not rules.masks:
            return response
        result = response.get("result")
        if type(result) is not dict or ("structuredContent" not in result and "content" not in result):
            return response
        tool = None
        if method == "tools/call" and exchange.called is not None:
            try:
                tool = exchange.called.get((type(response.get("id")).__name__, response.get("id")))
            except TypeError:  # an unhashable id: answers nothing of ours
                tool = None
        held = exchange.principal.scopes if exchange.principal is not None else frozenset()
        fields = rules.masked_fields(tool, held)
        if not fields:
            return response
        seen: dict[str, str] = {}
        result = dict(result)
        if "structuredContent" in result:
            result["structuredContent"] = mask_structured(result["structuredContent"], fields, seen)
        content = result.get("content")
        if isinstance(content, list):
            # What a text holds under these names is found by its JSON too (a result without structuredContent).
            for item in content:
                if isinstance(item, dict) and isinstance(item.get("text"), str):
                    with contextlib.suppress(orjson.JSONDecodeError):
                        mask_structured(orjson.loads(item["text"]), fields, seen)
            if seen:
                result["content"] = [{**item, "text": mask_text(item["text"], seen)}
                                     if isinstance(item, dict) and isinstance(item.get("text"), str) else item
                                     for item in content]
        return {**response, "result": result}
