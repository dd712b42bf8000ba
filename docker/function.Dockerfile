# syntax=docker/dockerfile:1
# nvcf-worker-function: the base image for NVCF functions written in Python (aiohttp, FastAPI,
# Starlette or any HTTP server). It holds the nvcf_worker library with its aiohttp and ASGI
# integrations and a non-root user; extend it with FROM (docker/README.md). Build from the
# repository root:
#   docker build -f docker/function.Dockerfile -t nvcf-worker-function:latest .
# Any Debian or Ubuntu image with Python >= 3.11 can be the base, e.g. an NGC framework image:
#   --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3

ARG BASE_IMAGE=python:3.11-slim

# -- wheels: the project and its dependencies, built for the base's Python and platform --------
FROM ${BASE_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ src/
COPY sidecar/ sidecar/
RUN python3 -m pip wheel --wheel-dir /wheels ".[aiohttp,asgi]"

# -- the image: installed from those wheels only, no source tree, no build tools ---------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="nvcf-worker-function" \
      org.opencontainers.image.description="Base image for NVCF functions: the nvcf_worker library with its aiohttp and ASGI integrations" \
      org.opencontainers.image.licenses="Apache-2.0"

# PIP_BREAK_SYSTEM_PACKAGES: NGC bases are Ubuntu 24.04, whose system Python refuses pip
# installs (PEP 668) although it is the only Python of the container. Ignored elsewhere.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# DL3013 (pin versions): /wheels holds exactly one nvcf-worker, the one built above, and
# --no-index keeps pip from looking anywhere else.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python3 -m pip install --no-index --find-links /wheels "nvcf-worker[aiohttp,asgi]"

# One UID for every nvcf-worker image (the sidecar's too): files the function writes under
# /var/inf belong to the user the sidecar runs as. Numeric USER, so Kubernetes can enforce
# runAsNonRoot. /var/inf/inputAssets and /var/inf/response are NOT created here: NVCF mounts
# them (volumes shared with the sidecar), and the sidecar creates each request's directories.
RUN groupadd --gid 10001 nvcf \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin nvcf

WORKDIR /app
USER 10001:10001

# NVCF's default inference port; 8080 and 8010 are reserved by NVCF in the pod.
EXPOSE 8000

# Probes the function's own health route, named by the sidecar's variables (defaults: port 8000,
# /v2/health/ready). NVCF itself does not use Docker health checks; docker run and compose do.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('INFERENCE_PORT', '8000') + os.environ.get('INFERENCE_HEALTH_ENDPOINT', '/v2/health/ready'), timeout=4)"]
