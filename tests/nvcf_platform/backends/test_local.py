"""`LocalBackend` with real processes: servers and `nvcf-sidecar run` sidecars connected to a
running platform and nats-server; start, serve, restart, fail, drain, refuse.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from harness.ports import free_port
from harness.waits import wait_for
from nvcf_platform.backends import (
    ImageCatalog,
    InstancePlan,
    InstanceState,
    InstanceStatus,
    LocalBackend,
)
from nvcf_platform.control.problems import ControlError
from nvcf_platform.control.registry import Registry
from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.service import PlatformService

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[3]
ENV_SERVER = Path(__file__).with_name("env_server.py")
ENV_FUNCTION = ("6a1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a01", "6b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e01")
HELLO_FUNCTION = ("6a1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a02", "6b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e02")
MODEL_FUNCTION = ("6a1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a03", "6b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e03")
ENV_IMAGE = "nvcr.io/test/env:1.0"
FIXED_IMAGE = "nvcr.io/test/fixed:1.0"
"""env_server.py on a port of its own, as an image built to listen on 8000 would be."""
HELLO_IMAGE = "nvcr.io/test/hello:latest"


def _registry_toml() -> str:
    lines = []
    for (function_id, version_id), name, path in (
        (ENV_FUNCTION, "env", "/"),
        (HELLO_FUNCTION, "hello", "/"),
        (MODEL_FUNCTION, "scale-sum", "/v2/models/scale_sum/infer"),
    ):
        lines += ["[[functions]]", f'id = "{function_id}"', f'name = "{name}"']
        lines += [f'default_invocation_path = "{path}"', "[[functions.versions]]"]
        lines += [f'id = "{version_id}"', ""]
    return "\n".join(lines)


@pytest.fixture
def registry() -> Registry:
    """The platform's functions (overrides the platform conftest's): one per test server."""
    return Registry.from_mapping(tomllib.loads(_registry_toml()), source="test")


@pytest.fixture
def catalog(tmp_path: Path) -> ImageCatalog:
    models = tmp_path / "models"  # a copy: the python backend writes __pycache__ beside model.py
    fixed_port = free_port()
    shutil.copytree(
        REPO / "examples" / "byom" / "model_repository" / "scale_sum",
        models / "scale_sum",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    data = {
        "images": [
            {
                "image": ENV_IMAGE,
                "command": [sys.executable, str(ENV_SERVER), "--port", "{port}"],
                "env": {"TEST_IMAGE": "from the catalog", "TEST_COLOUR": "image's"},
            },
            {
                "image": FIXED_IMAGE,
                "command": [sys.executable, str(ENV_SERVER), "--port", str(fixed_port)],
                "port": fixed_port,
                "sidecar_env": {"NVCF_LOG_LEVEL": "debug", "MAX_REQUEST_CONCURRENCY": "3"},
                "sidecar_args": ["--health-check-interval", "0.5s"],
            },
            {
                "image": "nvcr.io/test/hello",
                "command": [sys.executable, "server.py", "--port", "{port}"],
                "cwd": "examples/byoc/hello",
            },
        ],
        "models": [{"name": "scale_sum", "version": "1", "path": str(models / "scale_sum")}],
    }
    return ImageCatalog.from_mapping(data, source="test catalog", base_dir=REPO)


def make_plan(
    function: tuple[str, str] = ENV_FUNCTION,
    name: str = "env",
    max_instances: int = 2,
    **definition: Any,
) -> InstancePlan:
    definition.setdefault("containerImage", ENV_IMAGE)
    return InstancePlan(
        instance_id=str(uuid.uuid4()),
        function_id=function[0],
        function_version_id=function[1],
        function_name=name,
        nca_id="nca-test",
        deployment_id="deployment-1",
        gpu_specification_id="spec-1",
        gpu="L40S",
        instance_type="local.cpu",
        definition={key: value for key, value in definition.items() if value is not None},
        max_request_concurrency=2,
        max_instances=max_instances,
    )


StartBackend = Callable[..., Awaitable[LocalBackend]]


@pytest.fixture
async def start_backend(
    platform: PlatformService, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> AsyncIterator[StartBackend]:
    """Factory: `await start_backend(catalog, **options)` -> a running LocalBackend of the
    test's platform; stopped (its instances drained) before the platform."""
    backends: list[LocalBackend] = []

    async def start(catalog: ImageCatalog, **options: Any) -> LocalBackend:
        options.setdefault("restart_budget", 2)
        options.setdefault("ready_timeout", 60.0)
        backend = LocalBackend(
            catalog,
            grpc_url=platform.grpc_url,
            nats_url=nats_server.url,
            work_dir=tmp_path / f"work-{len(backends) + 1}",
            **options,
        )
        backends.append(backend)
        return await backend.__aenter__()

    yield start
    for backend in reversed(backends):
        await backend.__aexit__(None, None, None)


