"""What the local stack runs: `FunctionSpec` (one function version, its server and sidecars), and
what the stack derives from specs: the platform's registry file and each sidecar's environment.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nvcf_platform.control.validation import GRPC_INFERENCE_URL
from nvcf_platform.devstack.stack_process import StackError
from nvcf_worker.integrations.tritonserver import libpython_dir
from nvcf_worker.secrets import SECRETS_PATH_ENV

__all__ = [
    "HOST",
    "FunctionSpec",
    "choose_ports",
    "free_port",
    "process_labels",
    "registry_toml",
    "server_environment",
    "sidecar_environment",
    "sidecar_executable",
]

HOST: Final = "127.0.0.1"
_WORKER_TOKEN: Final = "nvcf-local-worker-token"  # the platform's gRPC stand-in accepts any
# Inherited variables that would silently change what a sidecar of the stack does.
# fmt: off
_DROPPED_SIDECAR_ENV: Final = frozenset({
    "KUBERNETES_SERVICE_HOST", "INFERENCE_HEALTH_PORT", "INFERENCE_SERVICE_NAME",
    "INFERENCE_NAMESPACE", "HELM_CHART_INFERENCE_SERVICE_NAME", "HELM_CHART_NAMESPACE",
    "NKEY_SEED", "V3_BACKWARDS_COMPATIBILITY_DISABLED",
})
# fmt: on


def _new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class FunctionSpec:
    """One function version served by a local inference server and its sidecar(s)."""

    command: Sequence[str]
    """Starts the author's inference server (run in its own process group)."""
    inference_port: int
    """Where that server listens on 127.0.0.1."""
    function_id: str = field(default_factory=_new_uuid)
    version_id: str = field(default_factory=_new_uuid)
    name: str = "function"
    default_invocation_path: str = "/"
    health_endpoint: str = "/v2/health/ready"
    sidecars: int = 1
    """Sidecars started with the stack; 0 starts none (see `LocalStack.add_sidecar`)."""
    min_instances: int = 1
    """Ready instances (sidecars) the platform needs to call the version ACTIVE."""
    max_request_concurrency: int = 1
    container_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of the inference server."""
    sidecar_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment (NVIDIA's names) of its sidecars; wins over the stack's values."""
    sidecar_args: Sequence[str] = ()
    """Extra `nvcf-sidecar run` flags, e.g. `("--health-check-interval", "1s")`."""
    cwd: Path | None = None
    """Working directory of the inference server (None: the caller's)."""
    secrets: Path | Mapping[str, object] | None = None
    """The server's secrets, as NVCF mounts them at `/var/secrets/secrets.json`: a JSON file, or
    an object the stack writes to one; the server finds it at `$NVCF_SECRETS_PATH`."""
    wait_ready: bool = True
    """Whether `start()` waits for these sidecars to be ready (False: a server meant to start
    unhealthy)."""

    def __post_init__(self) -> None:
        if not self.command:
            raise StackError(f"function {self.name!r}: empty command")
        if not 0 < self.inference_port < 65536:
            raise StackError(f"function {self.name!r}: inference_port {self.inference_port}")
        if self.sidecars < 0 or self.max_request_concurrency < 1 or self.min_instances < 0:
            raise StackError(
                f"function {self.name!r}: sidecars >= 0, min_instances >= 0, concurrency >= 1"
            )
        for attribute in ("function_id", "version_id"):
            value = getattr(self, attribute)
            try:
                canonical = str(uuid.UUID(value))
            except ValueError:
                raise StackError(f"function {self.name!r}: {attribute} {value!r}") from None
            object.__setattr__(self, attribute, canonical)


def process_labels(functions: Sequence[FunctionSpec]) -> dict[str, str]:
    """A short name per version for process names: the function's name, numbered 1, 2, ...
    among the specs that share it."""
    names = [spec.name for spec in functions]
    labels: dict[str, str] = {}
    for index, spec in enumerate(functions):
        shared = names.count(spec.name) > 1
        number = names[: index + 1].count(spec.name)
        labels[spec.version_id] = f"{spec.name}{number}" if shared else spec.name
    return labels


def registry_toml(
    functions: Sequence[FunctionSpec], health_urls: Mapping[str, Sequence[str]]
) -> str:
    """The platform's function registry (docs/platform.md): specs sharing a function id are
    versions of one function, named after the first of them. `health_urls` maps a version id to
    its sidecars' readiness URLs, written as `instance_health_urls`."""
    by_function: dict[str, list[FunctionSpec]] = {}
    for spec in functions:
        by_function.setdefault(spec.function_id, []).append(spec)
    lines: list[str] = []
    for function_id, versions in by_function.items():
        lines += ["[[functions]]", f"id = {json.dumps(function_id)}"]
        lines += [f"name = {json.dumps(versions[0].name)}", ""]
        for spec in versions:
            lines += [
                "[[functions.versions]]",
                f"id = {json.dumps(spec.version_id)}",
                f"default_invocation_path = {json.dumps(spec.default_invocation_path)}",
                f"min_instances = {spec.min_instances}",
                f"instance_health_urls = {json.dumps(list(health_urls.get(spec.version_id, ())))}",
                "",
            ]
    return "\n".join(lines)


