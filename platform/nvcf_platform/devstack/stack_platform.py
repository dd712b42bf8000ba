"""The platform as a child of the local stack: one command, the same on every start.

`PlatformPlan` fixes what `nvcf-sidecar platform` is started with (ports chosen once, the registry
file and image catalog, NATS, file-backed streams, the URL-signing secret file), so that a restarted platform keeps
every URL the sidecars and callers hold; `wait_listening` reads its ready file.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nvcf_platform.devstack.stack_process import StackError, StackProcess
from nvcf_platform.devstack.stack_spec import HOST, sidecar_executable

__all__ = [
    "PLATFORM_RESTART_TIMEOUT",
    "PlatformEndpoints",
    "PlatformPlan",
    "listening_socket",
    "wait_listening",
]

PLATFORM_RESTART_TIMEOUT: Final = 30.0
"""How long a restarted platform may take to listen again (it reconnects and re-provisions)."""
_POLL_INTERVAL: Final = 0.05


@dataclass(frozen=True)
class PlatformEndpoints:
    """Where a platform listens, as its ready file says."""

    base_url: str
    grpc_url: str
    attach_url: str
    """Where workers attach (the lean attach listener, or `base_url` without it)."""
    grpc_proxy_address: str | None = None
    """`host:port` of the gRPC entry point, when the platform runs one (`--grpc-proxy-port`)."""


@dataclass(frozen=True)
class PlatformPlan:
    """How the stack runs its platform; nothing in it changes between starts.

    `http_port` and `grpc_port` are real ports, never 0: work items carry the attach URL (HTTP
    port), presigned URLs the HTTP port, and the sidecars were given the gRPC URL, so a platform
    started again must listen where the first one did. State that outlives a restart lives in the
    work directory: file-backed streams (in NATS's store) and the URL-signing secret file.
    """

    registry: Path | None
    """The function registry file; None: none (every function comes through the API)."""
    ready_file: Path
    nats_url: str
    http_port: int
    grpc_port: int
    api_key: str
    url_signing_secret_file: Path
    extra_args: Sequence[str] = ()
    """Appended last, so they win (e.g. `--consumer-ack-wait 2`)."""
    images: Path | None = None
    """The image and model catalog (`--images`); None: an empty one."""
    instances_dir: Path | None = None
    """Where the platform's deployed instances live (`--instances-dir`)."""
    replicas: int = 1
    """`--replicas` of the platform's streams and buckets (3 on a NATS cluster)."""
    attach_port: int | None = None
    """The lean attach listener's port (`--attach-port`); None: workers attach on `http_port`."""
    http_fd: int | None = None
    """The stack's listening socket on `http_port`, inherited by every platform process: while
    one stops and the next starts, callers' connections wait in its backlog instead of being
    refused or reset."""

    def __post_init__(self) -> None:
        if not (0 < self.http_port < 65536 and 0 < self.grpc_port < 65536):
            raise StackError(
                f"the platform needs fixed ports, not {self.http_port} and {self.grpc_port}"
            )

    def command(self) -> list[str]:
        """`nvcf-sidecar platform ...` with every flag of the plan."""
        return [
            *sidecar_executable(),
            "platform",
            *(() if self.registry is None else ("--config", str(self.registry))),
            *(() if self.images is None else ("--images", str(self.images))),
            *(() if self.instances_dir is None else ("--instances-dir", str(self.instances_dir))),
            *("--nats", self.nats_url, "--host", HOST),
            *("--port", str(self.http_port), "--grpc-port", str(self.grpc_port)),
            *(() if self.attach_port is None else ("--attach-port", str(self.attach_port))),
            *("--api-key", self.api_key, "--ready-file", str(self.ready_file)),
            *("--stream-storage", "file"),
            *("--url-signing-secret-file", str(self.url_signing_secret_file)),
            *(() if self.http_fd is None else ("--http-fd", str(self.http_fd))),
            *(() if self.replicas == 1 else ("--replicas", str(self.replicas))),
            *self.extra_args,
        ]


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port for the platform processes to inherit, one after the
    other (a deep backlog: connections queue there while a platform restarts)."""
    try:
        return socket.create_server((host, port), backlog=1024)
    except OSError as error:
        raise StackError(f"cannot listen on {host}:{port} for the platform: {error}") from None


def wait_listening(
    process: StackProcess,
    ready_file: Path,
    deadline: float,
    *,
    expected: PlatformEndpoints | None = None,
) -> PlatformEndpoints:
    """Wait for the platform's ready file (written once both listeners accept connections).

    The caller removes a stale file before starting the process. Raises ChildExited when the
    platform exits first, StackError at `deadline` or when it listens elsewhere than `expected`.
    """
    while not ready_file.exists():
        process.check_running()
        if time.monotonic() >= deadline:
            raise StackError(
                f"platform did not write {ready_file} in time; log ends with:\n{process.log_tail()}"
            )
        time.sleep(_POLL_INTERVAL)
    document = json.loads(ready_file.read_text())
    endpoints = PlatformEndpoints(
        base_url=document["base_url"],
        grpc_url=document["grpc_url"],
        attach_url=document["attach_url"],
        grpc_proxy_address=document.get("grpc_proxy_address"),
    )
    if expected is not None and (
        endpoints.base_url,
        endpoints.grpc_url,
        endpoints.attach_url,
    ) != (expected.base_url, expected.grpc_url, expected.attach_url):
        raise StackError(f"the platform listens at {endpoints}, not at {expected}")
    return endpoints
