"""Personal access tokens and admin keys: opaque bearer tokens, stored only as a hash, in a registry file.

Token: `sgp_<id>_<secret>` (PAT) or `sgk_<id>_<secret>` (tenant admin key): a recognisable prefix for secret
scanners, an id to find the record without scanning, 256 bits of secret. The registry keeps `sha256:<hex>` of the
whole token and compares in constant time. The file is re-read when it changes; live state (revocations, last-used
stamps) also goes to the shared store so that `pat revoke` takes effect on every replica at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy.durable import Durable
from proxy.files import file_stamp
from proxy.identity.principal import Principal, ceiling_scopes, effective_scopes, problem_in_permissions
from proxy.policy.model import Policy
from proxy.store import StoreUnavailable

log = logging.getLogger("scopegate.auth")

PREFIX = {"pat": "sgp_", "admin_key": "sgk_"}
# Credentials made (or rotated) at run time live in the durable state, layered over the file, never written into it.
RUNTIME_KEY = "scopegate:cred:pat:"
RUNTIME_INDEX = "scopegate:cred:pats"
# How long a process trusts what it last read of one credential's run-time record before reading it again: a
# rotation's new secret works at once everywhere (an unknown secret is looked up straight away); an old secret
# stops at most this long after its grace period would have ended on a process that had not read it since.
RECHECK_SECONDS = 5.0
RECHECK_KEEP = 100_000
_TOKEN = re.compile(r"^(sgp|sgk)_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")


class RegistryError(ValueError):
    pass


class Record(BaseModel):
    """One credential in the registry file. The ceiling-style fields (permissions, org_capabilities) are optional."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    kind: Literal["pat", "admin_key"] = "pat"
    label: str = Field(min_length=1, max_length=200)
    subject: str = Field(min_length=1)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    scopes: list[str] = Field(default_factory=list)
    workspace: str | None = None  # bound: the credential acts in this workspace only
    workspaces: list[str] | None = None  # user-scoped: the workspaces it may name (None: all its user has)
    default_workspace: str | None = None
    projects: list[str] | None = None
    permissions: dict[str, str] = Field(default_factory=dict)
    org_capabilities: dict[str, bool] = Field(default_factory=dict)
    role: str | None = None
    created: datetime
    expires: datetime | None = None
    revoked: bool = False
    # Set by a rotation (made at run time, kept in the durable state, never in the file): the secret it replaced
    # still works until `previous_until`, so the programs using it can be moved over.
    previous_hash: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    previous_until: datetime | None = None
    created_by: str | None = Field(None, max_length=300)  # who made it at run time (the console, the admin API)

    @field_validator("permissions")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        problem = problem_in_permissions(value)
        if problem:
            raise ValueError(problem)
        return value

    def principal(self, policy: Policy) -> Principal:
        grant = set(self.scopes) | ceiling_scopes(self.permissions, self.org_capabilities)
        workspaces = self.workspaces
        if self.workspace is not None:
            workspaces = [self.workspace]
        return Principal(
            subject=self.subject,
            credential_id=self.id,
            label=self.label,
            kind=self.kind,
            scopes=effective_scopes(grant, self.kind, ceiling=policy.ceiling(self.role),
                                    oauth_excluded=policy.oauth_excluded_scopes),
            workspaces=frozenset(workspaces) if workspaces is not None else None,
            bound_workspace=self.workspace,
            default_workspace=self.default_workspace or self.workspace,
            projects=frozenset(self.projects) if self.projects is not None else None,
            permissions=dict(self.permissions),
            role=self.role,
            expires_at=self.expires.timestamp() if self.expires else None,
        )


def token_hash(token: str) -> str:
    # The secret has 256 bits of entropy: a fast hash is enough, a slow one would only cost every request.
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: Literal["pat", "admin_key"], cred_id: str | None = None) -> tuple[str, str]:
    """A fresh (id, token); with `cred_id`, a new secret for that credential (a rotation)."""
    cred_id = cred_id or secrets.token_hex(6)
    return cred_id, f"{PREFIX[kind]}{cred_id}_{secrets.token_urlsafe(32)}"


def token_id(token: str) -> str | None:
    """The credential id of a well-formed token, else None."""
    match = _TOKEN.match(token)
    return match.group(2) if match else None


def looks_like_pat(token: str) -> bool:
    return token.startswith(("sgp_", "sgk_"))


