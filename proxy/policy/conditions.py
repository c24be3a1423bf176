"""Conditions on rules: CEL expressions over the call, compiled once at load, evaluated per call. Pure.

A rule's `conditions:` each say what becomes of a call when the expression holds: `deny` it, hold it for a `token`
confirmation, or for a `human`'s approval; always with a reason the caller reads. They can only make a rule
stricter: of those that hold, the strictest decides (deny, then human, then token). An expression that cannot be
evaluated for this call (a missing field, a wrong type, a result that is not a bool) denies it, saying why.

What an expression may read (nothing else compiles):
- `args`: the call's arguments, as the client sent them (a prompt's arguments; a resource read has none);
- `principal`: `subject`, `kind`, `scopes` (a list), `workspace` (the credential's bound or default workspace, ""
  when none), `role` ("" when none), `client` (the OAuth client, "" when none), `credential` (its id);
- `now`: the time of the call, a UTC timestamp (`now.getHours()` is the UTC hour);
- `name`: the tool or prompt name, or the resource URI.

The library is the Rust `cel` crate's bindings (PyPI common-expression-language): a compiled expression runs in
well under a microsecond once its variables are converted, so the cost is in the conversion; only what an
expression reads is converted (the members of `args` it names, `principal` and `now` only when named).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import cel

Then = Literal["token", "human", "deny"]
STRENGTH: dict[str, int] = {"token": 1, "human": 2, "deny": 3}
VARIABLES = ("args", "principal", "now", "name")
PRINCIPAL_FIELDS = ("subject", "kind", "scopes", "workspace", "role", "client", "credential")
# The library's functions this proxy's tests show working; any other name fails at run time, so it is refused at
# load instead (operators appear as `_>_`, `!_`, `@...` and are the parser's business).
FUNCTIONS = frozenset({
    "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string", "bytes",
    "timestamp", "duration", "type", "dyn", "has", "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    "getDayOfWeek", "getDayOfMonth", "getDayOfYear", "getMonth", "getFullYear", "getDate",
})
_STRING = re.compile(
    r'[rR]?(?:"""(?:\\.|[^\\])*?"""'  # triple-quoted
    r"|'''(?:\\.|[^\\])*?'''"
    r'|"(?:\\.|[^"\\\n])*"'  # quoted
    r"|'(?:\\.|[^'\\\n])*')")
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_POSITION = re.compile(r"<input>:(\d+):(\d+): ([^\n]*)")


class ConditionError(Exception):
    """An expression that cannot be a condition: where in it (1-based line and column) and why."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"{message} (expression line {line}, column {column})")
        self.line, self.column, self.message = line, column, message


@dataclass(frozen=True, slots=True)
class Condition:
    where: str  # `tools[3].conditions[0]`: how reasons and metrics name it
    source: str
    then: Then
    reason: str
    program: Any  # cel.Program
    uses: frozenset[str]  # which of VARIABLES it reads
    arg_names: tuple[str, ...] | None  # the members of `args` it reads; None: it reads `args` whole


class Verdict(NamedTuple):  # made only when a condition decides
    condition: Condition
    then: Then
    failure: str | None  # why it could not be evaluated; None: it held

    @property
    def reason(self) -> str:
        if self.failure is not None:
            return f"condition {self.condition.where} could not be evaluated for this call ({self.failure})"
        return self.condition.reason


def _blank_strings(source: str) -> str:
    """The source with string literals' contents blanked (same length): names inside strings are not names."""
    return _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', source)


