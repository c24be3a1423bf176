"""Policy test cases: table-driven decisions an operator keeps beside a policy and runs in CI
(`scopegate policy test POLICY CASES`).

Each case is a credential (scopes, kind, role, workspace grants, subject, OAuth client), a call (method, name,
arguments, the time it is made, how many times in a row) and what must become of it: `allow` (forwarded as it is),
`confirm` (held for confirmation: a preview and a token, or a person's approval), `deny` (refused: scopes, rule,
a condition, workspace), `limited` (a rate limit refused it), and optionally the workspace the forwarded call acts in
(injected or verified) and the condition or limit that must have decided. The call goes through the real scope,
workspace and rate-limit guards, the code the proxy runs, not a re-statement of it; the limits count in memory,
across the cases of one file, in order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from multidict import CIMultiDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.exchange import Answer, Exchange
from proxy.guards.catalog import Catalog
from proxy.guards.limits import RateLimits
from proxy.guards.scope import ScopeGuard
from proxy.guards.workspace import WorkspaceGuard
from proxy.identity.principal import Kind, Principal, ceiling_scopes, effective_scopes
from proxy.policy import source
from proxy.policy.decide import Rules
from proxy.policy.model import Policy
from proxy.policy.reload import LivePolicy
from proxy.store import MemoryStore

_NAME_FIELD = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credential(_Strict):
    kind: Kind = "pat"
    scopes: tuple[str, ...] = ()
    role: str | None = None
    workspace: str | None = None  # bound
    workspaces: tuple[str, ...] | None = None  # user-scoped: the ones it may name (None: all)
    default_workspace: str | None = None
    projects: tuple[str, ...] | None = None
    permissions: dict[str, Literal["read", "write", "admin", "none"]] = Field(default_factory=dict)
    org_capabilities: dict[str, bool] = Field(default_factory=dict)
    subject: str = Field("case", min_length=1)  # the person (conditions' principal.subject; limits per person)
    id: str = Field("case", min_length=1)  # the credential's id (limits per credential)
    client: str | None = None  # an OAuth credential's client (principal.client)


class Case(_Strict):
    name: str = Field(min_length=1)
    credential: Credential = Credential()
    method: Literal["tools/call", "prompts/get", "resources/read"] = "tools/call"
    call: str = Field(min_length=1, description="the tool or prompt name, or the resource URI")
    arguments: dict[str, Any] = Field(default_factory=dict)
    expect: Literal["allow", "confirm", "deny", "limited"]
    workspace: str | None = None  # the workspace argument the forwarded call carries
    at: datetime | None = None  # when the call is made (conditions' `now`); default: now
    repeat: int = Field(1, ge=1, le=1000)  # made this many times in a row; the last one's outcome is compared
    decided_by: str | None = Field(None, description="the condition (`tools[0].conditions[1]`) or limit (its name) "
                                   "that must have decided")


class Cases(_Strict):
    default_workspace: str | None = None  # SCOPEGATE_DEFAULT_WORKSPACE, as the proxy would have it
    tool_prefix: tuple[str, ...] = ()  # SCOPEGATE_TOOL_PREFIX
    # The upstream's tools/list `tools`, where the policy leaves a decision to them (a workspace argument, or
    # `default: annotations`); none: as if the upstream listed no tools.
    upstream_tools: tuple[dict[str, Any], ...] = ()
    cases: tuple[Case, ...] = Field(min_length=1)


class CasesError(Exception):
    pass


@dataclass(frozen=True)
class Result:
    case: Case
    outcome: str  # allow | confirm | deny | limited
    workspace: str | None
    why: str
    decided_by: str = ""  # the condition or limit that decided, if one did

    @property
    def passed(self) -> bool:
        return self.outcome == self.case.expect and (self.case.workspace is None or
                                                     self.case.workspace == self.workspace) and \
            (self.case.decided_by is None or self.case.decided_by == self.decided_by)


def load_cases(path: str | Path) -> Cases:
    path = Path(path)
    try:
        located = source.read(path)
    except source.SourceError as exc:
        raise CasesError(str(exc)) from None
    try:
        return Cases.model_validate(located.data)
    except ValidationError as exc:
        raise CasesError("\n".join(source.report(path, located, source.schema_problems(Cases, exc)))) from None


def principal(policy: Policy, credential: Credential) -> Principal:
    grant = set(credential.scopes) | ceiling_scopes(credential.permissions, credential.org_capabilities)
    bound = credential.workspace
    workspaces = [bound] if bound is not None else credential.workspaces
    return Principal(
        subject=credential.subject, credential_id=credential.id,
        label=credential.client if credential.kind == "oauth" and credential.client else credential.subject,
        kind=credential.kind,
        scopes=effective_scopes(grant, credential.kind, ceiling=policy.ceiling(credential.role),
                                oauth_excluded=policy.oauth_excluded_scopes),
        workspaces=frozenset(workspaces) if workspaces is not None else None, bound_workspace=bound,
        default_workspace=credential.default_workspace or bound,
        projects=frozenset(credential.projects) if credential.projects is not None else None,
        permissions=dict(credential.permissions), role=credential.role,
    )


async def _run(policy: Policy, cases: Cases) -> list[Result]:
    live = LivePolicy(policy, Rules(policy, cases.tool_prefix))
    async def listed() -> list[Any]:
        return list(cases.upstream_tools)

    catalog = Catalog(listed)
    at: list[float] = [time.time()]
    guards = (ScopeGuard(live, catalog, clock=lambda: at[0]), WorkspaceGuard(live, catalog, cases.default_workspace),
              RateLimits(live, MemoryStore()))
    results = []
    for case in cases.cases:
        at[0] = case.at.timestamp() if case.at is not None else time.time()
        for _ in range(case.repeat):
            result = await _one(policy, guards, case)
        results.append(result)
    return results


async def _one(policy: Policy, guards: tuple[Any, ...], case: Case) -> Result:
    exchange = Exchange(request_id="case", session_id=None, protocol_version="2025-11-25",
                        upstream_headers=CIMultiDict(), principal=principal(policy, case.credential))
    params: dict[str, Any] = {_NAME_FIELD[case.method]: case.call}
    if case.method != "resources/read":
        params["arguments"] = dict(case.arguments)
    message: Any = {"jsonrpc": "2.0", "id": 1, "method": case.method, "params": params}
    why = ""
    for guard in guards:
        message = await guard(exchange, message)
        if isinstance(message, Answer):
            response = message.response or {}
            why = (response.get("error", {}).get("message")
                   or response.get("result", {}).get("content", [{}])[0].get("text", "refused"))
            break
    if isinstance(message, Answer):
        if message.decision == "limited":
            return Result(case, "limited", None, why, message.reason)
        return Result(case, "deny", None, why, message.reason.removeprefix("condition ")
                      if message.reason.startswith("condition ") else "")
    decision = exchange.decision
    held = decision is not None and decision.confirm
    workspace = message["params"].get("arguments", {}).get(policy.workspace_property)
    return Result(case, "confirm" if held else "allow", workspace if isinstance(workspace, str) else None,
                  decision.because if decision is not None else "", decision.condition if decision else "")


def run_cases(policy: Policy, cases: Cases) -> list[Result]:
    return asyncio.run(_run(policy, cases))
