"""Who is acting in the console or the admin API, and whether they administer. Pure apart from `resolve`.

An administrator is a holder of an admin key, or a member of a role the policy names in `administrators:` (an
OIDC sign-in, or a registry credential with that role). Anyone else signed in acts for themselves only: their own
credentials, their own activity, what their own credentials would see.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.identity.oauth.sessions import Session
from proxy.identity.principal import Principal


@dataclass(frozen=True)
class Actor:
    subject: str
    credential_id: str  # what they authenticated with
    kind: str  # pat | admin_key | oidc
    scopes: frozenset[str]  # what that credential holds now: the ceiling of anything they create
    role: str | None
    admin: bool
    workspace: str | None = None  # bound
    workspaces: frozenset[str] | None = None  # None: every workspace
    projects: frozenset[str] | None = None
    expires_at: float | None = None
    session: Session | None = None  # a browser session (its CSRF token guards state changes); None: a bearer

    @property
    def by(self) -> str:
        """How revocations and creations name who made them."""
        return f"{self.subject} on the console ({self.credential_id})"


def is_admin(kind: str, role: str | None, administrators: Iterable[str]) -> bool:
    return kind == "admin_key" or (role is not None and role in tuple(administrators))


def of_principal(principal: Principal, administrators: Iterable[str]) -> Actor:
    return Actor(subject=principal.subject, credential_id=principal.credential_id, kind=principal.kind,
                 scopes=frozenset(principal.scopes), role=principal.role,
                 admin=is_admin(principal.kind, principal.role, administrators),
                 workspace=principal.bound_workspace, workspaces=principal.workspaces, projects=principal.projects,
                 expires_at=principal.expires_at)


def of_session(session: Session, administrators: Iterable[str], expires_at: float | None) -> Actor:
    kind = "oidc" if session.credential_id.startswith("oidc-") else session.kind
    return Actor(subject=session.subject, credential_id=session.credential_id, kind=kind,
                 scopes=frozenset(session.scopes), role=session.role,
                 admin=is_admin(session.kind, session.role, administrators),
                 workspace=session.workspace,
                 workspaces=frozenset(session.workspaces) if session.workspaces is not None else None,
                 projects=frozenset(session.projects) if session.projects is not None else None,
                 expires_at=expires_at, session=session)
