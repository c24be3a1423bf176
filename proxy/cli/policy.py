"""`scopegate policy check FILE` and `scopegate policy explain`: the policy engine, from the command line.

`check` exits 0, or 2 with every error (file, path, what was expected). `explain` prints the decision for one
tool (or prompt, or resource) and a set of scopes or a token, and the rule that made it: the same function the
proxy runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from proxy.guards.cases import CasesError, load_cases, run_cases
from proxy.guards.scope import facts_of
from proxy.identity.offline import CredentialProblem, principal_for
from proxy.identity.principal import effective_scopes
from proxy.policy import lint
from proxy.policy.conditions import principal_facts
from proxy.policy.decide import Kind
from proxy.policy.explain import explain
from proxy.policy.model import Policy, PolicyError, load_policy, schema_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="check a policy file, or explain a decision")
    actions = policy.add_subparsers(dest="policy_command", required=True)
    check = actions.add_parser("check", help="validate a policy: exit 0 (warnings on stderr), or 2 with every error")
    check.add_argument("file")
    test = actions.add_parser("test", help="run table-driven decision cases against a policy: exit 0 all pass, 1 not")
    test.add_argument("file", help="policy file")
    test.add_argument("cases", help="cases file (YAML): credential, call, expected outcome")
    actions.add_parser("schema", help="print the policy file's JSON Schema (policies/policy.schema.json)")
    explain = actions.add_parser("explain", help="the decision for a tool, prompt or resource, and why")
    explain.add_argument("--policy", required=True, help="policy file")
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--scopes", help='the scopes held, space-separated ("journal:read bank:read")')
    who.add_argument("--token", help="a PAT (with --pat-file or SCOPEGATE_PAT_FILE) or a JWT of a configured issuer")
    explain.add_argument("--kind", choices=("pat", "jwt", "oauth", "admin_key"), default="pat",
                         help="with --scopes: the credential kind (oauth tokens never hold excluded scopes)")
    explain.add_argument("--role", help="with --scopes: the user's role, for the policy's ceiling")
    what = explain.add_mutually_exclusive_group(required=True)
    what.add_argument("--tool")
    what.add_argument("--prompt")
    what.add_argument("--resource")
    explain.add_argument("--workspace", help="the workspace the call names")
    explain.add_argument("--args", help='the call\'s arguments, a JSON object (\'{"amount": 1200}\'): the rule\'s '
                         "conditions are evaluated for them")
    explain.add_argument("--at", help="when the call is made, ISO 8601 (conditions' `now`; default: now)")
    explain.add_argument("--subject", default="explain", help="with --scopes: the person (principal.subject)")
    explain.add_argument("--client", help="with --scopes --kind oauth: the OAuth client (principal.client)")
    explain.add_argument("--pat-file", default=os.environ.get("SCOPEGATE_PAT_FILE"))
    explain.add_argument("--tool-prefix", default=os.environ.get("SCOPEGATE_TOOL_PREFIX", ""),
                         help="comma-separated SCOPEGATE_TOOL_PREFIX to apply")


def _load(path: str) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def _test(args: argparse.Namespace) -> None:
    policy = _load(args.file)
    try:
        cases = load_cases(args.cases)
    except CasesError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    results = run_cases(policy, cases)
    for result in results:
        case = result.case
        got = result.outcome + (f" in {result.workspace}" if result.workspace else "") + \
            (f" by {result.decided_by}" if result.decided_by else "")
        if result.passed:
            print(f"ok    {case.name}: {got}")
        else:
            wanted = case.expect + (f" in {case.workspace}" if case.workspace else "") + \
                (f" by {case.decided_by}" if case.decided_by else "")
            print(f"FAIL  {case.name}: expected {wanted}, got {got} ({result.why})")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} of {len(results)} cases pass")
    raise SystemExit(1 if failed else 0)


def _call(args: argparse.Namespace) -> tuple[dict[str, Any] | None, float | None]:
    """--args and --at, read; a bad one ends the command (exit 2) with what was expected."""
    arguments = None
    if args.args is not None:
        try:
            arguments = json.loads(args.args)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise SystemExit("scopegate policy explain: --args must be a JSON object, e.g. '{\"amount\": 1200}'")
    at = None
    if args.at is not None:
        try:
            moment = datetime.fromisoformat(args.at)
        except ValueError:
            raise SystemExit("scopegate policy explain: --at must be an ISO 8601 time, e.g. 2026-12-08T14:00:00Z") \
                from None
        at = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return arguments, at


def main(args: argparse.Namespace) -> None:
    if args.policy_command == "check":
        try:
            policy, warnings = lint.check(args.file)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            raise SystemExit(2) from None
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        counts = f"{len(policy.tools)} tool, {len(policy.prompts)} prompt, {len(policy.resources)} resource rules"
        print(f"{args.file}: ok ({policy.name or 'unnamed'}; {counts}; default {policy.default})")
        return

    if args.policy_command == "schema":
        print(schema_text())
        return
    if args.policy_command == "test":
        _test(args)
        return
    policy = _load(args.policy)
    if args.token:
        try:
            principal = principal_for(args.token, policy, args.pat_file)
        except CredentialProblem as exc:
            raise SystemExit(f"scopegate policy explain: {exc}") from None
        held = principal.scopes
        who = f"{principal.kind} {principal.credential_id} ({principal.label})"
    else:
        grant = args.scopes.split()
        held = effective_scopes(grant, args.kind, ceiling=policy.ceiling(args.role),
                                oauth_excluded=policy.oauth_excluded_scopes)
        principal = None
        who = f"{args.kind} holding {' '.join(grant) or '(nothing)'}" + (f", role {args.role}" if args.role else "")
    kind: Kind = "tool" if args.tool else "prompt" if args.prompt else "resource"
    name = args.tool or args.prompt or args.resource
    prefixes = tuple(p.strip() for p in args.tool_prefix.split(",") if p.strip())
    arguments, at = _call(args)
    if principal is not None:
        facts = facts_of(principal)
    else:
        facts = principal_facts(args.subject, args.kind, frozenset(held), args.workspace, args.role, args.client,
                                "explain")
    decision, lines = explain(policy, frozenset(held), kind, name, who, prefixes, arguments, facts, at)
    print("\n".join(lines))
    if args.workspace and principal is not None and principal.workspaces is not None:
        inside = args.workspace in principal.workspaces
        print(f"  workspace: {args.workspace} is {'' if inside else 'NOT '}one the credential holds")
    raise SystemExit(0 if decision.allowed else 1)
