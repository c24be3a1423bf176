# A Python stdio MCP server under scopegate, in one container: scopegate starts the server as its child process
# (SCOPEGATE_UPSTREAM_COMMAND) and is the only way in. The server package is installed at build time, pinned, into
# a virtual environment of its own (its dependencies never meet scopegate's), so nothing is fetched at run time and
# the root filesystem stays read-only; what the server writes goes to the volumes.
#   docker build -t scopegate . && docker build -f docker/stdio-python.Dockerfile -t scopegate-git docker
#   docker run --read-only --tmpfs /tmp -v git-data:/data -v git-home:/home/scopegate -p 8000:8000 \
#     -e SCOPEGATE_POLICY=/policy/policy.yaml -e SCOPEGATE_PAT_FILE=/policy/pats.yaml -v "$PWD/policy:/policy:ro" \
#     scopegate-git
# Another server: --build-arg MCP_PACKAGE=NAME==VERSION --build-arg MCP_COMMAND='["its-bin", "arg"]'.
ARG SCOPEGATE_IMAGE=scopegate:latest
FROM ${SCOPEGATE_IMAGE}
ARG MCP_PACKAGE=mcp-server-git==2026.10.19
ARG MCP_COMMAND='["/opt/mcp/bin/mcp-server-git", "--repository", "/data"]'
USER 0
# hadolint ignore=DL3013
RUN python -m venv /opt/mcp \
    && /opt/mcp/bin/pip install --no-cache-dir "${MCP_PACKAGE}" \
    && mkdir -p /data /home/scopegate \
    && chown 10001:10001 /data /home/scopegate
# HOME on a volume: uv, pip and the server may keep caches there; /data is the server's own folder.
ENV HOME=/home/scopegate SCOPEGATE_UPSTREAM_COMMAND=${MCP_COMMAND}
VOLUME ["/data", "/home/scopegate"]
USER 10001:10001
EXPOSE 8000 9464
ENTRYPOINT ["scopegate", "serve"]