def status_of(backend: LocalBackend, instance_id: str) -> InstanceStatus:
    (status,) = [s for s in backend.instances() if s.instance_id == instance_id]
    return status


async def wait_state(
    backend: LocalBackend,
    instance_id: str,
    state: InstanceState,
    within: float = 45.0,
    restarts: int | None = None,
) -> InstanceStatus:
    def reached() -> bool:
        status = status_of(backend, instance_id)
        wanted = restarts is None or status.restarts == restarts
        return status.state is state and wanted

    try:
        await wait_for(reached, f"instance {state}", within=within)
    except AssertionError:
        instance = backend.instance(instance_id)
        pytest.fail(
            f"{status_of(backend, instance_id)}\nserver.log:\n{instance.server.log_tail(20)}\n"
            f"sidecar.log:\n{instance.sidecar.log_tail(20)}"
        )
    return status_of(backend, instance_id)


def processes_gone(backend: LocalBackend, instance_id: str) -> bool:
    instance = backend.instance(instance_id)
    return not instance.server.survivors() and not instance.sidecar.survivors()


# --- serving -------------------------------------------------------------------------------------


async def test_an_instance_of_the_hello_example_runs_and_serves_a_pexec(
    start_backend: StartBackend, catalog: ImageCatalog, caller: Any
) -> None:
    backend = await start_backend(catalog)
    plan = make_plan(HELLO_FUNCTION, "hello", containerImage=HELLO_IMAGE)

    started = await backend.start(plan)
    assert started.state is InstanceState.STARTING
    await wait_state(backend, plan.instance_id, InstanceState.RUNNING)
    print(f"spawn -> RUNNING: {backend.instance(plan.instance_id).running_after:.2f} s")

    async with caller.pexec(
        json.dumps({"hello": "world"}).encode(),
        headers={"Content-Type": "application/json"},
        function_id=HELLO_FUNCTION[0],
        version_id=HELLO_FUNCTION[1],
    ) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert answer["echo"] == {"hello": "world"}
    assert answer["request_id"] == response.headers["NVCF-REQID"]

    await backend.__aexit__(None, None, None)  # leaving the backend stops its instances
    assert status_of(backend, plan.instance_id).state is InstanceState.TERMINATED
    assert processes_gone(backend, plan.instance_id)


async def test_a_running_instances_server_is_checked_by_its_sidecar_not_polled(
    start_backend: StartBackend, catalog: ImageCatalog
) -> None:
    backend = await start_backend(catalog)
    plan = make_plan(HELLO_FUNCTION, "hello", containerImage=HELLO_IMAGE)
    await backend.start(plan)
    await wait_state(backend, plan.instance_id, InstanceState.RUNNING)
    server_log = backend.instance(plan.instance_id).server.log_path

    def health_checks() -> int:
        return server_log.read_text().count("GET /v2/health/ready")

    before = health_checks()
    assert before >= 1  # probed while it started
    await asyncio.sleep(2.0)  # eight rounds of the backend's probes
    # Only the sidecar's own check (every 10 s, NVIDIA's cadence) may have come meanwhile.
    assert health_checks() - before <= 1
    assert status_of(backend, plan.instance_id).state is InstanceState.RUNNING


