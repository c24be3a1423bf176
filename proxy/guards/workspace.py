"""Guard: workspace (and project) boundaries on every workspace-scoped `tools/call`.

A tool is workspace-scoped when its rule says `inject`, `require` or `verify`; where no rule says `workspace:`, the
upstream's schema decides: the proxy's own catalog (fetched by the proxy before deciding, `catalog.py`) shows a
workspace argument, and the tool is treated as `inject`; a tool the upstream does not list is refused, and when the
schema cannot be had the call waits, then gets 503. Resource URIs whose rule names a `{workspace}` segment are
checked the same way (reads, subscriptions, listen streams). Without the argument,
`inject` supplies the credential's bound workspace, else its default one, else SCOPEGATE_DEFAULT_WORKSPACE; with
it (given or injected), the workspace must be one the credential holds: a bound credential only its own, and an
explicit `none` permission wins over every grant. Projects likewise, where the policy turns `check_projects` on.
Refusals are tool errors (`isError: true`) and nothing is forwarded. In 2026-07-28, an argument mirrored into an
`Mcp-Param-*` header (`x-mcp-header`) keeps body and header equal: a client header that disagrees is refused, and
the header follows whatever the proxy put in the body.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from proxy.exchange import Answer, Exchange, WorkspaceFact, tool_result
from proxy.guards.catalog import Catalog, CatalogUnavailable, unavailable
from proxy.guards.scope import FORBIDDEN, GATED, targets
from proxy.identity.principal import Principal
from proxy.jsonrpc import INVALID_PARAMS, Message, error
from proxy.policy.reload import LivePolicy

HEADER_MISMATCH = -32020
_HEADER_SAFE = re.compile(r"^[\x20-\x7E]*$")
_B64 = re.compile(r"^=\?base64\?(.*)\?=$")


def workspace_problem(principal: Principal, workspace: Any) -> str | None:
    """Why this credential may not act in `workspace`; None when it may. Pure."""
    if not isinstance(workspace, str) or not workspace:
        return "the workspace argument must be a non-empty string"
    if principal.permissions.get(workspace) == "none":
        return f"access to workspace {workspace!r} is denied for this credential"
    if principal.bound_workspace is not None and workspace != principal.bound_workspace:
        return f"this credential is bound to workspace {principal.bound_workspace!r}, not {workspace!r}"
    if principal.workspaces is not None and workspace not in principal.workspaces:
        return f"workspace {workspace!r} is not one this credential may use"
    return None


def project_problem(principal: Principal, project: Any) -> str | None:
    if not isinstance(project, str) or not project:
        return "the project argument must be a non-empty string"
    if principal.permissions.get(project) == "none":
        return f"access to project {project!r} is denied for this credential"
    if principal.projects is not None and project not in principal.projects:
        return f"project {project!r} is not one this credential may use"
    return None


def header_text(value: Any) -> str | None:
    """How a client mirrors an argument into a header (2026-07-28), before any base64 wrapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, str | int) else None


def encode_header(text: str) -> str:
    if _HEADER_SAFE.match(text) and text == text.strip():
        return text
    return f"=?base64?{base64.b64encode(text.encode()).decode()}?="


def decode_header(value: str) -> str:
    match = _B64.match(value)
    if not match:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return "\0invalid"  # matches no argument