def _line_column(source: str, offset: int) -> tuple[int, int]:
    before = source[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def compile_condition(source: str, then: Then, reason: str, where: str) -> Condition:
    """The condition, compiled; ConditionError naming the line and column within `source` of what is wrong."""
    try:
        program = cel.compile(source)
    except Exception as exc:  # the library raises ValueError with the parser's own positions
        found = _POSITION.search(str(exc))
        if found is None:
            raise ConditionError(1, 1, f"does not compile: {str(exc).splitlines()[0][:200]}") from None
        raise ConditionError(int(found.group(1)), int(found.group(2)),
                             f"does not compile: {found.group(3).strip()[:200]}") from None
    plain = _blank_strings(source)
    bound = set(_BOUND.findall(plain))
    for variable in program.variables():
        if variable not in VARIABLES and variable not in bound:
            raise ConditionError(*_first(plain, variable), f"unknown name {variable!r}: a condition reads "
                                 f"{', '.join(VARIABLES)}")
    for function in program.functions():
        if not function.startswith(("_", "!", "@")) and function not in FUNCTIONS:
            raise ConditionError(*_first(plain, function), f"unknown function {function!r}")
    for found in re.finditer(r"(?<![\w.])principal\s*\.\s*([A-Za-z_]\w*)", plain):
        if found.group(1) not in PRINCIPAL_FIELDS:
            raise ConditionError(*_line_column(source, found.start(1)), f"principal has no field "
                                 f"{found.group(1)!r} (it has {', '.join(PRINCIPAL_FIELDS)})")
    uses = frozenset(v for v in program.variables() if v in VARIABLES)
    return Condition(where, source, then, reason, program, uses, _arg_names(plain))


def _first(plain: str, name: str) -> tuple[int, int]:
    found = re.search(rf"(?<![\w]){re.escape(name)}\b", plain)
    return _line_column(plain, found.start()) if found else (1, 1)


def _arg_names(plain: str) -> tuple[str, ...] | None:
    """The members of `args` an expression reads, when it reads it only as `args.member`; None when it reads it
    any other way (`args[k]`, `"k" in args`, `size(args)`): then the whole of it is converted."""
    names: list[str] = []
    for found in re.finditer(r"(?<![\w.])args\b", plain):
        member = re.match(r"\s*\.\s*([A-Za-z_]\w*)", plain[found.end():])
        if member is None:
            return None
        if member.group(1) not in names:
            names.append(member.group(1))
    return tuple(names)


def variables(conditions: tuple[Condition, ...], args: Mapping[str, Any], principal: Mapping[str, Any] | None,
              name: str, now: float) -> dict[str, Any]:
    """What these conditions read, and only that."""
    uses: set[str] = set()
    names: set[str] | None = set()
    for condition in conditions:
        uses |= condition.uses
        if names is not None and "args" in condition.uses:
            names = None if condition.arg_names is None else names | set(condition.arg_names)
    out: dict[str, Any] = {}
    if "args" in uses:
        out["args"] = dict(args) if names is None else {k: args[k] for k in names if k in args}
    if "principal" in uses:
        out["principal"] = dict(principal or {})
    if "now" in uses:
        out["now"] = datetime.fromtimestamp(now, UTC)
    if "name" in uses:
        out["name"] = name
    return out


def judge(conditions: tuple[Condition, ...], args: Mapping[str, Any], principal: Mapping[str, Any] | None,
          name: str, now: float) -> Verdict | None:
    """The strictest condition that holds for this call (None: none does); one that cannot be evaluated denies."""
    try:
        context = cel.Context(variables(conditions, args, principal, name, now))
    except Exception as exc:  # a value CEL cannot hold (a float NaN key, a huge int in a list, ...)
        return Verdict(conditions[0], "deny", _why(exc))
    strongest: Verdict | None = None
    for condition in conditions:
        try:
            holds = condition.program.execute(context)
        except Exception as exc:
            return Verdict(condition, "deny", _why(exc))
        if holds is not True and holds is not False:
            return Verdict(condition, "deny", f"it gave {type(holds).__name__}, not a bool")
        if holds and (strongest is None or STRENGTH[condition.then] > STRENGTH[strongest.then]):
            strongest = Verdict(condition, condition.then, None)
            if condition.then == "deny":
                break
    return strongest


def _why(exc: Exception) -> str:
    """The library's complaint, in a few bounded words: what it says never quotes argument values at length."""
    if isinstance(exc, KeyError):
        return f"no field {str(exc.args[0])[:64]!r}" if exc.args else "a field is missing"
    text = str(exc)
    if text.startswith("No such overload"):
        return "a value has the wrong type for the operation"
    if text.startswith("Undefined variable or function"):
        return text.split(".")[0][:120]
    return f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__


def principal_facts(subject: str, kind: str, scopes: frozenset[str], workspace: str | None, role: str | None,
                    client: str | None, credential: str) -> dict[str, Any]:
    return {"subject": subject, "kind": kind, "scopes": sorted(scopes), "workspace": workspace or "",
            "role": role or "", "client": client or "", "credential": credential}