async def test_the_server_gets_its_port_args_environment_and_secrets(
    start_backend: StartBackend, catalog: ImageCatalog, caller: Any
) -> None:
    backend = await start_backend(catalog)
    plan = make_plan(
        containerArgs="--extra 'two words'",
        containerEnvironment=[
            {"key": "TEST_COLOUR", "value": "blue"},
            {"key": "NVCF_FUNCTION_ID", "value": "spoofed"},
        ],
        secrets=[
            {"name": "API_TOKEN", "value": "s3cret"},
            {"name": "testing.site.com", "value": {"AWS_REGION": "us-west-2", "PORT": 443}},
        ],
    )
    await backend.start(plan)
    await wait_state(backend, plan.instance_id, InstanceState.RUNNING)

    async with caller.pexec(b"{}", function_id=ENV_FUNCTION[0], version_id=ENV_FUNCTION[1]) as r:
        assert r.status == 200, await r.text()
        seen = await r.json()

    port = seen["env"]["INFERENCE_PORT"]
    assert seen["argv"] == ["--port", port, "--extra", "two words"]
    assert seen["env"]["TEST_COLOUR"] == "blue"  # containerEnvironment over the image's env
    assert seen["env"]["TEST_IMAGE"] == "from the catalog"
    assert seen["env"]["NVCF_FUNCTION_ID"] == ENV_FUNCTION[0]  # the platform's value wins
    assert seen["env"]["NVCF_FUNCTION_VERSION_ID"] == ENV_FUNCTION[1]
    assert seen["env"]["NVCF_BACKEND"] == "local"
    assert seen["env"]["NVCF_NCA_ID"] == "nca-test"
    assert seen["env"]["NVCF_INSTANCETYPE"] == "local.cpu"
    assert seen["secrets"] == {
        "API_TOKEN": "s3cret",
        "testing.site.com": {"AWS_REGION": "us-west-2", "PORT": 443},  # an object stays one
    }

    instance = backend.instance(plan.instance_id)
    directory = backend.work_dir / "instances" / plan.instance_id
    assert {"shared", "server.log", "sidecar.log", "secrets.json"} <= {
        path.name for path in directory.iterdir()
    }
    requests = backend.requests_dir(plan.instance_id)  # on /dev/shm when it has room
    assert (requests / "response").is_dir()
    assert (requests / "assets").is_dir()
    assert (directory / "secrets.json").stat().st_mode & 0o777 == 0o600
    sidecar_env = instance.sidecar.env
    assert sidecar_env["INFERENCE_PORT"] == port
    assert sidecar_env["MAX_REQUEST_CONCURRENCY"] == "2"
    assert sidecar_env["NVCF_INSTANCE_ID"] == sidecar_env["INSTANCE_ID"] == plan.instance_id
    assert sidecar_env["BASE_RESPONSE_DIR"] == str(requests / "response")
    assert sidecar_env["BASE_ASSET_DIR"] == str(requests / "assets")
    assert sidecar_env["INFERENCE_CONTAINER_ARGS"] == "--extra 'two words'"


# --- supervision ---------------------------------------------------------------------------------


async def test_a_server_that_exits_at_start_fails_after_the_budget_with_its_log_tail(
    start_backend: StartBackend, catalog: ImageCatalog
) -> None:
    backend = await start_backend(catalog, restart_budget=2)
    plan = make_plan(containerEnvironment=[{"key": "EXIT_AT_START", "value": "3"}])
    await backend.start(plan)

    status = await wait_state(backend, plan.instance_id, InstanceState.FAILED, within=30)

    assert status.restarts == 2
    assert status.error is not None
    assert status.error.startswith("server exited with status 3; server.log ends with:")
    assert "env_server: refusing to start (EXIT_AT_START)" in status.error
    await wait_for(lambda: processes_gone(backend, plan.instance_id), "the sidecar stopped", 15)

    await backend.stop(plan.instance_id)
    assert status_of(backend, plan.instance_id).state is InstanceState.TERMINATED


async def test_a_server_never_ready_is_restarted_then_fails_naming_the_timeout(
    start_backend: StartBackend, catalog: ImageCatalog
) -> None:
    backend = await start_backend(catalog, restart_budget=1, ready_timeout=1.5)
    plan = make_plan(containerEnvironment=[{"key": "TEST_UNHEALTHY", "value": "1"}])
    await backend.start(plan)

    status = await wait_state(backend, plan.instance_id, InstanceState.FAILED, within=30)

    assert status.restarts == 1
    assert status.error is not None
    assert status.error.startswith("not ready within 1.5 s (sidecar http://127.0.0.1:")
    await wait_for(lambda: processes_gone(backend, plan.instance_id), "both processes stopped", 15)


