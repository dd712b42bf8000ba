"""`LocalBackend`: instances of function versions as child processes of the platform, on this
machine — the inference server of the version's image (from the local catalog) or
`nvcf-tritonserver` for a models-only function, beside one `nvcf-sidecar run` pointed at the
platform, laid out as NVCF's pod (reference §7.2) in `<work_dir>/instances/<instance_id>/`.

Locally the server listens on a free port (its command's `{port}`, `$INFERENCE_PORT`), not
the definition's `inferencePort`, unless its catalog entry names a fixed `port` (then one
instance of that image runs at a time); `{models}` in a command is the instance's model repository
(NVCF's `/config/models`). A models-only function's `containerArgs` are not applied: the
launcher sets the flags NVCF's default Triton command has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Final

import aiohttp

from nvcf_platform.backends.checks import checked_definition
from nvcf_platform.backends.errors import BackendError, InstanceNotFound
from nvcf_platform.backends.images import ImageCatalog
from nvcf_platform.backends.instance import (
    Instance,
    InstanceState,
    InstanceStatus,
    Probes,
    SupervisionPolicy,
)
from nvcf_platform.backends.instance_dir import write_instance_file
from nvcf_platform.backends.leftovers import stop_leftovers
from nvcf_platform.backends.plan import InstancePlan
from nvcf_platform.backends.process import ChildProcess
from nvcf_platform.backends.variables import platform_variables, utils_variables
from nvcf_platform.control.problems import ControlError
from nvcf_platform.devstack.scratch import Scratch
from nvcf_platform.devstack.stack_spec import (
    FunctionSpec,
    free_port,
    server_environment,
    sidecar_environment,
    sidecar_executable,
)

__all__ = ["InstanceState", "InstanceStatus", "LocalBackend"]

_log = logging.getLogger(__name__)

_TRITON_HEALTH: Final = "/v2/health/ready"
_KEPT_TERMINATED: Final = 100
"""Terminated instances still listed (the newest), for a look at how they ended."""


class LocalBackend:
    """Runs, supervises and stops instances on this machine; `async with` is its lifetime
    (leaving it stops every instance, draining, within `stop_timeout` seconds)."""

    name = "local"

    def __init__(
        self,
        images: ImageCatalog,
        *,
        grpc_url: str,
        nats_url: str,
        work_dir: Path,
        host: str = "127.0.0.1",
        restart_budget: int = 3,
        ready_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        region: str = "local",
        sidecar_args: tuple[str, ...] = (),
        triton_backend_directory: Path | None = None,
    ) -> None:
        if restart_budget < 0 or ready_timeout <= 0:
            raise ValueError("restart_budget >= 0 and ready_timeout > 0")
        self.images = images
        self.grpc_url = grpc_url
        self.nats_url = nats_url
        self.work_dir = Path(work_dir)
        self.host = host
        self.region = region
        self.stop_timeout = stop_timeout
        self.sidecar_args = sidecar_args
        """Extra `nvcf-sidecar run` flags (e.g. `--health-check-interval 1s`)."""
        self.triton_backend_directory = triton_backend_directory or (
            self.work_dir / "tritonserver" / "backends"
        )
        self.policy = SupervisionPolicy(restart_budget=restart_budget, ready_timeout=ready_timeout)
        self._instances: dict[str, Instance] = {}
        self._ports: dict[str, set[int]] = {}
        self._fixed_ports: dict[str, int] = {}
        """Instance id -> the fixed port of its image (`ImageEntry.port`)."""
        self._session: aiohttp.ClientSession | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._scratch: Scratch | None = None
        """Where the instances' per-request directories live (`devstack/scratch.py`)."""

    def __repr__(self) -> str:
        return f"<LocalBackend instances={len(self._instances)} work_dir={self.work_dir}>"

    async def __aenter__(self) -> LocalBackend:
        stop_leftovers(self.instances_root(self.work_dir))
        self._scratch = Scratch.open(self.work_dir)
        self._session = aiohttp.ClientSession()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        live = [i for i in self._instances.values() if not i.finished]
        try:
            await asyncio.gather(
                *(i.stop(drain=True, grace=self.stop_timeout) for i in live),
                return_exceptions=True,
            )
        finally:
            for task in self._supervisors.values():
                task.cancel()  # only one stuck past its stop's bound is still running: killed
            self._supervisors.clear()
            tasks, self._tasks = self._tasks, None
            if tasks is not None:
                await tasks.__aexit__(exc_type, exc, traceback)
            if self._session is not None:
                await self._session.close()
                self._session = None
            if self._scratch is not None:
                self._scratch.close()
                self._scratch = None

    # -- the backend API ---------------------------------------------------------------------

    def check(self, plan: InstancePlan) -> None:
        """Raise `ControlError(400, ...)` if this backend cannot run `plan`."""
        image, models = checked_definition(plan, self.name)
        try:
            entry = None if image is None else self.images.image(image)
            for model in models:
                self.images.model(model.name, model.version)
        except BackendError as error:
            raise ControlError(400, str(error)) from None
        if entry is not None and entry.port is not None and plan.max_instances > 1:
            raise ControlError(
                400,
                f"image {entry.image!r} listens on its fixed port {entry.port} (its catalog "
                f"entry's port): one instance at a time on this machine, so maxInstances "
                f"{plan.max_instances} cannot run; deploy with maxInstances 1",
            )

    async def start(self, plan: InstancePlan) -> InstanceStatus:
        """Start an instance of `plan` (checked first); returns at once, STARTING. Its
        supervision runs in a task of the backend."""
        if self._tasks is None or self._session is None:
            raise BackendError("the local backend is not running (use `async with`)")
        self.check(plan)
        if plan.instance_id in self._instances:
            raise ControlError(409, f"instance {plan.instance_id!r} already exists")
        self._check_fixed_port(plan)
        instance = self._prepare(plan, self._session)
        self._instances[plan.instance_id] = instance
        self._supervisors[plan.instance_id] = self._tasks.create_task(
            instance.supervise(), name=f"instance {plan.instance_id}"
        )
        _log.info(
            "instance starting",
            extra={
                "instance_id": plan.instance_id,
                "function_version_id": plan.function_version_id,
                "server_command": instance.server.command,
            },
        )
        return instance.status

    async def stop(
        self,
        instance_id: str,
        *,
        drain: bool = True,
        timeout: float = 30.0,  # noqa: ASYNC109 - the drain's budget, not a call timeout
    ) -> None:
        """Stop an instance: with `drain`, SIGTERM its sidecar, which finishes the requests it
        holds, wait for it (up to `timeout` s), then stop the server; without, both at once.
        Returns when both are gone; the instance is then TERMINATED."""
        instance = self._instances.get(instance_id)
        if instance is None:
            raise InstanceNotFound(instance_id)
        await instance.stop(drain=drain, grace=timeout)
        self._ports.pop(instance_id, None)
        self._fixed_ports.pop(instance_id, None)
        self._forget_old()

    def instances(self, function_version_id: str | None = None) -> list[InstanceStatus]:
        """The status of every instance (of one version), in start order; TERMINATED ones stay
        listed for a while."""
        return [
            instance.status
            for instance in self._instances.values()
            if function_version_id is None
            or instance.plan.function_version_id == function_version_id
        ]

    def instance(self, instance_id: str) -> Instance:
        """The supervised instance (its processes, `running_after`); InstanceNotFound."""
        try:
            return self._instances[instance_id]
        except KeyError:
            raise InstanceNotFound(instance_id) from None

    def _check_fixed_port(self, plan: InstancePlan) -> None:
        """409 while another live instance holds the fixed port of `plan`'s image (a new
        version of it waits until the old one is undeployed)."""
        image = plan.container_image
        port = None if image is None else self.images.image(image).port
        if port is None:
            return
        for instance_id, held in self._fixed_ports.items():
            holder = self._instances.get(instance_id)
            if held == port and holder is not None and not holder.finished:
                raise ControlError(
                    409,
                    f"image {image!r} listens on its fixed port {port}, which instance "
                    f"{instance_id} of function version {holder.plan.function_version_id} "
                    "holds; one instance at a time on this machine",
                )

    # -- laying out an instance --------------------------------------------------------------

    @staticmethod
    def instances_root(work_dir: Path) -> Path:
        """Where a backend on `work_dir` lays out its instances, one directory each (named by
        the instance id: logs, pid records, `instance.json`, `models/`, `shared/`)."""
        return work_dir / "instances"

    def requests_dir(self, instance_id: str) -> Path:
        """The parent of the instance's `response` and `assets` directories (per-request ones
        go inside): on /dev/shm when it has room (`devstack/scratch.py`), else with its logs."""
        root = self.work_dir if self._scratch is None else self._scratch.root
        return self.instances_root(root) / instance_id

    def _prepare(self, plan: InstancePlan, session: aiohttp.ClientSession) -> Instance:
        directory = self.instances_root(self.work_dir) / plan.instance_id
        requests = self.requests_dir(plan.instance_id)
        for made in (requests / "response", requests / "assets", directory / "shared"):
            made.mkdir(parents=True, exist_ok=True)
        image_ref = plan.container_image
        image = None if image_ref is None else self.images.image(image_ref)
        if image is not None and image.port is not None:
            port = image.port
            self._fixed_ports[plan.instance_id] = port
            self._ports.setdefault(plan.instance_id, set()).add(port)
        else:
            port = self._port(plan.instance_id)
        health_port = self._port(plan.instance_id)
        models_dir = self._model_repository(plan, directory / "models")
        health = plan.health
        if image is not None:
            command = [*image.command, *plan.container_args]
            cwd, image_env, health_uri = image.cwd, dict(image.env), health.uri
        else:
            command = self._tritonserver_command(plan.instance_id, models_dir)
            cwd, image_env = None, {"PYTHONDONTWRITEBYTECODE": "1"}
            health_uri = health.uri if "health" in plan.definition else _TRITON_HEALTH
        command = [
            part.replace("{port}", str(port)).replace("{models}", str(models_dir))
            for part in command
        ]
        spec = FunctionSpec(
            command=command,
            inference_port=port,
            function_id=plan.function_id,
            version_id=plan.function_version_id,
            name=plan.function_name,
            health_endpoint=health_uri,
            max_request_concurrency=max(1, plan.max_request_concurrency),
            container_env={
                **image_env,
                **plan.container_environment,
                **platform_variables(
                    plan, region=self.region, backend=self.name, environment="local"
                ),
                "INFERENCE_PORT": str(port),
            },
            sidecar_env={
                **utils_variables(plan, image_ref),
                **({} if image is None else image.sidecar_env),
            },
            cwd=cwd,
            secrets=plan.secrets or None,
            wait_ready=False,
        )
        server_env = server_environment(spec, os.environ, directory)
        sidecar_env = sidecar_environment(
            spec,
            os.environ,
            instance=plan.instance_id,
            health_port=health_port,
            grpc_url=self.grpc_url,
            nats_url=self.nats_url,
            version_dir=requests,
            shared_dir=directory / "shared",
        )
        sidecar_command = [*sidecar_executable(), "run", "--health-host", self.host]
        server = ChildProcess(
            "server", command, env=server_env, log_path=directory / "server.log", cwd=cwd
        )
        image_args = () if image is None else image.sidecar_args
        sidecar = ChildProcess(
            "sidecar",
            [*sidecar_command, *self.sidecar_args, *image_args],
            env=sidecar_env,
            log_path=directory / "sidecar.log",
        )
        http_health = health.protocol.upper() == "HTTP"
        probes = Probes(
            sidecar_ready_url=f"http://{self.host}:{health_port}/v1/health/ready",
            server_health_url=f"http://{self.host}:{port}{health_uri}" if http_health else None,
            server_expected_status=health.expected_status_code or 200,
        )
        write_instance_file(
            directory,
            plan,
            inference_port=port,
            health_port=health_port,
            server_health_url=probes.server_health_url,
            server_health_status=probes.server_expected_status,
        )
        return Instance(plan, server, sidecar, probes, session=session, policy=self.policy)

    def _port(self, instance_id: str) -> int:
        taken = set().union(*self._ports.values()) if self._ports else set()
        port = free_port(avoid=taken)
        self._ports.setdefault(instance_id, set()).add(port)
        return port

    def _model_repository(self, plan: InstancePlan, repository: Path) -> Path:
        """`repository/<name>` linked to each model's catalog directory (NVCF downloads them
        into `/config/models/<name>`)."""
        repository.mkdir(parents=True, exist_ok=True)
        for model in plan.models:
            link = repository / model.name
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(self.images.model(model.name, model.version).path.resolve())
        return repository

    def _tritonserver_command(self, instance_id: str, repository: Path) -> list[str]:
        script = Path(sys.executable).parent / "nvcf-tritonserver"
        if script.is_file() and os.access(script, os.X_OK):
            launcher = [str(script)]
        else:
            launcher = [sys.executable, "-m", "nvcf_worker.integrations.tritonserver"]
        grpc_port, metrics_port = self._port(instance_id), self._port(instance_id)
        return [
            *launcher,
            f"--model-repository={repository}",
            f"--address={self.host}",
            "--http-port={port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            f"--backend-directory={self.triton_backend_directory}",
        ]

    def _forget_old(self) -> None:
        ended = [
            key
            for key, instance in self._instances.items()
            if instance.state is InstanceState.TERMINATED
        ]
        for key in ended[: max(0, len(ended) - _KEPT_TERMINATED)]:
            del self._instances[key]
            self._supervisors.pop(key, None)
            self._fixed_ports.pop(key, None)
