"""A small ledger MCP server: the demo upstream that `make run` fronts and the end-to-end tests drive.

It is an ordinary, unmodified MCP server written with the official SDK, in the module:action style of
policies/ledger-scopes.yaml: read tools, write tools (one with a dry-run argument), one destructive tool,
workspace-scoped tools that take `workspaceId`, one tool that streams progress, honest annotations, and the four
ledger skills as prompts.
It knows nothing about scopegate's guards; everything it trusts arrives as plain arguments, except, when it is
started with --identity-jwks, who acted: scopegate's signed identity assertion (policy `upstream_identity:`), which
it verifies with scopegate's JWKS (`IdentityCheck`, `verify_identity`) and records on each journal entry and vendor
it creates. A request without one acts for nobody in particular, as before; a bad one is refused (401).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field

from proxy.demo.event_store import resumable_app

IDENTITY = "scopegate_identity"  # where verify_identity leaves the verified claims: the ASGI scope's state

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


@dataclass
class Books:
    """One workspace's books, in memory; the demo needs believable data, not persistence."""

    accounts: dict[str, str] = field(
        default_factory=lambda: {
            "1000": "Bank",
            "1200": "Accounts receivable",
            "2000": "Accounts payable",
            "4000": "Sales",
            "6000": "Office expenses",
        }
    )
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    vendors: dict[str, dict[str, Any]] = field(default_factory=dict)
    bank: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "bt-1": {"id": "bt-1", "date": "2026-10-03", "amount": -120.0, "text": "Office supplies", "matched": None},
            "bt-2": {"id": "bt-2", "date": "2026-10-09", "amount": 2500.0, "text": "Invoice 1042", "matched": None},
        }
    )
    locked_periods: set[str] = field(default_factory=set)


class Ledger:
    def __init__(self) -> None:
        self.books: defaultdict[str, Books] = defaultdict(Books)
        self._ids = itertools.count(1)

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"


def _balance(lines: list[dict[str, Any]]) -> float:
    return round(sum(float(line.get("debit", 0)) - float(line.get("credit", 0)) for line in lines), 2)


