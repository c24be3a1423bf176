"""Pins: what the upstream's tools, prompts and resource templates said when the policy was reviewed, and how what
they say now compares. Pure over plain data; the file is read when the policy is loaded, never on the request path.

A pin file (`scopegate pins update` writes it, the policy's `pins.file` names it) holds, per section and item, the
canonical SHA-256 of the item's definition (the fields below, `proxy/canonical.py`'s form, keys sorted) and the
definition itself, pretty-printed, so a pull request that changes a pin shows what changed in words. Only the digest
decides; the definition is what a reviewer reads and what `pins diff` and the audit name changes from.

A definition the proxy cannot put in canonical form is *unreadable*: it counts as drifted, never as matching.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from proxy.canonical import NotCanonical, canonical

VERSION = 1
# result key of a list -> (item key, the fields pinned): what a model and a policy read of the item
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tools": ("name", ("name", "title", "description", "inputSchema", "outputSchema", "annotations")),
    "prompts": ("name", ("name", "title", "description", "arguments")),
    "resourceTemplates": ("uriTemplate", ("uriTemplate", "name", "title", "description", "mimeType",
                                          "annotations")),
}
KIND = {"tools": "tool", "prompts": "prompt", "resourceTemplates": "template"}  # a metric's label, an audit's word
Status = Literal["ok", "drift", "unpinned", "unreadable"]
Action = Literal["show", "hide", "hold", "report"]


class PinFileError(ValueError):
    """A pin file that cannot be read as one: the policy naming it is refused (the old one stays in force)."""


def definition(section: str, item: dict[str, Any]) -> dict[str, Any]:
    """The pinned fields of one list item, as the upstream sent them (absent fields stay absent). Pure."""
    return {field: item[field] for field in SECTIONS[section][1] if field in item}


def item_digest(defined: dict[str, Any]) -> str | None:
    """The canonical digest of a definition; None when it has no canonical form (unreadable). Pure."""
    try:
        body = orjson.dumps(canonical(defined), option=orjson.OPT_SORT_KEYS)
    except (NotCanonical, TypeError, orjson.JSONEncodeError):
        return None
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Pin:
    digest: str
    definition: dict[str, Any]


@dataclass(frozen=True)
class PinSet:
    """Section -> item name -> its pin."""

    sections: dict[str, dict[str, Pin]]

    def get(self, section: str, name: str) -> Pin | None:
        return self.sections.get(section, {}).get(name)


def pin_set(lists: dict[str, list[Any]]) -> PinSet:
    """Pins for the items of live lists (section -> items), as `pins update` writes them. Items without a name are
    left out; an item with no canonical form is refused (a pin must be checkable). Pure."""
    sections: dict[str, dict[str, Pin]] = {}
    for section, items in lists.items():
        key = SECTIONS[section][0]
        pinned: dict[str, Pin] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get(key), str):
                continue
            defined = definition(section, item)
            found = item_digest(defined)
            if found is None:
                raise PinFileError(f"{section} {item[key]!r} has no canonical form and cannot be pinned")
            pinned[item[key]] = Pin(found, defined)
        sections[section] = pinned
    return PinSet(sections)


def dump(pins: PinSet) -> str:
    """The pin file's text: stable (sorted, indented) so that a change reads as a small diff."""
    body: dict[str, Any] = {"version": VERSION}
    for section in SECTIONS:
        body[section] = {name: {"sha256": pin.digest, "definition": pin.definition}
                         for name, pin in sorted(pins.sections.get(section, {}).items())}
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load(path: str | Path) -> PinSet:
    """Read a pin file. Raises PinFileError (or OSError) naming the file and what is wrong. A digest that does not
    match its definition is refused: a hand edit of one and not the other would be reviewed as something else."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise PinFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise PinFileError(f"{path}: expected an object with \"version\": {VERSION}")
    sections: dict[str, dict[str, Pin]] = {}
    for section in SECTIONS:
        items = data.get(section, {})
        if not isinstance(items, dict):
            raise PinFileError(f"{path}: {section} must be an object of name -> pin")
        pinned: dict[str, Pin] = {}
        for name, entry in items.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                    or not isinstance(entry.get("definition"), dict):
                raise PinFileError(f"{path}: {section}.{name}: expected sha256 and definition")
            if item_digest(entry["definition"]) != entry["sha256"]:
                raise PinFileError(f"{path}: {section}.{name}: sha256 does not match its definition "
                                   "(run `scopegate pins update` rather than editing the file)")
            pinned[name] = Pin(entry["sha256"], entry["definition"])
        sections[section] = pinned
    if unknown := sorted(set(data) - {"version", *SECTIONS}):
        raise PinFileError(f"{path}: unknown section {unknown[0]!r}")
    return PinSet(sections)


@dataclass(frozen=True, slots=True)
class Judgement:
    status: Status
    action: Action
    changes: tuple[str, ...]  # what differs from the pin, in words (empty when it matches)


def destructive(defined: dict[str, Any]) -> bool:
    """The spec's defaults: a tool is destructive unless it says it is read-only or says destructiveHint: false."""
    annotations = defined.get("annotations")
    if not isinstance(annotations, dict):
        return True
    return annotations.get("readOnlyHint") is not True and annotations.get("destructiveHint") is not False