async def test_a_crashed_running_server_is_restarted_and_runs_again(
    start_backend: StartBackend, catalog: ImageCatalog, caller: Any
) -> None:
    backend = await start_backend(catalog)
    plan = make_plan()
    await backend.start(plan)
    await wait_state(backend, plan.instance_id, InstanceState.RUNNING)
    server = backend.instance(plan.instance_id).server
    first_pid = server.pid
    assert first_pid is not None

    os.killpg(first_pid, signal.SIGKILL)
    status = await wait_state(backend, plan.instance_id, InstanceState.RUNNING, restarts=1)

    assert status.error is None
    assert server.pid != first_pid
    async with caller.pexec(b"{}", function_id=ENV_FUNCTION[0], version_id=ENV_FUNCTION[1]) as r:
        assert r.status == 200, await r.text()


async def test_an_image_with_a_fixed_port_runs_there_one_instance_at_a_time(
    start_backend: StartBackend, catalog: ImageCatalog, caller: Any
) -> None:
    backend = await start_backend(catalog)
    port = catalog.image(FIXED_IMAGE).port
    first = make_plan(max_instances=1, containerImage=FIXED_IMAGE)
    await backend.start(first)
    await wait_state(backend, first.instance_id, InstanceState.RUNNING)
    async with caller.pexec(b"{}", function_id=ENV_FUNCTION[0], version_id=ENV_FUNCTION[1]) as r:
        assert r.status == 200, await r.text()
        seen = await r.json()
    assert seen["env"]["INFERENCE_PORT"] == str(port)
    sidecar = backend.instance(first.instance_id).sidecar
    # The image's sidecar settings: its environment wins, its flags come last.
    assert sidecar.env["NVCF_LOG_LEVEL"] == "debug"
    assert sidecar.env["MAX_REQUEST_CONCURRENCY"] == "3"  # not the plan's 2
    assert sidecar.command[-2:] == ["--health-check-interval", "0.5s"]

    second = make_plan(max_instances=1, containerImage=FIXED_IMAGE)
    with pytest.raises(ControlError) as refused:
        await backend.start(second)  # the port is taken: refused before anything is spawned
    assert refused.value.status == 409
    assert (
        f"fixed port {port}, which instance {first.instance_id} of function version "
        f"{ENV_FUNCTION[1]} holds" in refused.value.detail
    )

    await backend.stop(first.instance_id)
    await backend.start(second)
    await wait_state(backend, second.instance_id, InstanceState.RUNNING)


async def test_stop_with_drain_lets_the_request_in_flight_finish_first(
    start_backend: StartBackend, catalog: ImageCatalog, caller: Any
) -> None:
    backend = await start_backend(catalog)
    plan = make_plan()
    await backend.start(plan)
    await wait_state(backend, plan.instance_id, InstanceState.RUNNING)
    server = backend.instance(plan.instance_id).server
    finished: dict[str, float] = {}

    async def slow_request() -> int:
        body = json.dumps({"sleep": 1.5}).encode()
        async with caller.pexec(
            body, function_id=ENV_FUNCTION[0], version_id=ENV_FUNCTION[1]
        ) as response:
            await response.read()
            finished["request"] = time.monotonic()
            return int(response.status)

    request = asyncio.create_task(slow_request())
    await wait_for(lambda: "request started" in server.log_tail(5), "the request at the server")
    await backend.stop(plan.instance_id, drain=True, timeout=20)
    finished["stop"] = time.monotonic()

    assert await asyncio.wait_for(request, 10) == 200
    assert finished["request"] <= finished["stop"]
    assert status_of(backend, plan.instance_id).state is InstanceState.TERMINATED
    assert processes_gone(backend, plan.instance_id)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "detail"),
    [
        (
            {"containerImage": None, "helmChart": "https://helm.ngc.nvidia.com/a/charts/x-1.tgz"},
            "the local backend cannot run Helm chart functions: https://helm.ngc.nvidia.com/",
        ),
        (
            {"containerImage": "nvcr.io/test/unknown:2"},
            "image 'nvcr.io/test/unknown:2' is not in the local image catalog (--images)",
        ),
        (
            {"containerImage": None, "models": [{"name": "scale_sum", "version": "9"}]},
            "model 'scale_sum' version '9' is not in the local model catalog",
        ),
        ({"containerImage": None}, "names neither a containerImage nor models"),
        ({"containerEnvironment": [{"value": "x"}]}, "containerEnvironment[0]: must be"),
        ({"containerArgs": "'unclosed"}, 'containerArgs: "\'unclosed" is not valid shell words'),
    ],
)
def test_check_refuses_what_the_local_backend_cannot_run(
    catalog: ImageCatalog, tmp_path: Path, definition: dict[str, Any], detail: str
) -> None:
    backend = LocalBackend(
        catalog, grpc_url="http://unused", nats_url="nats://unused", work_dir=tmp_path
    )

    with pytest.raises(ControlError) as refused:
        backend.check(make_plan(**definition))

    assert refused.value.status == 400
    assert detail in refused.value.detail


