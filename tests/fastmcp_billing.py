"""A FastMCP upstream for the confirmation tests: every tool returns a value, so every tool has an outputSchema
(an object model with nested `$defs`, a list, and a bare int that FastMCP wraps as `{"result": ...}`)."""

from __future__ import annotations

from typing import Any

import pytest
from fastmcp import FastMCP
from pydantic import BaseModel

from proxy.demo.run import free_port
from tests.conftest import Recorder, ThreadedServer, Upstream

POLICY = """
version: 1
name: fastmcp-billing
scopes: [mcp:read, mcp:write]
default: deny
tools:
  - {match: list_invoices, scopes: [mcp:read]}
  - {match: create_invoice, scopes: [mcp:read, mcp:write], effect: write}
  - {match: void_invoice, scopes: [mcp:read, mcp:write], effect: write}
"""


class Money(BaseModel):
    amount: int
    currency: str


class Invoice(BaseModel):
    number: int
    customer: str
    total: Money


def build_billing() -> Any:
    server = FastMCP("billing")
    invoices: list[Invoice] = []

    @server.tool
    def list_invoices() -> list[Invoice]:
        """Every invoice."""
        return invoices

    @server.tool
    def create_invoice(customer: str, amount: int, currency: str = "EUR") -> Invoice:
        """Create an invoice."""
        invoice = Invoice(number=len(invoices) + 1, customer=customer, total=Money(amount=amount, currency=currency))
        invoices.append(invoice)
        return invoice

    @server.tool
    def void_invoice(number: int) -> int:
        """Void an invoice; answers how many invoices are left."""
        invoices[:] = [i for i in invoices if i.number != number]
        return len(invoices)

    return server


@pytest.fixture(scope="module", name="billing")  # import billing_upstream to use it: the fixture is `billing`
def billing_upstream() -> Any:
    """The FastMCP upstream, behind a Recorder, on its own thread."""
    port = free_port()
    recorder = Recorder(build_billing().http_app(path="/mcp"))
    server = ThreadedServer(recorder, port)
    server.start()
    yield Upstream(f"http://127.0.0.1:{port}/mcp", recorder, port)
    server.stop()


def applied(recorder: Recorder, tool: str) -> list[dict]:
    return [c["params"] for c in recorder.calls("tools/call") if c["params"]["name"] == tool]
