"""What the upstream's own `tools/list` results said about each tool, learned as lists pass through the proxy.

- `readOnlyHint` feeds `default: annotations` (where the policy delegates to it and no rule speaks); before any
  list was seen, a tool has no hint and counts as a write;
- the top-level input properties, and the `x-mcp-header` token of each, tell which tools take a workspace
  argument and which header mirrors it (2026-07-28).
Every list overwrites what an earlier one said about its tools, and `notifications/tools/list_changed` from the
upstream forgets it all until the next list (then the policy alone decides, as before any list was seen).
Bounded: a misbehaving upstream cannot grow it.
"""

from __future__ import annotations

from typing import Any

LIMIT = 20_000


class Catalog:
    def __init__(self) -> None:
        self.read_only: dict[str, bool] = {}
        self.properties: dict[str, dict[str, str | None]] = {}  # tool -> {property: x-mcp-header token or None}

    def learn(self, tools: list[Any]) -> None:
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(name := tool.get("name"), str):
                continue
            if name not in self.read_only and len(self.read_only) >= LIMIT:
                continue
            annotations = tool.get("annotations")
            self.read_only[name] = annotations.get("readOnlyHint") is True if isinstance(annotations, dict) else False
            schema = tool.get("inputSchema")
            props = schema.get("properties") if isinstance(schema, dict) else None
            self.properties[name] = {
                prop: (spec.get("x-mcp-header") if isinstance(spec.get("x-mcp-header"), str) else None)
                for prop, spec in (props.items() if isinstance(props, dict) else ())
                if isinstance(spec, dict)
            }

    def read_only_hint(self, name: str) -> bool | None:
        return self.read_only.get(name)

    def forget(self) -> None:
        self.read_only = {}
        self.properties = {}
