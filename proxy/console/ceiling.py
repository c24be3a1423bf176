"""No self-escalation: what an actor may create, rotate and revoke. Pure functions over plain data.

A credential made through the console or the admin API holds at most what its maker's own credential holds now:
its scopes, its workspaces and projects, its lifetime, and its kind (only an admin key makes an admin key). A
person who is not an administrator makes credentials for themselves only, with their own role. Enforced here, by
the API, whatever the page offered.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.console.actors import Actor


@dataclass(frozen=True)
class Want:
    kind: str  # pat | admin_key
    label: str
    subject: str
    scopes: tuple[str, ...]
    workspace: str | None = None
    workspaces: tuple[str, ...] | None = None  # None: every workspace its person can use
    projects: tuple[str, ...] | None = None
    role: str | None = None
    expires_in: int | None = None  # seconds; None: never


def beyond(actor: Actor, want: Want, now: float) -> list[str]:
    """Why `actor` may not create `want` (empty: it may)."""
    problems = []
    if want.kind not in ("pat", "admin_key"):
        problems.append("kind: pat or admin_key")
    elif want.kind == "admin_key" and actor.kind != "admin_key":
        problems.append("kind: only an admin key can make an admin key")
    if not actor.admin and want.subject != actor.subject:
        problems.append("subject: you can make credentials for yourself only")
    if not actor.admin and want.role != actor.role:
        problems.append("role: your own credentials carry your own role")
    extra = sorted(set(want.scopes) - actor.scopes)
    if extra:
        problems.append(f"scopes: beyond what your own credential holds: {' '.join(extra)}")
    if actor.workspace is not None:
        if want.workspace != actor.workspace:
            problems.append(f"workspace: your credential is bound to {actor.workspace}; so is what it makes")
    elif actor.workspaces is not None:
        named = [want.workspace] if want.workspace is not None else list(want.workspaces or ())
        if not named:
            problems.append("workspaces: name them (yours: " + ", ".join(sorted(actor.workspaces)) + ")")
        outside = sorted(set(named) - actor.workspaces)
        if outside:
            problems.append(f"workspaces: not yours: {', '.join(outside)}")
    if actor.projects is not None:
        if want.projects is None:
            problems.append("projects: name them (yours: " + ", ".join(sorted(actor.projects)) + ")")
        elif outside := sorted(set(want.projects) - actor.projects):
            problems.append(f"projects: not yours: {', '.join(outside)}")
    if actor.expires_at is not None:
        if want.expires_in is None:
            problems.append("expires: your credential expires, so what it makes must too")
        elif now + want.expires_in > actor.expires_at:
            problems.append("expires: later than your own credential")
    return problems


def may_act_on(actor: Actor, *, subject: str, kind: str, scopes: frozenset[str]) -> bool:
    """Whether `actor` may rotate or revoke a credential of `subject`, this kind, holding these scopes: an
    administrator anything but an admin key (unless they hold one), a person their own credentials that hold no
    more than the one they signed in with (the Connected apps rule)."""
    if kind == "admin_key" and actor.kind != "admin_key":
        return False
    if actor.admin:
        return True
    return subject == actor.subject and scopes <= actor.scopes