def required(section: str, defined: dict[str, Any]) -> set[str] | None:
    """The arguments a call must give; None when the definition does not say in a readable way."""
    if section == "tools":
        schema = defined.get("inputSchema")
        if not isinstance(schema, dict):
            return None
        names = schema.get("required", [])
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else None
    if section == "prompts":
        arguments = defined.get("arguments", [])
        if not isinstance(arguments, list):
            return None
        return {a["name"] for a in arguments if isinstance(a, dict) and a.get("required") is True
                and isinstance(a.get("name"), str)}
    return set()


def changes(section: str, old: dict[str, Any], new: dict[str, Any]) -> tuple[str, ...]:
    """What differs between two definitions, one short phrase per change (field, and for annotations and required
    arguments, the value). Pure."""
    out: list[str] = []
    for field in SECTIONS[section][1]:
        if old.get(field) == new.get(field):
            continue
        if field == "annotations" and isinstance(old.get(field), dict) and isinstance(new.get(field), dict):
            for hint in sorted(set(old[field]) | set(new[field])):
                if old[field].get(hint) != new[field].get(hint):
                    out.append(f"annotations.{hint}: {_word(old[field].get(hint))} -> {_word(new[field].get(hint))}")
        else:
            out.append(f"{field} changed" if field in old and field in new else
                       f"{field} {'added' if field in new else 'removed'}")
    was, now = required(section, old), required(section, new)
    if was is not None and now is not None and now - was:
        out.append("new required argument " + ", ".join(sorted(now - was)))
    return tuple(out)


def escalates(section: str, old: dict[str, Any], new: dict[str, Any] | None) -> bool:
    """A change that is always at least held, whatever the policy says: a tool that stops saying it is destructive,
    or any item that now requires an argument its pin did not (or says so unreadably). Pure."""
    if new is None:
        return True
    if section == "tools" and destructive(old) and not destructive(new):
        return True
    was, now = required(section, old), required(section, new)
    return now is None or (was is not None and bool(now - was))


def judge(pins: PinSet, section: str, name: str, defined: dict[str, Any] | None, found: str | None,
          on_drift: Action, unpinned: Literal["hide", "allow"]) -> Judgement:
    """How an item (its definition and digest as they are now; None: unreadable) compares with its pin, and what the
    policy does about it: `on_drift` is hide, hold or report; an escalating change is never less than hold. Pure."""
    pin = pins.get(section, name)
    if pin is None:
        return Judgement("unpinned", "show" if unpinned == "allow" else "hide", ())
    if found is not None and found == pin.digest:
        return Judgement("ok", "show", ())
    if defined is None or found is None:
        return Judgement("unreadable", "hide" if on_drift == "hide" else "hold", ("definition unreadable",))
    said = changes(section, pin.definition, defined) or ("definition changed",)
    action = on_drift
    if action == "report" and escalates(section, pin.definition, defined):
        action = "hold"
    return Judgement("drift", action, said)


def diff(pins: PinSet, lists: dict[str, list[Any]]) -> list[str]:
    """Every difference between a pin file and live lists, one line each (`pins diff`). Pure."""
    out: list[str] = []
    live = pin_set_lenient(lists)
    for section in SECTIONS:
        kind = KIND[section]
        old, new = pins.sections.get(section, {}), live.get(section, {})
        for name in sorted(set(old) | set(new)):
            if name not in new:
                out.append(f"gone      {kind} {name}")
            elif name not in old:
                out.append(f"unpinned  {kind} {name}")
            elif new[name][1] is None:
                out.append(f"changed   {kind} {name}: definition unreadable (held at least)")
            elif new[name][1] != old[name].digest:
                said = changes(section, old[name].definition, new[name][0]) or ("definition changed",)
                held = " (held at least)" if escalates(section, old[name].definition, new[name][0]) else ""
                out.append(f"changed   {kind} {name}: {'; '.join(said)}{held}")
    return out


def pin_set_lenient(lists: dict[str, list[Any]]) -> dict[str, dict[str, tuple[dict[str, Any], str | None]]]:
    """Live lists as section -> name -> (definition, digest or None), unreadable items kept. Pure."""
    out: dict[str, dict[str, tuple[dict[str, Any], str | None]]] = {}
    for section, items in lists.items():
        key = SECTIONS[section][0]
        out[section] = {}
        for item in items:
            if isinstance(item, dict) and isinstance(item.get(key), str):
                defined = definition(section, item)
                out[section][item[key]] = (defined, item_digest(defined))
    return out


def _word(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)