def test_check_accepts_images_and_catalogued_models(catalog: ImageCatalog, tmp_path: Path) -> None:
    backend = LocalBackend(
        catalog, grpc_url="http://unused", nats_url="nats://unused", work_dir=tmp_path
    )

    backend.check(make_plan())
    backend.check(make_plan(containerImage=None, models=[{"name": "scale_sum", "version": "1"}]))
    backend.check(make_plan(max_instances=1, containerImage=FIXED_IMAGE))


def test_check_refuses_more_than_one_instance_of_a_fixed_port_image(
    catalog: ImageCatalog, tmp_path: Path
) -> None:
    backend = LocalBackend(
        catalog, grpc_url="http://unused", nats_url="nats://unused", work_dir=tmp_path
    )

    with pytest.raises(ControlError) as refused:
        backend.check(make_plan(max_instances=2, containerImage=FIXED_IMAGE))

    assert refused.value.status == 400
    port = catalog.image(FIXED_IMAGE).port
    assert refused.value.detail == (
        f"image '{FIXED_IMAGE}' listens on its fixed port {port} (its catalog entry's port): "
        "one instance at a time on this machine, so maxInstances 2 cannot run; deploy with "
        "maxInstances 1"
    )


# --- models-only ---------------------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.timeout(180)
async def test_a_models_only_instance_serves_its_model_with_tritonserver(
    start_backend: StartBackend,
    catalog: ImageCatalog,
    caller: Any,
    triton_backend_directory: Path,
) -> None:
    backend = await start_backend(
        catalog, ready_timeout=120.0, triton_backend_directory=triton_backend_directory
    )
    plan = make_plan(
        MODEL_FUNCTION,
        "scale-sum",
        containerImage=None,
        inferenceUrl="/v2/models/scale_sum/infer",
        models=[{"name": "scale_sum", "version": "1", "uri": "/v2/org/x/models/scale_sum/1"}],
    )
    await backend.start(plan)
    await wait_state(backend, plan.instance_id, InstanceState.RUNNING, within=150)
    print(f"spawn -> RUNNING: {backend.instance(plan.instance_id).running_after:.2f} s")

    link = backend.work_dir / "instances" / plan.instance_id / "models" / "scale_sum"
    assert link.is_symlink()
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}
    async with caller.pexec(
        json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        function_id=MODEL_FUNCTION[0],
        version_id=MODEL_FUNCTION[1],
    ) as response:
        status, answer = response.status, await response.read()
    request_id = response.headers.get("NVCF-REQID", "")
    for _ in range(10):  # the model reports progress: 202, polled as NVCF clients do
        if status != 202:
            break
        async with caller.status(request_id) as polled:
            status, answer = polled.status, await polled.read()
    assert status == 200, answer
    outputs = {output["name"]: output["data"] for output in json.loads(answer)["outputs"]}
    assert outputs["SUM"] == [6.0]
