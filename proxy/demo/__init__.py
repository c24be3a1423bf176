"""The bundled demo: a ledger MCP server and the `make run` launcher that puts scopegate in front of it."""
