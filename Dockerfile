# scopegate: a least-privilege reverse proxy for MCP servers.
# Build: docker build -t scopegate .    Run: see README ("Docker").

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY proxy ./proxy
# A wheel per dependency (OpenTelemetry included: tracing is then a matter of settings), at the versions CI tested
# (constraints.txt), built here so the final image needs no compiler or pip cache. The demo and tests stay out:
# the package excludes proxy.demo, and .dockerignore keeps tests/ from the build context.
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt '.[tracing]'

FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SCOPEGATE_LISTEN=0.0.0.0:8000 SCOPEGATE_METRICS_LISTEN=0.0.0.0:9464
COPY --from=build /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --no-index --find-links=/wheels 'scopegate[tracing]' \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin scopegate
# Nothing is written at run time (policy, PATs and certificates are mounted read-only; the audit trail goes to
# stdout), so the root filesystem can be read-only.
USER 10001:10001
EXPOSE 8000 9464
ENTRYPOINT ["scopegate", "serve"]
