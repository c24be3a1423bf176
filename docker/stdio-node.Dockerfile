# A Node stdio MCP server under scopegate, in one container: scopegate starts the server as its child process
# (SCOPEGATE_UPSTREAM_COMMAND) and is the only way in. The server package is installed at build time, pinned, so
# nothing is fetched at run time and the root filesystem stays read-only; what the server writes goes to the volumes.
#   docker build -t scopegate . && docker build -f docker/stdio-node.Dockerfile -t scopegate-fs docker
#   docker run --read-only --tmpfs /tmp -v fs-data:/data -v fs-home:/home/scopegate -p 8000:8000 \
#     -e SCOPEGATE_POLICY=/policy/policy.yaml -e SCOPEGATE_PAT_FILE=/policy/pats.yaml -v "$PWD/policy:/policy:ro" \
#     scopegate-fs
# Another server: --build-arg MCP_PACKAGE=NAME@VERSION --build-arg MCP_COMMAND='["its-bin", "arg"]'.
ARG SCOPEGATE_IMAGE=scopegate:latest
FROM node:20-bookworm-slim AS node

FROM ${SCOPEGATE_IMAGE}
ARG MCP_PACKAGE=@modelcontextprotocol/server-filesystem@2026.8.31
ARG MCP_COMMAND='["mcp-server-filesystem", "/data"]'
USER 0
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
# The package (pinned by MCP_PACKAGE) and its dependencies, once, as root (the server never writes its own code);
# npm's cache is dropped.
# hadolint ignore=DL3016
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && npm install --global --omit=dev --no-audit --no-fund "${MCP_PACKAGE}" \
    && rm -rf /root/.npm \
    && mkdir -p /data /home/scopegate \
    && chown 10001:10001 /data /home/scopegate
# HOME on a volume: npm, npx and the server may keep caches there; /data is the server's own folder.
ENV HOME=/home/scopegate SCOPEGATE_UPSTREAM_COMMAND=${MCP_COMMAND} SCOPEGATE_UPSTREAM_ENV=NODE_OPTIONS
VOLUME ["/data", "/home/scopegate"]
USER 10001:10001
EXPOSE 8000 9464
ENTRYPOINT ["scopegate", "serve"]
