# syntax=docker/dockerfile:1.7
# One image for every Python service of the gateway (ingest-http, ingest-mqtt,
# forwarder, cli); compose.yaml picks the service with its `command`
# (`python -m iotgw_<service>`). Built from the repository root:
#   docker buildx build --platform linux/arm64,linux/amd64 -t iotgw/gateway:0.1.0 .
# Both stages use multi-arch base images and every dependency has arm64 and
# amd64 wheels, so the same file builds natively on the Pi 5 and on a PC.
ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# --- build: a virtualenv in /opt/venv, dependencies first -------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Layer 1: third-party dependencies only, from the lock file and the members'
# pyproject.toml files. It is rebuilt only when uv.lock or a pyproject changes,
# not when the code does.
COPY pyproject.toml uv.lock ./
COPY libs/core/pyproject.toml libs/core/
COPY services/ingest_http/pyproject.toml services/ingest_http/
COPY services/ingest_mqtt/pyproject.toml services/ingest_mqtt/
COPY services/forwarder/pyproject.toml services/forwarder/
COPY services/cli/pyproject.toml services/cli/
COPY services/supervisor/pyproject.toml services/supervisor/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-install-workspace --no-editable
# Layer 2: the gateway's own packages (not editable: the runtime stage copies
# only /opt/venv, never /src).
COPY libs libs
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable

# --- runtime: the virtualenv, a non-root user, nothing else ----------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG IOTGW_UID=10001
RUN groupadd --system --gid ${IOTGW_UID} iotgw \
 && useradd --system --uid ${IOTGW_UID} --gid iotgw --home-dir /var/lib/iotgw --no-create-home iotgw \
 && mkdir -p /var/lib/iotgw/spool /var/lib/iotgw/outbox /var/lib/iotgw/quarantine /var/lib/iotgw/devices \
 && chown -R iotgw:iotgw /var/lib/iotgw
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IOTGW_SPOOL_PATH=/var/lib/iotgw/spool/spool.db \
    IOTGW_OUTBOX_DIR=/var/lib/iotgw/outbox \
    IOTGW_QUARANTINE_PATH=/var/lib/iotgw/quarantine/quarantine.db \
    IOTGW_REGISTRY_PATH=/var/lib/iotgw/devices/registry.toml
WORKDIR /var/lib/iotgw
USER iotgw:iotgw
# The spool (and the outbox of the file sink) must outlive the container.
VOLUME ["/var/lib/iotgw/spool"]
CMD ["python", "-m", "iotgw_ingest_http"]