class WorkspaceGuard:
    def __init__(self, live: LivePolicy, catalog: Catalog, default_workspace: str | None) -> None:
        self.live = live
        self.catalog = catalog
        self.default_workspace = default_workspace

    def resources(self, exchange: Exchange, message: Message) -> Answer | None:
        """A resource URI whose rule names a workspace segment (`ledger://{workspace}/…`) is checked like a
        workspace argument, in every method that names resources (reads, subscriptions, listen streams)."""
        assert exchange.principal is not None
        for kind, uri in targets(message["method"], message["params"]):  # the scope guard has checked them
            if kind != "resource":
                continue
            named, workspace = self.live.of(exchange).rules.resource_workspace(uri)
            if not named:
                continue
            problem = (workspace_problem(exchange.principal, workspace) if workspace is not None
                       else "the workspace segment is not valid percent-encoded UTF-8")
            exchange.workspaces.append(WorkspaceFact(uri, "verify", "refused" if problem else "verified",
                                                     workspace, problem or ""))
            if problem:
                return Answer(error(message.get("id"), FORBIDDEN, f"resource refused: {problem}",
                                    {"uri": uri, "requestId": exchange.request_id}),
                              http_status=403, decision="deny", reason="workspace")
        return None

    methods = frozenset(GATED)

    async def __call__(self, exchange: Exchange, message: Message) -> Message | Answer:
        method = message.get("method")
        if exchange.principal is None or method not in GATED:
            return message
        if method != "tools/call":
            # A completion's ref/resource is a template (`ledger://{workspaceId}/…`), not a resource in a workspace.
            refused = self.resources(exchange, message) if method != "completion/complete" else None
            return refused or message
        params = message["params"]
        tool, msg_id = params["name"], message.get("id")  # the scope guard has checked the name already
        policy = self.live.of(exchange).policy
        rule = self.live.of(exchange).rules.outcome("tool", tool)
        mode = rule.workspace if rule is not None else None  # None: the upstream's schema says
        modern = (exchange.protocol_version or "") >= "2026-07-28"
        facts = None
        if mode is None or (modern and (mode != "none" or policy.check_projects)):
            try:  # the proxy's own, current view of the upstream's schema; never one a client's list left behind
                facts = await self.catalog.facts(tool)
            except CatalogUnavailable:
                return unavailable(msg_id, exchange.request_id)
        if mode is None:
            if facts is None:
                return tool_result(exchange, msg_id, f"{tool} refused: the upstream does not list it, so whether it "
                                   "acts in a workspace cannot be known", error=True, decision="deny",
                                   reason="workspace")
            mode = "inject" if policy.workspace_property in facts.properties else "none"
        if mode == "none" and not policy.check_projects:
            return message
        args = params.get("arguments", {})
        if not isinstance(args, dict):
            return Answer(error(msg_id, INVALID_PARAMS, "params.arguments must be an object"), http_status=400,
                          decision="invalid")
        mirrored = facts.properties if facts is not None else {}
        if modern:
            for prop in (policy.workspace_property, policy.project_property):
                token = mirrored.get(prop)
                sent = exchange.upstream_headers.get(f"Mcp-Param-{token}") if token else None
                if sent is not None and decode_header(sent) != header_text(args.get(prop)):
                    return Answer(error(msg_id, HEADER_MISMATCH, f"header Mcp-Param-{token} disagrees with "
                                        f"arguments.{prop}"), http_status=400, decision="invalid",
                                  reason="header mismatch")
        record = WorkspaceFact(tool, mode)
        exchange.workspaces.append(record)
        principal = exchange.principal
        prop = policy.workspace_property
        if mode == "verify" and prop not in args:
            record.action = "absent"  # verify checks a workspace that is named; the upstream judges its absence
        elif mode != "none":
            if prop not in args:
                value = None
                if mode == "inject":
                    value = principal.bound_workspace or principal.default_workspace or self.default_workspace
                if value is None:
                    record.action, record.reason = "refused", "missing"
                    text = (f"{tool} needs the {prop} argument: this credential is not bound to a workspace, so "
                            "name the workspace to act in")
                    return tool_result(exchange, msg_id, text, error=True, decision="deny", reason="workspace")
                args = {**args, prop: value}
                params["arguments"] = args
                record.action = "injected"
            problem = workspace_problem(principal, args[prop])
            record.workspace = args[prop] if isinstance(args[prop], str) else None
            if problem:
                record.action, record.reason = "refused", problem
                return tool_result(exchange, msg_id, f"{tool} refused: {problem}", error=True, decision="deny",
                                   reason="workspace")
            record.action = record.action or "verified"
        project = args.get(policy.project_property)
        record.project = project if isinstance(project, str) else None
        if policy.check_projects and policy.project_property in args:
            problem = project_problem(principal, args[policy.project_property])
            if problem:
                record.action, record.reason = "refused", problem
                return tool_result(exchange, msg_id, f"{tool} refused: {problem}", error=True, decision="deny",
                                   reason="workspace")
        if modern:
            for name in (prop, policy.project_property):
                token = mirrored.get(name)
                text = header_text(args.get(name))
                if token and text is not None:
                    exchange.upstream_headers[f"Mcp-Param-{token}"] = encode_header(text)
        return message
