"""scopegate: a least-privilege reverse proxy for MCP servers."""

__version__ = "0.1.0"
