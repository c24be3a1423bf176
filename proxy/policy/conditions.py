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
from collections.abc import Callable, Hashable, Iterator, Mapping
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


Facts = Mapping[str, Any] | Callable[[], Mapping[str, Any] | None] | None
_CONTEXTS = 4096  # callers' contexts kept per rule; started over past it


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
    principal_names: tuple[str, ...] | None  # the same of `principal`


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
    return Condition(where, source, then, reason, program, uses, _members(plain, "args"),
                     _members(plain, "principal"))


def _first(plain: str, name: str) -> tuple[int, int]:
    found = re.search(rf"(?<![\w]){re.escape(name)}\b", plain)
    return _line_column(plain, found.start()) if found else (1, 1)


def _members(plain: str, variable: str) -> tuple[str, ...] | None:
    """The members of `variable` an expression reads, when it reads it only as `variable.member`; None when it
    reads it any other way (`args[k]`, `"k" in args`, `size(args)`): then the whole of it is converted."""
    names: list[str] = []
    for found in re.finditer(rf"(?<![\w.]){variable}\b", plain):
        member = re.match(r"\s*\.\s*([A-Za-z_]\w*)", plain[found.end():])
        if member is None:
            return None
        if member.group(1) not in names:
            names.append(member.group(1))
    return tuple(names)


class RuleConditions:
    """One rule's compiled conditions, with what they read together, and the CEL contexts it reuses: converting a
    caller's facts into CEL costs more than evaluating five expressions, so a context holding one caller's
    `principal` is kept (bounded) and each call puts only its own `args`, `now` (to the second) and `name` in it.
    Evaluation is synchronous: no other call can use the context between setting a call's values and reading them."""

    __slots__ = ("_contexts", "arg_names", "conditions", "principal_names", "uses")

    def __init__(self, conditions: tuple[Condition, ...]) -> None:
        self.conditions = conditions
        self.uses = frozenset().union(*(c.uses for c in conditions))
        self.arg_names = _union([c.arg_names for c in conditions if "args" in c.uses])
        self.principal_names = _union([c.principal_names for c in conditions if "principal" in c.uses])
        self._contexts: dict[Any, list[Any]] = {}  # principal key -> [context, the second its `now` is]

    def __len__(self) -> int:
        return len(self.conditions)

    def __iter__(self) -> Iterator[Condition]:
        return iter(self.conditions)

    def _context(self, args: Mapping[str, Any], principal: Facts, key: Hashable | None, name: str,
                 now: float) -> Any:
        entry = self._contexts.get(key) if key is not None else None
        if entry is None:
            entry = [cel.Context(), None]
            if "principal" in self.uses:
                facts = (principal() if callable(principal) else principal) or {}
                names = self.principal_names
                entry[0].add_variable("principal", dict(facts) if names is None else
                                      {k: facts[k] for k in names if k in facts})
            if key is not None:
                if len(self._contexts) >= _CONTEXTS:
                    self._contexts.clear()
                self._contexts[key] = entry
        context = entry[0]
        if "args" in self.uses:
            names = self.arg_names
            context.add_variable("args", dict(args) if names is None else {k: args[k] for k in names if k in args})
        if "now" in self.uses and entry[1] != int(now):
            context.add_variable("now", datetime.fromtimestamp(int(now), UTC))
            entry[1] = int(now)
        if "name" in self.uses:
            context.add_variable("name", name)
        return context

    def judge(self, args: Mapping[str, Any], principal: Facts, name: str, now: float,
              key: Hashable | None = None) -> Verdict | None:
        """The strictest condition that holds for this call (None: none does); one that cannot be evaluated denies.
        `principal`: the caller's facts, or a function making them (called only when a condition reads them and
        no context is kept for `key`, which must stand for exactly these facts)."""
        conditions = self.conditions
        # CEL's equality takes null for a value of another type (null == "" is false, not an error): a condition
        # over an argument the call sent as null would be judged on a field it does not have. Fail closed.
        for member in self.arg_names or ():
            if member in args and args[member] is None:
                return Verdict(conditions[0], "deny", f"argument {member!r} is null")
        try:
            context = self._context(args, principal, key, name, now)
        except Exception as exc:  # a value CEL cannot hold (a huge int in a list, ...): nothing is kept half-set
            self._contexts.pop(key, None)
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


def _union(parts: list[tuple[str, ...] | None]) -> tuple[str, ...] | None:
    if any(part is None for part in parts):
        return None
    return tuple(dict.fromkeys(name for part in parts for name in part or ()))


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
