"""The bundled demo: a ledger MCP server (official SDK, knows nothing of scopegate) and the `make run` launcher.

May import the edge and everything below it; only the CLI imports it.
"""