def read_records(path: Path) -> list[Record]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML") from exc
    items = raw.get("credentials", []) if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise RegistryError(f"{path}: expected a mapping with a `credentials` list")
    records, errors, seen = [], [], set()
    for index, item in enumerate(items):
        try:
            record = Record.model_validate(item)
        except ValidationError as exc:
            errors += [f"{path}: credentials.{index}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            continue
        if record.id in seen:
            errors.append(f"{path}: credentials.{index}.id: duplicate id {record.id}")
        seen.add(record.id)
        records.append(record)
    if errors:
        raise RegistryError("\n".join(errors))
    return records


def write_records(path: Path, records: list[Record]) -> None:
    """Replace the file atomically, readable by its owner only: it holds hashes, which are worth guarding too."""
    data = {"credentials": [r.model_dump(mode="json", exclude_none=True, exclude_defaults=False) for r in records]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        yaml.safe_dump(data, out, sort_keys=False)
    os.replace(tmp, path)


class Registry:
    """The registry file in memory, re-read when its modification time changes (a mounted Secret updates in place)."""

    def __init__(self, path: str | Path, policy: Policy) -> None:
        self.path = Path(path)
        self.policy = policy
        self._stamp: tuple[int, int] | None = None
        self._records: dict[str, tuple[Record, Principal]] = {}
        self.reload_error: str | None = None
        # Run-time records (made or rotated through the admin API), over the file's by id; read from `state`.
        self.state: Durable | None = None
        self._overlay: dict[str, tuple[Record, Principal]] = {}
        self._checked: dict[str, float] = {}  # credential id -> when its run-time record was last read
        self.refresh()  # the first read must succeed: a broken file at start is a configuration error

    def refresh(self) -> None:
        stamp = file_stamp(self.path)
        if stamp == self._stamp and self._stamp is not None:
            return
        records = read_records(self.path)
        self._records = {r.id: (r, r.principal(self.policy)) for r in records}
        self._stamp = stamp
        self.reload_error = None

    def principals_for(self, policy: Policy) -> dict[str, tuple[Record, Principal]]:
        """The registry's records read now and seen through another policy (for a policy reload). May raise."""
        return {r.id: (r, r.principal(policy)) for r in read_records(self.path)}

    def adopt(self, policy: Policy, records: dict[str, tuple[Record, Principal]]) -> None:
        overlay = {i: (r, r.principal(policy)) for i, (r, _) in self._overlay.items()}
        self.policy, self._records, self._stamp, self._overlay = policy, records, file_stamp(self.path), overlay

    def follow(self, policy: Policy) -> Callable[[], None]:
        """A policy reload's follower: every principal seen through the new policy, committed at the swap."""
        records = self.principals_for(policy)
        return lambda: self.adopt(policy, records)

    def records(self) -> list[Record]:
        """Every record as last read, the run-time ones over the file's (for the Connected apps page; never a
        token, only hashes)."""
        merged = {**self._records, **self._overlay}
        return [record for record, _ in merged.values()]

    def from_file(self, cred_id: str) -> bool:
        return cred_id in self._records

    # --- run-time records (the durable state) -----------------------------------------------------------------
    def attach(self, state: Durable) -> None:
        self.state = state

    async def load_runtime(self) -> None:
        """Every run-time record, at start (so pages and parent checks know them before their first request)."""
        if self.state is None:
            return
        try:
            ids = await self.state.members(RUNTIME_INDEX)
            raws = await self.state.get_many([RUNTIME_KEY + i for i in ids])
        except StoreUnavailable:  # Redis down at start: each is read on its first use instead (recheck)
            log.warning("credentials made at run time cannot be read now; each is read when first used")
            return
        for cred_id, raw in zip(ids, raws, strict=True):
            self._take(cred_id, raw)

    def _take(self, cred_id: str, raw: str | None) -> None:
        if raw is None:
            self._overlay.pop(cred_id, None)
            return
        try:
            record = Record.model_validate_json(raw)
        except ValidationError:
            self._overlay.pop(cred_id, None)  # unreadable: it grants nothing (the file's record, if any, stands)
            return
        self._overlay[cred_id] = (record, record.principal(self.policy))

    def remember(self, record: Record) -> None:
        """A run-time record this process just wrote: in force here at once."""
        self._overlay[record.id] = (record, record.principal(self.policy))
        self._checked[record.id] = time.monotonic()

    async def recheck(self, cred_id: str, force: bool = False) -> None:
        """Read the credential's run-time record again when this process's copy is older than RECHECK_SECONDS: one
        durable read per credential at most every few seconds, and one for each id this process does not know
        (a credential made on another replica works on its first request here). `force`: read it now."""
        if self.state is None:
            return
        now = time.monotonic()
        if not force and now - self._checked.get(cred_id, float("-inf")) < RECHECK_SECONDS:
            return
        known = cred_id in self._records or cred_id in self._overlay
        try:
            raw = await self.state.get(RUNTIME_KEY + cred_id)
        except StoreUnavailable:
            if known:
                return  # what this process last knew; the revocation check after this still fails closed
            raise
        self._take(cred_id, raw)
        if known or raw is not None:  # ids nobody issued are not remembered: guessing cannot grow this
            self._checked.pop(cred_id, None)
            if len(self._checked) >= RECHECK_KEEP:
                del self._checked[next(iter(self._checked))]
            self._checked[cred_id] = now

    async def resolve(self, token: str, now: float | None = None) -> tuple[Principal | None, str]:
        """lookup(), with the credential's run-time record read first when due (the request path's entry)."""
        self.maybe_refresh()
        cred_id = token_id(token)
        if cred_id is None:
            return None, "malformed"
        checked = self._checked.get(cred_id)
        await self.recheck(cred_id)
        principal, reason = self.lookup(token, now)
        if reason == "unknown" and self.state is not None and checked == self._checked.get(cred_id) \
                and cred_id in self._checked:
            # A secret this process's copy does not know: a rotation made elsewhere since it last read it. One read
            # more (an unknown id costs one read already), so a new secret works on every replica at once.
            await self.recheck(cred_id, force=True)
            principal, reason = self.lookup(token, now)
        return principal, reason

    def maybe_refresh(self) -> None:
        """Re-read a changed file; a broken new version keeps the old one in force (and says so in reload_error)."""
        try:
            self.refresh()
        except RegistryError as exc:
            self.reload_error = str(exc)
            self._stamp = file_stamp(self.path)  # do not re-parse the same broken file on every request

    def live(self, cred_id: str, now: float | None = None) -> Principal | None:
        """The credential's principal as the file says now, or None when it is gone, marked revoked or expired (a
        parent's check: what was signed in with it lives no longer than it does). Runtime revocations: Tree."""
        self.maybe_refresh()
        entry = self._overlay.get(cred_id) or self._records.get(cred_id)
        if entry is None or entry[0].revoked:
            return None
        expires = entry[1].expires_at
        if expires is not None and expires <= (now or time.time()):
            return None
        return entry[1]

    def lookup(self, token: str, now: float | None = None) -> tuple[Principal | None, str]:
        """(principal, "") for a valid token, else (None, reason). Pure apart from the file check above."""
        cred_id = token_id(token)
        if cred_id is None:
            return None, "malformed"
        entry = self._overlay.get(cred_id) or self._records.get(cred_id)
        # Compare even when the id is unknown, so timing does not tell known ids from unknown ones.
        expected = entry[0].hash if entry else "sha256:" + "0" * 64
        presented = token_hash(token)
        matched = hmac.compare_digest(presented, expected)
        if entry is not None and not matched and entry[0].previous_hash is not None:
            # a rotated secret: the one it replaced works until the end of the grace period chosen at rotation
            until = entry[0].previous_until
            matched = (hmac.compare_digest(presented, entry[0].previous_hash) and until is not None
                       and until.timestamp() > (now or time.time()))
        if not matched or entry is None:
            return None, "unknown"
        record, principal = entry
        if not token.startswith(PREFIX[record.kind]):
            return None, "unknown"
        if record.revoked:
            return None, "revoked"
        if principal.expires_at is not None and principal.expires_at <= (now or time.time()):
            return None, "expired"
        return principal, ""


def parse_duration(text: str) -> int:
    """`30d`, `12h`, `45m` or `90s` in seconds."""
    match = re.fullmatch(r"(\d+)([dhms])", text.strip())
    if not match:
        raise ValueError(f"expected a duration such as 30d, 12h, 45m or 90s, got {text!r}")
    return int(match.group(1)) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[match.group(2)]


def create_record(
    *, kind: Literal["pat", "admin_key"], label: str, subject: str, scopes: list[str], workspace: str | None,
    workspaces: list[str] | None, role: str | None, expires_in: int | None, extra: dict[str, Any] | None = None,
) -> tuple[Record, str]:
    cred_id, token = new_token(kind)
    now = datetime.now(UTC).replace(microsecond=0)
    record = Record(
        id=cred_id, kind=kind, label=label, subject=subject, hash=token_hash(token), scopes=scopes,
        workspace=workspace, workspaces=workspaces, role=role, created=now,
        expires=datetime.fromtimestamp(now.timestamp() + expires_in, UTC) if expires_in else None,
        **(extra or {}),
    )
    return record, token
