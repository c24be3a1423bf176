"""What the upstream's own `tools/list` results said about each tool, learned as lists pass through the proxy.

Only hints: `readOnlyHint` feeds `default: annotations` (where the policy delegates to it and no rule speaks).
Before any list was seen, a tool has no hint and counts as a write. Bounded: a misbehaving upstream cannot grow it.
"""

from __future__ import annotations

from typing import Any

LIMIT = 20_000


class Catalog:
    def __init__(self) -> None:
        self.read_only: dict[str, bool] = {}

    def learn(self, tools: list[Any]) -> None:
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                continue
            annotations = tool.get("annotations")
            hint = annotations.get("readOnlyHint") is True if isinstance(annotations, dict) else False
            if tool["name"] in self.read_only or len(self.read_only) < LIMIT:
                self.read_only[tool["name"]] = hint

    def read_only_hint(self, name: str) -> bool | None:
        return self.read_only.get(name)