def server_environment(
    spec: FunctionSpec, inherited: Mapping[str, str], version_dir: Path
) -> dict[str, str]:
    """The environment of `spec`'s inference server: `inherited`, `NVCF_SECRETS_PATH` when it
    has secrets (inline ones written to `version_dir/secrets.json`, 0600), this Python's libpython
    directory first on `LD_LIBRARY_PATH` (as `nvcf-tritonserver` does: the python-backend stub
    of a PyTriton server then loads this libpython, not the system's of the same version, which
    breaks pyenv- and uv-built Pythons), then `spec.container_env`, which wins."""
    env = {**inherited, "PYTHONUNBUFFERED": "1"}
    libraries = libpython_dir()
    if libraries is not None:
        rest = [e for e in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if e]
        entries = dict.fromkeys([str(libraries), *rest])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(entries)
    if isinstance(spec.secrets, Path):
        env[SECRETS_PATH_ENV] = str(spec.secrets.resolve())
    elif spec.secrets is not None:
        version_dir.mkdir(parents=True, exist_ok=True)
        written = version_dir / "secrets.json"
        descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(dict(spec.secrets), file)
        env[SECRETS_PATH_ENV] = str(written)
    env.update(spec.container_env)
    return env


def sidecar_environment(
    spec: FunctionSpec,
    inherited: Mapping[str, str],
    *,
    instance: str,
    health_port: int,
    grpc_url: str,
    nats_url: str,
    version_dir: Path,
    shared_dir: Path,
) -> dict[str, str]:
    """The environment (NVIDIA's names) of one sidecar of `spec`: `inherited` less the variables
    that would point it elsewhere, the stack's addresses, gRPC health for a `/grpc` function (as
    NVCF sets it), then `spec.sidecar_env`."""
    env = {k: v for k, v in inherited.items() if k not in _DROPPED_SIDECAR_ENV}
    env.update(
        PYTHONUNBUFFERED="1",
        FUNCTION_ID=spec.function_id,
        FUNCTION_VERSION_ID=spec.version_id,
        FUNCTION_NAME=spec.name,
        NVCF_FQDN_GRPC=grpc_url,
        NVCF_FQDN_NATS=nats_url,
        NVCF_WORKER_TOKEN=_WORKER_TOKEN,
        INFERENCE_PORT=str(spec.inference_port),
        INFERENCE_HEALTH_ENDPOINT=spec.health_endpoint,
        MAX_REQUEST_CONCURRENCY=str(spec.max_request_concurrency),
        HEALTH_PORT=str(health_port),
        BASE_RESPONSE_DIR=str(version_dir / "response"),
        BASE_ASSET_DIR=str(version_dir / "assets"),
        SHARED_CONFIG_DIR=str(shared_dir),
        INSTANCE_ID=instance,
    )
    if spec.default_invocation_path == GRPC_INFERENCE_URL:  # NVCF: a gRPC function
        env.update(INFERENCE_HEALTH_PROTOCOL="grpc", INFERENCE_PROTOCOL="GRPC")
    env.update(spec.sidecar_env)
    return env


def sidecar_executable() -> list[str]:
    """`nvcf-sidecar` next to the running interpreter, else the CLI module through it."""
    script = Path(sys.executable).parent / "nvcf-sidecar"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "nvcf_sidecar.cli"]


_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT: Final = 10000
_PICKS: Final = 200
_random = random.SystemRandom()


def _outside_ephemeral() -> list[range]:
    """Port ranges the kernel never gives an outgoing connection's local end (Linux's
    `ip_local_port_range`, 32768-60999 by default); empty where that cannot be read."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return []
    candidates = [range(_LOWEST_PORT, low), range(high + 1, 65536)]
    return [ports for ports in candidates if len(ports) >= 1000]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(avoid: Collection[int] = ()) -> int:
    """A loopback TCP port nothing listens on now, and not one of `avoid`.

    Picked at random outside the kernel's ephemeral range where it can be: a port from that
    range (what binding port 0 gives) can be taken, before the server that was meant to have it
    binds it, by any outgoing connection's local end or by another port-0 bind.
    """
    ranges = _outside_ephemeral()
    for _ in range(_PICKS if ranges else 0):
        port = _random.choice(_random.choice(ranges))
        if port not in avoid and _bindable(port):
            return port
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise StackError("no free loopback port found")


def choose_ports(
    functions: Sequence[FunctionSpec], platform_port: int
) -> tuple[dict[str, list[int]], tuple[int, int, int]]:
    """Free loopback ports for the stack, distinct from each other and the inference ports:
    each version's sidecars' health ports (by version id), and the platform's HTTP port (given,
    or a free one for 0), gRPC port and attach port."""
    taken = {spec.inference_port for spec in functions} | {platform_port}
    health: dict[str, list[int]] = {}
    for spec in functions:
        ports = health.setdefault(spec.version_id, [])
        for _ in range(spec.sidecars):
            ports.append(free_port(avoid=taken))
            taken.add(ports[-1])
    http_port = platform_port or free_port(avoid=taken)
    taken.add(http_port)
    grpc_port = free_port(avoid=taken)
    return health, (http_port, grpc_port, free_port(avoid=taken | {grpc_port}))
