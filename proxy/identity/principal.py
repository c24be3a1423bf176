"""Who is calling: the Principal every later decision reads, and the pure scope arithmetic that builds it.

A credential (PAT, admin key, JWT, OAuth access token) grants scopes; the policy may cap them by the user's role
(the ceiling) and withhold some from OAuth tokens. Effective scopes = grant ∩ ceiling, less what the credential's
kind may never hold. A credential can only narrow what its user has, never widen it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any, Literal

# Credential ids of grants made by scopegate's own OAuth server; no other credential id starts like this.
OAUTH_GRANT_PREFIX = "sgo_"

Kind = Literal["pat", "jwt", "oauth", "admin_key", "anonymous"]
KINDS: tuple[Kind, ...] = ("pat", "jwt", "oauth", "admin_key")

# Ceiling-style permission levels, weakest first; `none` is an explicit deny that wins over every grant.
LEVELS = ("read", "write", "admin")
LEVEL_SCOPE = {level: f"perm:{level}" for level in LEVELS}
ORG_CAPABILITIES = (
    "can_admin_org",
    "can_manage_billing",
    "can_manage_members",
    "can_manage_teams",
    "can_manage_perms",
    "can_manage_kg",
    "can_lifecycle",
)


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    credential_id: str
    label: str
    kind: Kind
    scopes: frozenset[str]
    workspaces: frozenset[str] | None = None  # None: every workspace (a user-scoped credential)
    bound_workspace: str | None = None  # a workspace-bound credential acts in this one only
    default_workspace: str | None = None
    projects: frozenset[str] | None = None  # None: every project
    permissions: Mapping[str, str] = field(default_factory=dict)  # resource id -> read | write | admin | none
    role: str | None = None
    expires_at: float | None = None  # Unix time
    parent: str | None = None  # the credential this one was signed in with (an OAuth grant's PAT, admin key, OIDC)


def matches_any(scope: str, patterns: Iterable[str]) -> bool:
    return any(scope == p or ("*" in p and fnmatchcase(scope, p)) for p in patterns)


def effective_scopes(
    grant: Iterable[str],
    kind: Kind,
    *,
    ceiling: Iterable[str] | None,
    oauth_excluded: Iterable[str] = (),
) -> frozenset[str]:
    """The scopes a credential really holds.

    `ceiling` is what the user's role allows (patterns such as `journal:*`), or None where the policy defines no
    roles. The superscope is an ordinary scope here: the ceiling cuts it like any other.
    """
    held = frozenset(grant)
    if ceiling is not None:
        limit = tuple(ceiling)
        held = frozenset(s for s in held if matches_any(s, limit))
    if kind == "oauth":
        excluded = tuple(oauth_excluded)
        held = frozenset(s for s in held if not matches_any(s, excluded))
    return held



def under_parent(child: Principal, parent: Principal) -> Principal:
    """Pure: a derived credential within what its parent holds now. Scopes: the child's (its consent) ∩ the
    parent's; workspaces and projects: a bound or listed set never wider than the parent's; a permission the parent
    marks `none` stays denied. Consent and parent can only narrow each other, never widen."""
    scopes = child.scopes & parent.scopes
    workspaces = child.workspaces
    if parent.workspaces is not None:
        workspaces = parent.workspaces if workspaces is None else workspaces & parent.workspaces
    projects = child.projects
    if parent.projects is not None:
        projects = parent.projects if projects is None else projects & parent.projects
    bound = child.bound_workspace
    if parent.bound_workspace is not None and bound != parent.bound_workspace:
        bound = parent.bound_workspace if bound is None else None
        if bound is None:  # bound to two different workspaces: none is left
            workspaces = frozenset()
    permissions = dict(child.permissions)
    permissions.update({name: "none" for name, level in parent.permissions.items() if level == "none"})
    if (scopes == child.scopes and workspaces == child.workspaces and projects == child.projects
            and bound == child.bound_workspace and permissions == child.permissions):
        return child
    return replace(child, scopes=scopes, workspaces=workspaces, projects=projects, bound_workspace=bound,
                   default_workspace=child.default_workspace if bound is None else bound, permissions=permissions)


def ceiling_scopes(permissions: Mapping[str, str], capabilities: Mapping[str, Any]) -> set[str]:
    """Normalise ceiling-style grants to scopes: the strongest permission level held anywhere implies its level scope
    and every weaker one (`perm:admin` ⊃ `perm:write` ⊃ `perm:read`); each capability flag that is true is a scope
    of the same name, as OAuth scopes map 1:1 onto the flags."""
    scopes: set[str] = set()
    strongest = max((LEVELS.index(level) for level in permissions.values() if level in LEVELS), default=-1)
    scopes.update(LEVEL_SCOPE[level] for level in LEVELS[: strongest + 1])
    scopes.update(flag for flag, on in capabilities.items() if on is True and flag in ORG_CAPABILITIES)
    return scopes


def problem_in_permissions(permissions: Any) -> str | None:
    if not isinstance(permissions, Mapping):
        return "permissions must map resource ids to read, write, admin or none"
    for resource, level in permissions.items():
        if not isinstance(resource, str) or level not in (*LEVELS, "none"):
            return f"permission for {resource!r} must be read, write, admin or none, got {level!r}"
    return None
