"""The policy file as YAML with the position of every key and list item, so each problem names its line.

PyYAML composes a node tree that carries marks; `read` walks it once, recording `path -> (line, column)` and
refusing duplicate keys (PyYAML would silently keep the last one: a second `scopes:` would drop the first list
without a word), then builds plain data from the same tree. `report` turns (path, message) problems into
`file:line:column: dotted.path: message` lines, the form editors and CI annotate, one line per problem.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


class SourceError(Exception):
    """The file cannot be read as YAML at all, or repeats a key; one problem per line, each with its position."""


@dataclass(frozen=True)
class ValueMark:
    """Where a scalar value starts (1-based) and how it is written, so a position inside it maps to the file."""

    line: int
    column: int
    style: str | None  # None: plain; '"' or "'": quoted; '|' or '>': a block, whose text starts a line below
    indent: int = 0  # a block's: the column its text starts at

    def at(self, line: int, column: int) -> tuple[int, int]:
        """The file position of (line, column) within the value's text."""
        if self.style in ("|", ">"):
            return self.line + line, self.indent + column - 1
        if line > 1:
            return self.line + line - 1, column
        return self.line, self.column + column - 1 + (1 if self.style in ('"', "'") else 0)


@dataclass(frozen=True)
class Located:
    data: Any
    marks: dict[Loc, tuple[int, int]]  # 1-based line and column of each key and of each list item
    values: dict[Loc, ValueMark] = field(default_factory=dict)  # each scalar value's start and style

    def position(self, loc: Loc) -> tuple[int, int]:
        """Where `loc` is, or its nearest enclosing key (a missing key is reported where it belongs)."""
        for end in range(len(loc), -1, -1):
            found = self.marks.get(tuple(loc[:end]))
            if found is not None:
                return found
        return (1, 1)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _walk(node: yaml.Node, loc: Loc, marks: dict[Loc, tuple[int, int]], problems: list[tuple[Loc, str, Any]],
          values: dict[Loc, ValueMark], lines: list[str]) -> None:
    if isinstance(node, yaml.ScalarNode):
        line, column = _mark(node)
        indent = 0
        if node.style in ("|", ">") and line < len(lines):
            body = lines[line]  # the block's first line of text (0-based index: the line after the indicator)
            indent = len(body) - len(body.lstrip(" ")) + 1
        values[loc] = ValueMark(line, column, node.style, indent)
    elif isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else id(key)
            if name in first:
                problems.append(((*loc, name), f"duplicate key (first at line {first[name]}); a key may appear once",
                                 _mark(key)))
                continue
            first[name] = _mark(key)[0]
            marks[(*loc, name)] = _mark(key)
            _walk(value, (*loc, name), marks, problems, values, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            marks[(*loc, index)] = _mark(item)
            _walk(item, (*loc, index), marks, problems, values, lines)


def read(path: Path) -> Located:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not UTF-8 text") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Located(None, {})
        marks: dict[Loc, tuple[int, int]] = {(): _mark(node)}
        duplicates: list[tuple[Loc, str, Any]] = []
        values: dict[Loc, ValueMark] = {}
        _walk(node, (), marks, duplicates, values, text.splitlines())
        if duplicates:
            raise SourceError("\n".join(f"{path}:{line}:{column}: {_dotted(loc)}: {message}"
                                        for loc, message, (line, column) in duplicates))
        return Located(loader.construct_document(node), marks, values)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise SourceError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    finally:
        loader.dispose()


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def report(path: Path, located: Located, problems: list[Problem],
           at: dict[Loc, tuple[int, int]] | None = None) -> list[str]:
    """One line per problem, in file order; the same message at several places is one line naming them all. `at`:
    positions more exact than the key's (inside a value: where an expression goes wrong)."""
    grouped: dict[str, list[tuple[tuple[int, int], Loc]]] = {}
    for loc, message in problems:
        grouped.setdefault(message, []).append(((at or {}).get(loc) or located.position(loc), loc))
    lines = []
    for message, places in grouped.items():
        places.sort()
        (line, column), loc = places[0]
        also = sorted({where[0] for where, _ in places[1:]} - {line})
        more = f" (also at line{'s' if len(also) > 1 else ''} {', '.join(map(str, also))})" if also else ""
        lines.append(((line, column), f"{path}:{line}:{column}: {_dotted(loc)}: {message}{more}"))
    return [text for _, text in sorted(lines)]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _keys_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model accepts at `loc` (for did-you-mean)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def schema_problems(root: type[BaseModel], exc: ValidationError) -> list[Problem]:
    """pydantic's errors as (where, what) in the operator's words: unknown keys get a did-you-mean."""
    problems: list[Problem] = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            known = _keys_at(root, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"expected one of: {', '.join(known)}"
            problems.append((loc, f"unknown key `{loc[-1]}` ({hint})"))
        elif err["type"] == "missing":
            problems.append((loc, f"`{loc[-1]}` is required"))
        else:
            message = err["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
            message = message.replace("a valid tuple", "a list").replace("a valid dictionary", "a mapping")
            problems.append((loc, message))
    return problems
