"""stdio upstreams: scopegate starts the MCP server as child processes and presents them to its own request path as a
Streamable HTTP upstream on loopback (`bridge.py`), so the pipeline, the relay and the SSE code are the same for
both kinds of upstream. `rules.py` holds the pure decisions, `child.py` one process."""
