# syntax=docker/dockerfile:1
# nvcf-worker-pytriton: the base image for NVCF functions served by Triton: PyTriton scripts, and
# Triton model repositories (python backend) through the nvcf-tritonserver launcher. It holds
# nvcf_worker with the pytriton extra (nvidia-pytriton, which ships a CPU/GPU tritonserver, and
# numpy) and a non-root user; extend it with FROM (docker/README.md). Build from the repository
# root:
#   docker build -f docker/pytriton.Dockerfile -t nvcf-worker-pytriton:latest .
# The base must have glibc >= 2.35, a shared libpython (libpython3.X.so) and a Python that
# nvidia-pytriton has a python-backend stub for (0.5.0: 3.8 to 3.11; 0.7.0: 3.8 to 3.13). The
# official python:3.X-slim-bookworm images qualify (glibc 2.36, built with --enable-shared);
# Alpine (musl) does not.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- wheels: the project and its dependencies, built for the base's Python and platform --------
FROM ${BASE_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ src/
COPY sidecar/ sidecar/
RUN python3 -m pip wheel --wheel-dir /wheels ".[pytriton]"

# -- the image: installed from those wheels only, no source tree, no build tools ---------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="nvcf-worker-pytriton" \
      org.opencontainers.image.description="Base image for NVCF Triton functions: nvcf_worker with PyTriton and the nvcf-tritonserver launcher" \
      org.opencontainers.image.licenses="Apache-2.0"

# PIP_BREAK_SYSTEM_PACKAGES: Ubuntu 24.04 bases refuse pip installs into the system Python
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
    python3 -m pip install --no-index --find-links /wheels "nvcf-worker[pytriton]"

# One UID for every nvcf-worker image (the sidecar's too): files the function writes under
# /var/inf belong to the user the sidecar runs as. Numeric USER, so Kubernetes can enforce
# runAsNonRoot. The home directory is writable: nvcf-tritonserver assembles the python backend
# in ~/.cache/nvcf-worker and PyTriton keeps its workspace in ~/.cache/pytriton. Nothing NVCF
# mounts (/var/inf/inputAssets, /var/inf/response, /config/models) is created here.
RUN groupadd --gid 10001 nvcf \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin nvcf

WORKDIR /app
USER 10001:10001

# Triton's HTTP (NVCF's default inference port), gRPC and metrics ports.
EXPOSE 8000 8001 8002

# Probes the server's health route, named by the sidecar's variables (defaults: port 8000,
# /v2/health/ready). NVCF itself does not use Docker health checks; docker run and compose do.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('INFERENCE_PORT', '8000') + os.environ.get('INFERENCE_HEALTH_ENDPOINT', '/v2/health/ready'), timeout=4)"]

# Serve the model repository NVCF mounts for a function's `models` (/config/models/<name>).
# A PyTriton function replaces this with its own script: CMD ["python3", "/app/server.py"].
CMD ["nvcf-tritonserver", "--model-repository", "/config/models"]
