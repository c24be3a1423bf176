"""The HTTP edge and the request path: the aiohttp app, framing, forwarding, relaying (JSON and SSE), headers, TLS.

May import everything below it: guards, identity, policy, ops and the base modules; nothing imports the edge but
the CLI and the demo.
"""
