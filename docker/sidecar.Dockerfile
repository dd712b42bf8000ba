# syntax=docker/dockerfile:1
# nvcf-worker-sidecar: the utils sidecar (`nvcf-sidecar run`), a drop-in for NVIDIA's
# worker-utils container. It runs next to the function's container (same pod, same network
# namespace, shared /var/inf volumes) and is configured with NVIDIA's environment variables
# (docker/README.md, docs/sidecar.md). Build from the repository root:
#   docker build -f docker/sidecar.Dockerfile -t nvcf-worker-sidecar:latest .

ARG BASE_IMAGE=python:3.11-slim

# -- wheels: the project and its dependencies, built for the base's Python and platform --------
# Dependencies without a wheel for the platform (grpcio, orjson, watchdog on a rare
# architecture) are compiled here, so no compiler ever reaches the runtime image.
FROM ${BASE_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ src/
COPY sidecar/ sidecar/
RUN python3 -m pip wheel --wheel-dir /wheels ".[sidecar,fast]"

# -- the image: installed from those wheels only, no source tree, no build tools ---------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="nvcf-worker-sidecar" \
      org.opencontainers.image.description="The nvcf-worker utils sidecar: NVCF's worker wire protocol next to a function container" \
      org.opencontainers.image.licenses="Apache-2.0"

# PIP_BREAK_SYSTEM_PACKAGES: an Ubuntu 24.04 base refuses pip installs into its system Python
# (PEP 668) although it is the only Python of the container. Ignored elsewhere.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# DL3013 (pin versions): /wheels holds exactly one nvcf-worker, the one built above, and
# --no-index keeps pip from looking anywhere else.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python3 -m pip install --no-index --find-links /wheels "nvcf-worker[sidecar,fast]"

# The same UID as the function images, so both sides may write the shared request directories.
# The sidecar's own directories exist and belong to it: an empty Docker volume mounted on one of
# them starts out with that ownership. Under NVCF they are volumes the platform provides.
RUN groupadd --gid 10001 nvcf \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin nvcf \
    && mkdir -p /var/inf/inputAssets /var/inf/response /config/shared \
    && chown 10001:10001 /var/inf/inputAssets /var/inf/response /config/shared

WORKDIR /home/nvcf
USER 10001:10001

# HEALTH_PORT: the sidecar's /v1/health/live, /v1/health/ready and /metrics (default 8080).
EXPOSE 8080

# Ready = NATS connected, the work-queue consumer bound and the function's container healthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('HEALTH_PORT', '8080') + '/v1/health/ready', timeout=4)"]

ENTRYPOINT ["nvcf-sidecar", "run"]