@dataclass
class IdentityCheck:
    """What a server must check of scopegate's assertion: the signature, with a key of scopegate's JWKS named by the
    token's `kid` (fetched, cached, fetched again for a key it does not know yet: a rotation); only the algorithms
    scopegate signs with; `aud` this server; `iss` scopegate's public URL; `exp` (and `iat`) present and not past."""

    jwks_url: str
    issuer: str
    audience: str
    header: str = "x-scopegate-identity"
    leeway: float = 5.0  # seconds of clock difference tolerated
    _keys: Any = field(default=None, repr=False)

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims; raises jwt.PyJWTError (jwt.InvalidTokenError, jwt.PyJWKClientError) otherwise.
        Blocking (the first call fetches the JWKS): run it in a thread."""
        import jwt

        if self._keys is None:
            self._keys = jwt.PyJWKClient(self.jwks_url, lifespan=300, timeout=5)
        key = self._keys.get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=["ES256", "EdDSA"], audience=self.audience, issuer=self.issuer,
                          leeway=self.leeway, options={"require": ["exp", "iat", "iss", "aud", "sub"]})


def verify_identity(app: Any, check: IdentityCheck) -> Any:
    """ASGI wrapper: a request that carries the assertion is let in only if it verifies, and its claims go with it
    (the scope's state) to the tools; one without it is let in as before."""
    import jwt

    name = check.header.lower().encode("latin-1")

    async def guarded(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = [value for key, value in scope["headers"] if key.lower() == name]
            if given:
                try:
                    if len(given) > 1:
                        raise jwt.InvalidTokenError("more than one assertion")
                    claims = await asyncio.to_thread(check.verify, given[0].decode("latin-1"))
                except jwt.PyJWTError as exc:
                    body = orjson.dumps({"error": "invalid identity assertion", "reason": type(exc).__name__})
                    await send({"type": "http.response.start", "status": 401,
                                "headers": [(b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": body})
                    return
                scope = {**scope, "state": {**scope.get("state", {}), IDENTITY: claims}}
        await app(scope, receive, send)

    return guarded


def acted_by(ctx: Context | None) -> dict[str, Any] | None:
    """Who the verified assertion of this request says acted (None without one): the person, the credential, and
    for a confirmed or approved write the approval and the request it came in."""
    request = ctx.request_context.request if ctx is not None else None
    state = getattr(request, "scope", {}).get("state") or {}
    claims = state.get(IDENTITY)
    if claims is None:
        return None
    approval = claims.get("approval")
    approvals = approval if isinstance(approval, list) else [approval] if approval else []
    return {"subject": claims["sub"], "credential": (claims.get("cred") or {}).get("id"),
            "approval": [a.get("id") for a in approvals] if len(approvals) > 1 else
            (approvals[0].get("id") if approvals else None),
            "approved_by": approvals[0].get("by") if approvals else None, "request": claims.get("rid")}


def build_server(ledger: Ledger | None = None) -> MCPServer:
    ledger = ledger or Ledger()
    server = MCPServer("demo-ledger", instructions="A demo double-entry ledger with workspaces.")

    @server.tool(annotations=READ)
    def list_accounts(workspaceId: str) -> dict[str, Any]:
        """List the chart of accounts of a workspace."""
        return {"workspaceId": workspaceId, "accounts": ledger.books[workspaceId].accounts}

    @server.tool(annotations=READ)
    def list_journal_entries(workspaceId: str, limit: int = 20) -> dict[str, Any]:
        """List the most recent journal entries of a workspace."""
        entries = list(ledger.books[workspaceId].entries.values())[-limit:]
        return {"workspaceId": workspaceId, "entries": entries}

    @server.tool(annotations=READ)
    def get_trial_balance(workspaceId: str) -> dict[str, Any]:
        """Sum debits minus credits per account over all journal entries."""
        totals: defaultdict[str, float] = defaultdict(float)
        for entry in ledger.books[workspaceId].entries.values():
            for line in entry["lines"]:
                totals[line["account"]] += float(line.get("debit", 0)) - float(line.get("credit", 0))
        return {"workspaceId": workspaceId, "balances": {k: round(v, 2) for k, v in sorted(totals.items())}}

    @server.tool(annotations=READ)
    def list_bank_transactions(workspaceId: str, unmatched_only: bool = False) -> dict[str, Any]:
        """List imported bank transactions."""
        txs = list(ledger.books[workspaceId].bank.values())
        if unmatched_only:
            txs = [t for t in txs if t["matched"] is None]
        return {"workspaceId": workspaceId, "transactions": txs}

    @server.tool(annotations=READ)
    def get_period_status(
        workspaceId: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Workspace"})], period: str
    ) -> dict[str, Any]:
        """Tell whether an accounting period (YYYY-MM) is open or locked."""
        locked = period in ledger.books[workspaceId].locked_periods
        return {"workspaceId": workspaceId, "period": period, "status": "locked" if locked else "open"}

    @server.tool(annotations=WRITE)
    def create_journal_entry(
        workspaceId: str, date: str, memo: str, lines: list[dict[str, Any]], dry_run: bool = False,
        ctx: Context | None = None,
    ) -> dict[str, Any]:
        """Post a balanced journal entry. Each line is {account, debit} or {account, credit}.
        With dry_run the entry is checked and described, not posted."""
        books = ledger.books[workspaceId]
        if date[:7] in books.locked_periods:
            raise ValueError(f"period {date[:7]} is locked")
        unknown = sorted({str(line.get("account")) for line in lines} - books.accounts.keys())
        if unknown:
            raise ValueError(f"unknown accounts: {', '.join(unknown)}")
        if _balance(lines) != 0:
            raise ValueError(f"entry does not balance (difference {_balance(lines)})")
        entry = {"date": date, "memo": memo, "lines": lines}
        if dry_run:
            return {"dry_run": True, "would_post": entry, "workspaceId": workspaceId}
        entry_id = ledger.next_id("je")
        by = acted_by(ctx)
        books.entries[entry_id] = {"id": entry_id, **entry, **({"by": by} if by else {})}
        return {"posted": books.entries[entry_id], "workspaceId": workspaceId}

    @server.tool(annotations=WRITE)
    def reconcile_bank_transaction(workspaceId: str, transaction_id: str, journal_entry_id: str) -> dict[str, Any]:
        """Match a bank transaction to a journal entry."""
        books = ledger.books[workspaceId]
        if transaction_id not in books.bank:
            raise ValueError(f"no bank transaction {transaction_id}")
        if journal_entry_id not in books.entries:
            raise ValueError(f"no journal entry {journal_entry_id}")
        books.bank[transaction_id]["matched"] = journal_entry_id
        return {"reconciled": books.bank[transaction_id], "workspaceId": workspaceId}

    @server.tool(annotations=WRITE)
    def create_vendor(workspaceId: str, name: str, iban: str = "", ctx: Context | None = None) -> dict[str, Any]:
        """Create a vendor (supplier) record for payables."""
        vendor_id = ledger.next_id("v")
        by = acted_by(ctx)
        ledger.books[workspaceId].vendors[vendor_id] = {"id": vendor_id, "name": name, "iban": iban,
                                                        **({"by": by} if by else {})}
        return {"vendor": ledger.books[workspaceId].vendors[vendor_id], "workspaceId": workspaceId}

    @server.tool(annotations=WRITE)
    def lock_period(workspaceId: str, period: str) -> dict[str, Any]:
        """Lock an accounting period (YYYY-MM) so no entry can be posted into it."""
        ledger.books[workspaceId].locked_periods.add(period)
        return {"workspaceId": workspaceId, "period": period, "status": "locked"}

    @server.tool(annotations=DESTRUCTIVE)
    def delete_journal_entry(workspaceId: str, entry_id: str) -> dict[str, Any]:
        """Delete a journal entry for good."""
        removed = ledger.books[workspaceId].entries.pop(entry_id, None)
        return {"deleted": removed is not None, "entry_id": entry_id, "workspaceId": workspaceId}

    @server.tool(annotations=READ)
    async def run_month_end_report(workspaceId: str, period: str, steps: int = 5, delay: float = 0.2,
                                   ctx: Context | None = None) -> dict[str, Any]:
        """Build the month-end report, reporting progress after each step."""
        for step in range(1, steps + 1):
            await asyncio.sleep(delay)
            if ctx is not None:
                await ctx.report_progress(step, steps, f"step {step} of {steps}")
        return {"workspaceId": workspaceId, "period": period, "entries": len(ledger.books[workspaceId].entries)}

    # Organisation-level tools (the workspace app's org capabilities gate these in the ceiling-style policy).
    @server.tool(annotations=WRITE)
    def invite_member(email: str, role: str = "member") -> dict[str, Any]:
        """Invite a person into the organisation."""
        return {"invited": email, "role": role}

    @server.tool(annotations=WRITE)
    def change_billing_plan(plan: str, dry_run: bool = False) -> dict[str, Any]:
        """Change the subscription plan; with dry_run, estimate the cost change first."""
        prices = {"starter": 19, "team": 49, "enterprise": 199}
        if plan not in prices:
            raise ValueError(f"unknown plan {plan!r}; choose one of {', '.join(prices)}")
        if dry_run:
            return {"dry_run": True, "plan": plan, "monthly_price": prices[plan]}
        return {"plan": plan, "monthly_price": prices[plan], "charged": True}

    @server.tool(annotations=WRITE)
    def rebuild_knowledge_graph(workspaceId: str, projectId: str = "") -> dict[str, Any]:
        """Rebuild the knowledge graph of a workspace (or of one project in it)."""
        books = ledger.books[workspaceId]
        nodes = len(books.accounts) + len(books.vendors) + len(books.entries)
        return {"workspaceId": workspaceId, "projectId": projectId or None, "nodes": nodes}

    @server.tool(annotations=WRITE)
    async def enable_payroll_module(ctx: Context) -> dict[str, Any]:
        """Enable the payroll module: adds its tools and tells connected clients the tool list changed."""
        if "list_payslips" not in {t.name for t in await server.list_tools()}:

            def list_payslips(workspaceId: str, month: str) -> dict[str, Any]:
                """List the payslips of a month."""
                return {"workspaceId": workspaceId, "month": month, "payslips": []}

            server.add_tool(list_payslips, annotations=READ)
        await ctx.request_context.session.send_tool_list_changed()  # 2025-11-25: on this session's stream
        with contextlib.suppress(ValueError):  # 2026-07-28: to every subscriptions/listen stream that asked
            await ctx.notify_tools_changed()
        return {"enabled": "payroll"}

    def accounts_of(workspace: str) -> Callable[[], dict[str, str]]:
        return lambda: ledger.books[workspace].accounts

    for workspace in ("acme", "globex"):  # the demo's two workspaces, listed in resources/list as well
        server.resource(f"ledger://{workspace}/chart-of-accounts", name=f"{workspace} chart of accounts",
                        mime_type="application/json")(accounts_of(workspace))

    @server.resource("ledger://{workspaceId}/chart-of-accounts", mime_type="application/json")
    def chart_of_accounts(workspaceId: str) -> dict[str, str]:
        """The chart of accounts as a resource."""
        return ledger.books[workspaceId].accounts

    @server.prompt()
    def process_incoming_invoice(vendor: str, amount: str) -> str:
        """Book a supplier invoice: create the payable and its journal entry."""
        return (f"Book the incoming invoice from {vendor} for {amount}: find or create the vendor, post a journal "
                "entry debiting expenses and crediting accounts payable, then show the entry.")

    @server.prompt()
    def process_outgoing_invoice(customer: str, amount: str) -> str:
        """Invoice a customer and record the receivable."""
        return (f"Invoice {customer} for {amount}: post a journal entry debiting accounts receivable and crediting "
                "sales, then match the payment when it arrives in the bank.")

    @server.prompt()
    def reconcile_bank_transactions() -> str:
        """Match unmatched bank transactions to journal entries."""
        return ("List the unmatched bank transactions, find the journal entry for each, and reconcile them one by "
                "one; post a new entry where none exists.")

    @server.prompt()
    def tenant_setup_migration(source_system: str) -> str:
        """Migrate a tenant's opening balances and configuration from another system."""
        return f"Import the chart of accounts and opening balances from {source_system}, then lock prior periods."

    return server


def require_app_token(app: Any, token: str) -> Any:
    """ASGI wrapper: the commerce-app style upstream answers 401 unless `x-app-token` is exactly `token`."""
    import hmac

    expected = token.encode()

    async def guarded(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"x-app-token", b"")
            if not hmac.compare_digest(given, expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": b'{"error":"invalid app token"}'})
                return
        await app(scope, receive, send)

    return guarded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the demo ledger MCP server (Streamable HTTP).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--stateless", action="store_true", help="no sessions (stateless HTTP)")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    parser.add_argument("--app-token-env", metavar="VAR",
                        help="require the x-app-token header to equal this environment variable's value")
    parser.add_argument("--identity-jwks", metavar="URL",
                        help="verify scopegate's identity assertions with this JWKS (and record who acted)")
    parser.add_argument("--identity-issuer", metavar="URL", help="their `iss`: scopegate's public URL")
    parser.add_argument("--identity-audience", metavar="URL", help="their `aud`: this server's URL")
    parser.add_argument("--identity-header", default="x-scopegate-identity", metavar="NAME")
    args = parser.parse_args(argv)
    if args.identity_jwks and not (args.identity_issuer and args.identity_audience):
        parser.error("--identity-jwks needs --identity-issuer and --identity-audience")
    import uvicorn

    options = {"json_response": args.json_response, "host": args.host}
    if args.stateless:
        app = build_server().streamable_http_app(stateless_http=True, **options)
    else:
        app = resumable_app(build_server(), **options)
    if args.app_token_env:
        app = require_app_token(app, os.environ[args.app_token_env])
    if args.identity_jwks:
        app = verify_identity(app, IdentityCheck(args.identity_jwks, args.identity_issuer, args.identity_audience,
                                                 args.identity_header))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
