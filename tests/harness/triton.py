"""Triton fixtures: plain `tritonserver` through the project launcher, and PyTriton scripts.

Both run as `ManagedProcess`es on free loopback ports and are waited for on
`/v2/health/ready`, so a test gets a server whose models are all loaded.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from harness.ports import LOOPBACK, free_ports
from harness.processes import ManagedProcess, StartProcess

__all__ = [
    "SERVERS_DIR",
    "StartPyTriton",
    "StartTritonServer",
    "TritonServer",
    "pytriton_server",
    "triton_backend_directory",
    "tritonserver",
]

SERVERS_DIR = Path(__file__).parent / "servers"
"""Scripts run by the `pytriton_server` fixture."""

_READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class TritonServer:
    """A running Triton (plain or PyTriton) and where to reach it."""

    process: ManagedProcess
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP/REST endpoint, e.g. `http://127.0.0.1:PORT`."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """`127.0.0.1:PORT` of the gRPC endpoint."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """URL of the Prometheus metrics endpoint."""
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def infer_url(self, model: str) -> str:
        """URL of the KServe v2 infer endpoint of `model`."""
        return f"{self.http_url}/v2/models/{model}/infer"

    def wait_ready(self, models: Sequence[str] = (), *, timeout: float = _READY_TIMEOUT) -> None:
        """Wait until the server, then each of `models`, answers ready (one shared deadline)."""
        deadline = time.monotonic() + timeout
        urls = [f"{self.http_url}/v2/health/ready"]
        urls += [f"{self.http_url}/v2/models/{model}/ready" for model in models]
        for url in urls:
            self.process.wait_http_ok(url, timeout=max(0.1, deadline - time.monotonic()))


class StartTritonServer(Protocol):
    """The callable the `tritonserver` fixture yields."""

    def __call__(
        self,
        model_repository: Path,
        *,
        launcher_args: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        models: Sequence[str] = (),
        timeout: float = _READY_TIMEOUT,
    ) -> TritonServer: ...


class StartPyTriton(Protocol):
    """The callable the `pytriton_server` fixture yields."""

    def __call__(
        self,
        script: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        models: Sequence[str] = (),
        timeout: float = _READY_TIMEOUT,
    ) -> TritonServer: ...


@pytest.fixture(scope="session")
def triton_backend_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backend directory shared by the session (the launcher fills it idempotently)."""
    return tmp_path_factory.mktemp("triton") / "backends"


@pytest.fixture
def tritonserver(
    start_process: StartProcess, tmp_path: Path, triton_backend_directory: Path
) -> StartTritonServer:
    """Factory: `tritonserver(model_repository, launcher_args=(), extra_args=(), env=None,
    models=(), timeout=90) -> TritonServer`, ready (strict readiness: every model loaded).

    Runs `python -m nvcf_worker.integrations.tritonserver` (the project launcher, which owns the
    environment fix) on free loopback ports, serving a copy of `model_repository` so the test
    tree never collects `__pycache__`. `launcher_args` go to the launcher (e.g.
    `--http-header-forward-pattern`), `extra_args` to tritonserver after `--`.
    """

    def start(
        model_repository: Path,
        *,
        launcher_args: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        models: Sequence[str] = (),
        timeout: float = _READY_TIMEOUT,
    ) -> TritonServer:
        repository = tmp_path / f"model_repository-{model_repository.name}"
        shutil.copytree(
            model_repository,
            repository,
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
        http_port, grpc_port, metrics_port = free_ports(3)
        command = [
            sys.executable,
            "-m",
            "nvcf_worker.integrations.tritonserver",
            f"--model-repository={repository}",
            f"--address={LOOPBACK}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            f"--backend-directory={triton_backend_directory}",
            *launcher_args,
            "--",
            *extra_args,
        ]
        process = start_process(command, name="tritonserver", env=env)
        server = TritonServer(process, http_port, grpc_port, metrics_port)
        server.wait_ready(models, timeout=timeout)
        return server

    return start


@pytest.fixture
def pytriton_server(start_process: StartProcess) -> Iterator[StartPyTriton]:
    """Factory: `pytriton_server(script, args=(), env=None, models=(), timeout=90) ->
    TritonServer`, ready: the server, then each model in `models`. PyTriton loads models only
    after its server is up, so name them: a ready server alone does not mean a loaded model.

    Runs `script` (a path, typically under `harness/servers/`) with this venv's Python. The
    script reads its ports from `TRITON_HTTP_PORT`, `TRITON_GRPC_PORT` and `TRITON_METRICS_PORT`,
    binds 127.0.0.1, and calls `prepare_pytriton_environment()` before `Triton()`. PyTriton's
    workspace (`PYTRITON_HOME`) is a short private directory: its IPC socket paths must stay
    under the 107-byte limit, which pytest's `tmp_path` can exceed.
    """
    homes: list[Path] = []
    processes: list[ManagedProcess] = []

    def start(
        script: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        models: Sequence[str] = (),
        timeout: float = _READY_TIMEOUT,
    ) -> TritonServer:
        http_port, grpc_port, metrics_port = free_ports(3)
        home = Path(tempfile.mkdtemp(prefix="pytriton-"))
        homes.append(home)
        script_env = {
            "TRITON_HTTP_PORT": str(http_port),
            "TRITON_GRPC_PORT": str(grpc_port),
            "TRITON_METRICS_PORT": str(metrics_port),
            "PYTRITON_HOME": str(home),
            **(env or {}),
        }
        process = start_process(
            [sys.executable, str(script), *args], name=f"pytriton-{script.stem}", env=script_env
        )
        processes.append(process)
        server = TritonServer(process, http_port, grpc_port, metrics_port)
        server.wait_ready(models, timeout=timeout)
        return server

    try:
        yield start
    finally:
        # start_process tears down after this fixture; stop the servers before removing homes.
        for process in reversed(processes):
            process.stop()
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
