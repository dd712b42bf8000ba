# syntax=docker/dockerfile:1
# nvcf-worker-platform: the platform (`nvcf-sidecar platform`): invocation API, nvcf.Worker
# gRPC and, with --kubernetes FILE, the worker pods of deployed functions. The Helm chart of
# deploy/helm/nvcf runs it. Build from the repository root:
#   docker build -f docker/platform.Dockerfile -t nvcf-worker-platform:latest .

ARG BASE_IMAGE=python:3.11-slim

# -- wheels: the project and its dependencies, built for the base's Python and platform --------
FROM ${BASE_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ src/
COPY sidecar/ sidecar/
COPY platform/ platform/
RUN python3 -m pip wheel --wheel-dir /wheels ".[platform,fast,kubernetes]"

# -- the image: installed from those wheels only, no source tree, no build tools ---------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="nvcf-worker-platform" \
      org.opencontainers.image.description="The nvcf-worker platform: NVCF's invocation API and worker control plane" \
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
    python3 -m pip install --no-index --find-links /wheels "nvcf-worker[platform,fast,kubernetes]"

# The same numeric user as the other images, so Kubernetes can enforce runAsNonRoot.
RUN groupadd --gid 10001 nvcf \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin nvcf

WORKDIR /home/nvcf
USER 10001:10001

# Listen on every interface: the platform's default, 127.0.0.1, is unreachable from outside
# the container. A --host flag still wins.
ENV NVCF_PLATFORM_HOST=0.0.0.0

# NVCF_PLATFORM_PORT: invocation API, attach endpoints, /health (default 8080); gRPC: 9090;
# the lean attach listener when NVCF_PLATFORM_ATTACH_PORT asks for it (the Helm chart: 8081).
EXPOSE 8080 9090 8081

# Healthy = serving and connected to NATS (GET /health answers 200).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('NVCF_PLATFORM_PORT', '8080') + '/health', timeout=4)"]

ENTRYPOINT ["nvcf-sidecar", "platform"]
