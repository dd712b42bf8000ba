"""The whole local NVCF stack as child processes on loopback: NATS, platform, servers, sidecars.

`LocalStack` starts them in dependency order, waits until every sidecar is ready and stops them
in reverse; it is what `nvcf-sidecar dev`, the benchmarks and the end-to-end tests run on.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, TextIO

from nvcf_sidecar.platform.nats_server import EmbeddedNatsServer, NatsServerError
from nvcf_sidecar.platform.stack_process import ChildExited, StackError, StackProcess

__all__ = ["ChildExited", "FunctionSpec", "LocalStack", "StackError", "StackProcess"]

HOST: Final = "127.0.0.1"
_POLL_INTERVAL: Final = 0.05
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
    max_request_concurrency: int = 1
    container_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of the inference server."""
    sidecar_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment (NVIDIA's names) of its sidecars; wins over the stack's values."""
    sidecar_args: Sequence[str] = ()
    """Extra `nvcf-sidecar run` flags, e.g. `("--health-check-interval", "1s")`."""
    wait_ready: bool = True
    """Whether `start()` waits for these sidecars to be ready (False: a server meant to start
    unhealthy)."""

    def __post_init__(self) -> None:
        if not self.command:
            raise StackError(f"function {self.name!r}: empty command")
        if not 0 < self.inference_port < 65536:
            raise StackError(f"function {self.name!r}: inference_port {self.inference_port}")
        if self.sidecars < 0 or self.max_request_concurrency < 1:
            raise StackError(f"function {self.name!r}: sidecars >= 0, concurrency >= 1")
        for attribute in ("function_id", "version_id"):
            value = getattr(self, attribute)
            try:
                canonical = str(uuid.UUID(value))
            except ValueError:
                raise StackError(f"function {self.name!r}: {attribute} {value!r}") from None
            object.__setattr__(self, attribute, canonical)


class LocalStack:
    """NATS (JetStream), `nvcf-sidecar platform`, inference servers and sidecars on 127.0.0.1.

    Every child runs in its own process group with its output in `work_dir/logs/<name>.log`
    (copied to `log_stream` as `[name] line` when one is given). Use it as a context manager,
    or call `start()` and `stop()`. Not thread-safe: drive it from one thread.
    """

    def __init__(
        self,
        functions: Sequence[FunctionSpec],
        *,
        work_dir: Path,
        api_key: str = "nvcf-local-key",
        platform_args: Sequence[str] = (),
        log_stream: TextIO | None = None,
    ) -> None:
        versions = [spec.version_id for spec in functions]
        if len(set(versions)) != len(versions):
            raise StackError("two functions share a version id")
        self.functions: tuple[FunctionSpec, ...] = tuple(functions)
        self.work_dir = Path(work_dir)
        self.api_key = api_key
        self._platform_args = list(platform_args)
        self._log_stream = log_stream
        self._stream_lock = threading.Lock()
        self._labels = _labels(self.functions)
        self._nats: EmbeddedNatsServer | None = None
        self._platform: StackProcess | None = None
        self._endpoints: dict[str, str] = {}
        self._containers: dict[str, StackProcess] = {}
        self._sidecars: dict[str, list[StackProcess]] = {v: [] for v in versions}

    # -- addresses ------------------------------------------------------------------------------

    def _endpoint(self, key: str) -> str:
        if key not in self._endpoints:
            raise StackError("the stack has not been started")
        return self._endpoints[key]

    @property
    def base_url(self) -> str:
        """The platform's caller API, `http://127.0.0.1:<port>`."""
        return self._endpoint("base_url")

    @property
    def grpc_url(self) -> str:
        """The `nvcf.Worker` gRPC stand-in the sidecars connect to."""
        return self._endpoint("grpc_url")

    @property
    def nats_url(self) -> str:
        """The embedded NATS server."""
        return self._endpoint("nats_url")

    @property
    def auth_headers(self) -> dict[str, str]:
        """`{"Authorization": "Bearer <api_key>"}` for callers."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def invoke_url(self, function_id: str, version_id: str | None = None) -> str:
        """The pexec URL of a function (any version) or of one version."""
        url = f"{self.base_url}/v2/nvcf/pexec/functions/{function_id}"
        return url if version_id is None else f"{url}/versions/{version_id}"

    def response_dir(self, version_id: str) -> Path:
        """`BASE_RESPONSE_DIR` of the version's sidecars."""
        return self._version_dir(version_id) / "response"

    def asset_dir(self, version_id: str) -> Path:
        """`BASE_ASSET_DIR` of the version's sidecars."""
        return self._version_dir(version_id) / "assets"

    def _version_dir(self, version_id: str) -> Path:
        return self.work_dir / "functions" / self._spec(version_id).version_id

    # -- processes ------------------------------------------------------------------------------

    @property
    def nats(self) -> EmbeddedNatsServer:
        """The embedded NATS server (for inspecting streams in tests)."""
        if self._nats is None:
            raise StackError("the stack has not been started")
        return self._nats

    @property
    def platform(self) -> StackProcess:
        """The `nvcf-sidecar platform` process."""
        if self._platform is None:
            raise StackError("the stack has not been started")
        return self._platform

    def container(self, version_id: str) -> StackProcess:
        """The inference server of a version (the latest one after `restart_container`)."""
        spec = self._spec(version_id)
        if spec.version_id not in self._containers:
            raise StackError(f"no inference server started for version {version_id}")
        return self._containers[spec.version_id]

    def sidecars(self, version_id: str) -> list[StackProcess]:
        """Every sidecar started for a version, in start order (exited ones included)."""
        return list(self._sidecars[self._spec(version_id).version_id])

    def processes(self) -> list[StackProcess]:
        """The platform, every inference server and every sidecar started so far."""
        found = [] if self._platform is None else [self._platform]
        found += self._containers.values()
        return found + [sidecar for group in self._sidecars.values() for sidecar in group]

    def _spec(self, version_id: str) -> FunctionSpec:
        for spec in self.functions:
            if spec.version_id == version_id.lower():
                return spec
        raise StackError(f"no function version {version_id!r} in this stack")

    # -- lifetime -------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        if self._nats is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        """Start NATS, the platform, every inference server, every sidecar; return once each
        sidecar (of a spec with `wait_ready`) answers `/v1/health/ready` with 200.

        Raises ChildExited naming a child that exits meanwhile (status and log tail), or
        StackError when `timeout` seconds pass; everything started is stopped first.
        """
        if self._nats is not None:
            raise StackError("the stack was already started")
        deadline = time.monotonic() + timeout
        try:
            self._start_nats(deadline)
            self._start_platform(deadline)
            for spec in self.functions:
                self._start_container(spec)
            for spec in self.functions:
                for _ in range(spec.sidecars):
                    self._start_sidecar(spec)
            waited = [
                s for f in self.functions if f.wait_ready for s in self.sidecars(f.version_id)
            ]
            self._wait_ready(waited, deadline, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sidecars, inference servers, the platform, then NATS; idempotent.

        Each group gets SIGTERM and `timeout` seconds (a sidecar drains its requests), then
        SIGKILL; whole process groups are waited for, so no child is left behind.
        """
        groups = [
            [sidecar for group in self._sidecars.values() for sidecar in group],
            list(self._containers.values()),
            [] if self._platform is None else [self._platform],
        ]
        errors: list[StackError] = []
        for group in groups:
            for process in group:
                process.terminate()
            deadline = time.monotonic() + timeout
            for process in group:
                try:
                    process.finish_stop(deadline)
                except StackError as error:
                    errors.append(error)
        if self._nats is not None:
            try:
                self._nats.close()
            except NatsServerError as error:
                errors.append(StackError(str(error)))
        if errors:
            raise errors[0]

    def add_sidecar(
        self, version_id: str, *, wait: bool = True, timeout: float = 60.0
    ) -> StackProcess:
        """Start one more sidecar for a version; with `wait`, return once it is ready."""
        sidecar = self._start_sidecar(self._spec(version_id))
        if wait:
            self._wait_ready([sidecar], time.monotonic() + timeout, timeout)
        return sidecar

    def restart_container(
        self, version_id: str, *, wait: bool = True, timeout: float = 60.0
    ) -> StackProcess:
        """Stop the version's inference server (if still running) and start it again; with
        `wait`, return once its health endpoint answers 200."""
        spec = self._spec(version_id)
        self.container(spec.version_id).stop()
        container = self._start_container(spec)
        if wait:
            container.wait_ready(timeout)
        return container

    # -- internals ------------------------------------------------------------------------------

    def _start_nats(self, deadline: float) -> None:
        self._nats = EmbeddedNatsServer(
            store_dir=self.work_dir / "nats",
            log_file=self.work_dir / "logs" / "nats-server.log",
            server_name="nvcf-local",
            start_timeout=max(1.0, deadline - time.monotonic()),
        )
        try:
            self._nats.start()
        except NatsServerError as error:
            raise StackError(str(error)) from error
        self._endpoints["nats_url"] = self._nats.url

    def _start_platform(self, deadline: float) -> None:
        registry = self.work_dir / "functions.toml"
        ready_file = self.work_dir / "platform-ready.json"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        registry.write_text(_registry_toml(self.functions))
        ready_file.unlink(missing_ok=True)
        command = [*_sidecar_executable(), "platform", "--config", str(registry)]
        command += ["--nats", self.nats_url, "--host", HOST, "--port", "0", "--grpc-port", "0"]
        command += ["--api-key", self.api_key, "--ready-file", str(ready_file)]
        self._platform = self._spawn("platform", [*command, *self._platform_args], os.environ)
        while not ready_file.exists():
            self._platform.check_running()
            if time.monotonic() >= deadline:
                raise StackError(
                    f"platform did not write {ready_file} in time; log ends with:\n"
                    f"{self._platform.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)
        endpoints = json.loads(ready_file.read_text())
        self._endpoints.update(base_url=endpoints["base_url"], grpc_url=endpoints["grpc_url"])

    def _start_container(self, spec: FunctionSpec) -> StackProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.container_env}
        container = self._spawn(f"server-{self._labels[spec.version_id]}", spec.command, env)
        container.health_url = f"http://{HOST}:{spec.inference_port}{spec.health_endpoint}"
        self._containers[spec.version_id] = container
        return container

    def _start_sidecar(self, spec: FunctionSpec) -> StackProcess:
        number = len(self._sidecars[spec.version_id]) + 1
        name = f"sidecar-{self._labels[spec.version_id]}-{number}"
        health_port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_SIDECAR_ENV}
        env.update(
            PYTHONUNBUFFERED="1",
            FUNCTION_ID=spec.function_id,
            FUNCTION_VERSION_ID=spec.version_id,
            FUNCTION_NAME=spec.name,
            NVCF_FQDN_GRPC=self.grpc_url,
            NVCF_FQDN_NATS=self.nats_url,
            NVCF_WORKER_TOKEN=_WORKER_TOKEN,
            INFERENCE_PORT=str(spec.inference_port),
            INFERENCE_HEALTH_ENDPOINT=spec.health_endpoint,
            MAX_REQUEST_CONCURRENCY=str(spec.max_request_concurrency),
            HEALTH_PORT=str(health_port),
            BASE_RESPONSE_DIR=str(self.response_dir(spec.version_id)),
            BASE_ASSET_DIR=str(self.asset_dir(spec.version_id)),
            SHARED_CONFIG_DIR=str(self.work_dir / "shared" / name),
            INSTANCE_ID=name,
        )
        env.update(spec.sidecar_env)
        command = [*_sidecar_executable(), "run", "--health-host", HOST, *spec.sidecar_args]
        sidecar = self._spawn(name, command, env)
        sidecar.health_url = f"http://{HOST}:{health_port}/v1/health/ready"
        sidecar.metrics_url = f"http://{HOST}:{health_port}/metrics"
        self._sidecars[spec.version_id].append(sidecar)
        return sidecar

    def _spawn(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> StackProcess:
        process = StackProcess(
            name,
            command,
            env=env,
            log_path=self.work_dir / "logs" / f"{name}.log",
            log_stream=self._log_stream,
            stream_lock=self._stream_lock,
        )
        return process.start()

    def _wait_ready(
        self, sidecars: Sequence[StackProcess], deadline: float, timeout: float
    ) -> None:
        """Poll the sidecars' readiness; fail fast when one of them, an inference server they
        serve, the platform or NATS exits."""
        pending = list(sidecars)
        watched = [self.platform, *pending]
        watched += [
            self._containers[v]
            for v, group in self._sidecars.items()
            if any(s in pending for s in group) and v in self._containers
        ]
        while pending:
            for process in watched:
                process.check_running()
            if not self.nats.running:
                raise StackError(f"nats-server exited; log ends with:\n{self.nats.log_tail()}")
            pending = [sidecar for sidecar in pending if not sidecar.is_ready()]
            if not pending:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(sidecar.name for sidecar in pending)
                raise StackError(
                    f"not ready within {timeout:g} s: {names}; log of {pending[0].name} "
                    f"ends with:\n{pending[0].log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)


def _labels(functions: Sequence[FunctionSpec]) -> dict[str, str]:
    """A short name per version for process names: the function's name, numbered if shared."""
    names = [spec.name for spec in functions]
    return {
        spec.version_id: spec.name if names.count(spec.name) == 1 else f"{spec.name}{index}"
        for index, spec in enumerate(functions, 1)
    }


def _registry_toml(functions: Sequence[FunctionSpec]) -> str:
    """The platform's function registry (docs/platform.md): specs sharing a function id are
    versions of one function, named after the first of them."""
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
                f"min_instances = {spec.sidecars}",
                "",
            ]
    return "\n".join(lines)


def _sidecar_executable() -> list[str]:
    """`nvcf-sidecar` next to the running interpreter, else the CLI module through it."""
    script = Path(sys.executable).parent / "nvcf-sidecar"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "nvcf_sidecar.cli"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
