"""Per-credential budgets of concurrent upstream work, so one credential cannot use up what every other needs.

Two budgets, one per class of work: long-lived GET streams and calls (POST, DELETE). A request over its
credential's budget is answered 429 with Retry-After at once, before anything is sent upstream. The counts live in
this process only: a limit per replica, which is what protects the replica's upstream connections.
"""

from __future__ import annotations


class Budget:
    """At most `limit` concurrent holds per key. Memory is one entry per key holding something now."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        held = self._held.get(key, 0)
        if held >= self.limit:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)
