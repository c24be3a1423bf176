"""Bounded memos of decisions over values clients choose (Host headers, header names, tool names, session ids)."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """`memo[key] = value`, the memo started over once it holds `limit` entries: whatever a client sends, it cannot
    grow past the bound, and after a flood of junk keys the real ones are remembered again at once."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value
