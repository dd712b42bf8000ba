"""The BYOC examples of `examples/byoc/`, run as their READMEs say, through the whole local stack.

Each README holds one `nvcf-sidecar dev ... -- python ...` line. The tests take that line, move
its default ports (8000-8002, and the platform's 8080) to free ones and run it: as the `dev`
command itself (streaming), or as the `FunctionSpec` that `dev` builds from it, in a `LocalStack`
(image_job, pytriton_sleeper). Every example's `function.json` and `Dockerfile` are checked too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from packaging.requirements import Requirement

from harness.ports import free_port, free_ports
from nvcf_platform.devstack import dev
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack
from nvcf_platform.devstack.stack_process import live_group_members, signal_group

ROOT = Path(__file__).resolve().parents[2]
BYOC = ROOT / "examples" / "byoc"
EXAMPLES = ("grpc_echo", "hello", "image_job", "pytriton_sleeper", "streaming")
BASE_IMAGE = {"pytriton_sleeper": "nvcf-worker-pytriton:latest"}
DEFAULT_BASE_IMAGE = "nvcf-worker-function:latest"
FIELDS = {
    "name": str,
    "inferenceUrl": str,
    "inferencePort": int,
    "healthUri": str,
    "apiBodyFormat": str,
    "containerImage": str,
}
_DEV_LINE = re.compile(r"^(?:#\s*=\s*)?((?:\S*/)?nvcf-sidecar dev .*)$", re.MULTILINE)


def load_example(example: str) -> ModuleType:
    """An example's server.py as a module of its own name (every example calls it server.py)."""
    name = f"byoc_example_{example}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BYOC / example / "server.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def readme_dev_command(example: str) -> list[str]:
    """The one `nvcf-sidecar dev` command line of the example's README, split like a shell."""
    text = (BYOC / example / "README.md").read_text()
    lines = _DEV_LINE.findall(re.sub(r"\\\n\s*", " ", text))
    assert len(lines) == 1, f"{example}/README.md: expected one dev command, found {lines}"
    return shlex.split(lines[0])


def parse_dev_command(argv: list[str]) -> argparse.Namespace:
    """`argv` parsed by the `dev` subcommand's own flags; `server_command` without the `--`."""
    assert Path(argv[0]).name == "nvcf-sidecar", argv
    assert argv[1] == "dev", argv
    parser = argparse.ArgumentParser(prog="nvcf-sidecar dev")
    dev.add_arguments(parser)
    args = parser.parse_args(argv[2:])
    if args.server_command[:1] == ["--"]:
        args.server_command = args.server_command[1:]
    return args


def localize(argv: list[str], ports: Mapping[str, int]) -> list[str]:
    """The README's command as run here: this virtualenv's programs, repository paths made
    absolute, each default port in `ports` replaced by its free one."""
    bin_dir = Path(sys.executable).parent
    programs = {"nvcf-sidecar": str(bin_dir / "nvcf-sidecar"), "python": sys.executable}
    result = []
    for arg in argv:
        if arg in ports:
            result.append(str(ports[arg]))
        elif Path(arg).name in programs and (arg in programs or arg.startswith(".venv/")):
            result.append(programs[Path(arg).name])
        elif not arg.startswith("-") and "/" in arg and (ROOT / arg).is_file():
            result.append(str(ROOT / arg))
        else:
            result.append(arg)
    return result


def function_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The `FunctionSpec` fields `nvcf-sidecar dev -- COMMAND` takes from its flags, with the
    defaults it applies to the flags left out."""
    return {
        "command": args.server_command,
        "inference_port": args.inference_port or 8000,
        "function_id": args.function_id or str(uuid.uuid4()),
        "name": args.name or "function",
        "default_invocation_path": "/" if args.path is None else args.path,
        "health_endpoint": args.health_endpoint or "/v2/health/ready",
        "max_request_concurrency": args.max_request_concurrency or 1,
    }


def spec_from_readme(example: str, ports: Mapping[str, int], **extra: Any) -> FunctionSpec:
    """The `FunctionSpec` that `nvcf-sidecar dev` builds from the README's command line."""
    args = parse_dev_command(localize(readme_dev_command(example), ports))
    return FunctionSpec(**function_fields(args), **extra)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """`(KEYWORD, arguments)` of each instruction, continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1].strip())
        for line in lines
        if line and not line.startswith("#")
    ]


# -- function.json, Dockerfile, requirements.txt -------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_function_json_has_the_fields_nvcf_needs_and_matches_the_readme(example: str) -> None:
    definition = json.loads((BYOC / example / "function.json").read_text())
    for field, kind in FIELDS.items():
        assert isinstance(definition.get(field), kind), f"{example}: {field}"
    assert definition["apiBodyFormat"] in {"CUSTOM", "PREDICT_V2"}
    # A gRPC function is called through the gRPC entry point, with raw HTTP/2: no body format.
    assert (definition["inferenceUrl"] == "/grpc") == (example == "grpc_echo")
    assert (definition["apiBodyFormat"] == "PREDICT_V2") == definition["inferenceUrl"].startswith(
        "/v2/models/"
    )
    fields = function_fields(parse_dev_command(readme_dev_command(example)))
    assert definition["inferenceUrl"] == fields["default_invocation_path"]
    assert definition["healthUri"] == fields["health_endpoint"]
    assert definition["inferencePort"] == fields["inference_port"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_dockerfile_builds_on_the_base_image_arg(example: str) -> None:
    directory = BYOC / example
    instructions = dockerfile_instructions(directory / "Dockerfile")
    base = BASE_IMAGE.get(example, DEFAULT_BASE_IMAGE)
    assert instructions[:2] == [("ARG", f"BASE_IMAGE={base}"), ("FROM", "${BASE_IMAGE}")]
    copied = [
        source
        for keyword, arguments in instructions
        if keyword == "COPY"
        for source in arguments.split()[:-1]
    ]
    assert "requirements.txt" in copied
    assert "server.py" in copied
    assert all((directory / source).is_file() for source in copied), copied
    for line in (directory / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            Requirement(line)  # raises on a malformed requirement
    port = json.loads((directory / "function.json").read_text())["inferencePort"]
    assert ("EXPOSE", str(port)) in instructions
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert instructions[-1][0] == "CMD"
    command = json.loads(instructions[-1][1])  # exec form: signals reach the server
    assert "/app/server.py" in command
    assert str(port) in command


# -- the examples through the stack ---------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), trust_env=False
    ) as session:
        yield session


class Answer:
    def __init__(self, response: aiohttp.ClientResponse, body: bytes) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    http: aiohttp.ClientSession, method: str, url: str, stack: LocalStack, **kwargs: Any
) -> Answer:
    headers = {**stack.auth_headers, **kwargs.pop("headers", {})}
    async with http.request(
        method, url, headers=headers, allow_redirects=False, **kwargs
    ) as response:
        return Answer(response, await response.read())


async def invoke_and_follow(
    http: aiohttp.ClientSession, stack: LocalStack, body: Any, **headers: str
) -> list[Answer]:
    """pexec the stack's function, then poll its status while the answer is a 202 (bounded)."""
    url = stack.invoke_url(stack.functions[0].function_id)
    answers = [await call(http, "POST", url, stack, json=body, headers=headers)]
    request_id = answers[0].headers["nvcf-reqid"]
    poll = f"{stack.base_url}/v2/nvcf/pexec/status/{request_id}"
    while answers[-1].status == 202:
        assert len(answers) < 40, "too many 202s"
        answers.append(await call(http, "GET", poll, stack, headers=headers))
    return answers


def progress_of(answers: list[Answer]) -> list[tuple[int, Any]]:
    """`(percent, partial response)` of each progress 202, in arrival order."""
    found = []
    for answer in answers:
        if answer.status == 202 and "NVCF-PERCENT-COMPLETE" in answer.headers:
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.headers["nvcf-status"] == "in-progress"
            found.append((int(answer.headers["NVCF-PERCENT-COMPLETE"]), answer.json()))
    return found


def print_logs(stack: LocalStack) -> None:
    for process in stack.processes():
        sys.stdout.write(f"\n----- {process.name} -----\n{process.log_tail(30)}\n")


@pytest.fixture(scope="module")
def image_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    spec = spec_from_readme("image_job", {"8000": free_port()})
    stack = LocalStack([spec], work_dir=tmp_path_factory.mktemp("image-job") / "stack")
    stack.start(timeout=60)
    try:
        yield stack
    finally:
        stack.stop()
        print_logs(stack)


async def upload_asset(http: aiohttp.ClientSession, stack: LocalStack, data: bytes) -> str:
    document = {"contentType": "application/octet-stream", "description": "byoc example"}
    created = await call(http, "POST", f"{stack.base_url}/v2/nvcf/assets", stack, json=document)
    assert created.status == 200, created.body
    url = created.json()["uploadUrl"]
    headers = {"Content-Type": "application/octet-stream"}
    async with http.put(url, data=data, headers=headers) as response:
        assert response.status == 200, await response.read()
    asset_id: str = created.json()["assetId"]
    return asset_id


@pytest.mark.nats
@pytest.mark.timeout(90)
async def test_image_job_reports_progress_and_ships_its_output_as_a_zip(
    image_job: LocalStack, http: aiohttp.ClientSession
) -> None:
    server = load_example("image_job")
    contents = [b"first input asset\n" * 500, bytes(range(256)) * 1024]
    ids = [await upload_asset(http, image_job, data) for data in contents]
    headers = {"NVCF-POLL-SECONDS": "2", "NVCF-INPUT-ASSET-REFERENCES": ",".join(ids)}
    answers = await invoke_and_follow(http, image_job, {"seed": 7, "step_seconds": 0.6}, **headers)

    progress = progress_of(answers)
    assert len(progress) >= 2, [(a.status, a.body[:200]) for a in answers]
    assert [p for p, _ in progress] == sorted({p for p, _ in progress})  # strictly increasing
    for percent, partial in progress:
        step = partial["step"]
        assert percent == step * 25
        assert partial["of"] == 4
        assert partial["stage"] == server.STEPS[step - 1]
    assert answers[-1].status == 302, answers[-1].body
    assert answers[-1].headers["nvcf-status"] == "fulfilled"

    request_id = answers[-1].headers["nvcf-reqid"]
    async with http.get(answers[-1].headers["Location"]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/zip"
        data = await response.read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [f"{request_id}.response", server.OUTPUT_NAME]
        result = json.loads(archive.read(f"{request_id}.response"))
        image = archive.read(server.OUTPUT_NAME)
    digests = [hashlib.sha256(data).hexdigest() for data in contents]
    assert result["request_id"] == request_id
    assert result["seed"] == 7
    assert result["assets"] == {
        i: {"bytes": len(d), "sha256": s} for i, d, s in zip(ids, contents, digests, strict=True)
    }
    expected = server.npy_bytes(server.render(7, digests))
    assert len(expected) > 8 * 1024 * 1024
    assert image == expected
    assert result["outputs"] == [
        {
            "name": "image.npy",
            "shape": [1024, 2048],
            "dtype": "float32",
            "bytes": len(expected),
            "sha256": hashlib.sha256(expected).hexdigest(),
        }
    ]


@pytest.mark.nats
async def test_image_job_answers_a_bad_body_with_a_problem(
    image_job: LocalStack, http: aiohttp.ClientSession
) -> None:
    url = image_job.invoke_url(image_job.functions[0].function_id)
    answer = await call(http, "POST", url, image_job, json={"seed": -1})
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["detail"] == "'seed' must be a non-negative integer, not -1"


@pytest.mark.nats
@pytest.mark.triton
@pytest.mark.timeout(150)
async def test_pytriton_sleeper_reports_progress_then_answers_predict_v2(
    start_stack: Any, http: aiohttp.ClientSession
) -> None:
    home = Path(tempfile.mkdtemp(prefix="pytriton-"))  # IPC socket paths must stay short
    try:
        ports = dict(zip(("8000", "8001", "8002"), free_ports(3), strict=True))
        spec = spec_from_readme(
            "pytriton_sleeper", ports, container_env={"PYTRITON_HOME": str(home)}
        )
        stack = start_stack([spec], timeout=120)
        body = {
            "inputs": [{"name": "sleep_duration", "datatype": "FP32", "shape": [1], "data": [2.5]}]
        }
        answers = await invoke_and_follow(http, stack, body, **{"NVCF-POLL-SECONDS": "1"})
    finally:
        shutil.rmtree(home, ignore_errors=True)

    assert [a.status for a in answers[:-1]] == [202] * (len(answers) - 1)
    progress = progress_of(answers)
    assert len(progress) >= 2, [(a.status, a.body[:200]) for a in answers]
    percents = [percent for percent, _ in progress]
    assert percents == sorted(set(percents))
    assert percents[-1] < 100
    slept = [partial["slept"] for _, partial in progress]
    assert slept == sorted(slept)
    assert all(0 <= s <= 2.5 for s in slept)
    assert all(partial["of"] == 2.5 for _, partial in progress)

    final = answers[-1]
    assert final.status == 200, final.body
    request_id = final.headers["nvcf-reqid"]
    result = final.json()
    assert result["model_name"] == "timed_sleeper"
    outputs = {output["name"]: output for output in result["outputs"]}
    assert outputs["sleep_duration"]["data"] == [2.5]
    assert outputs["request_id"]["data"] == [request_id]


class DevCommand:
    """`nvcf-sidecar dev` run as a child in its own session, its output in `log`."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def wait_ready(self, timeout: float) -> None:
        """Until dev prints `[dev] ready`; fails when it exits, prints an error or times out."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith("[dev] ready") for line in self.lines()):
            assert self.process.poll() is None, f"dev exited:\n{self.output()}"
            assert not any(line.startswith("[dev] error") for line in self.lines()), self.output()
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return "\n".join(self.lines()[-60:])

    def stop(self) -> int | None:
        """SIGINT, as Ctrl-C sends it; the exit status, or None when dev was still running
        after 30 s. Anything of the stack still alive then is killed (the pids dev printed)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            status: int | None = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            status = None
        pids = [self.process.pid]
        for line in self.lines():
            if line.startswith("[dev] pids"):
                pids += [int(pid) for pid in re.findall(r"=(\d+)", line)]
        for pid in pids:
            if live_group_members(pid):
                signal_group(pid, signal.SIGKILL)
        self.process.wait(timeout=5)
        return status


@pytest.mark.nats
@pytest.mark.timeout(90)
async def test_streaming_via_the_dev_command_relays_each_token_as_it_comes(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = load_example("streaming")
    port, platform_port = free_ports(2)
    argv = localize(readme_dev_command("streaming"), {"8000": port})
    argv[2:2] = ["--port", str(platform_port)]  # the platform's port, 8080 by default
    function_id = parse_dev_command(argv).function_id
    url = f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/{function_id}"
    command = DevCommand(argv, tmp_path / "dev.log")
    try:
        await asyncio.to_thread(command.wait_ready, 60)
        headers = {"Authorization": "Bearer nvcf-local-key", "Accept": "text/event-stream"}
        events: list[tuple[float, str]] = []
        async with http.post(url, json={"delay": 0.1}, headers=headers) as response:
            assert response.status == 200, await response.read()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append((time.monotonic(), line[6:].decode().rstrip("\r\n")))
        plain = {"Authorization": "Bearer nvcf-local-key"}
        async with http.post(url, json={}, headers=plain) as response:
            assert response.status == 200
            whole = await response.json()
    finally:
        status = await asyncio.to_thread(command.stop)
    assert status == 0, command.output()

    tokens = server.tokens()
    assert [data for _, data in events] == [json.dumps({"token": t}) for t in tokens] + ["[DONE]"]
    assert "".join(json.loads(data)["token"] for _, data in events[:-1]) == server.SENTENCE
    # Relayed as written, not buffered: the events are spread over about the time the server
    # took to write them (27 pauses of 0.1 s); a buffered body would arrive all at once.
    spread = events[-1][0] - events[0][0]
    assert spread >= 0.5 * 0.1 * (len(tokens) - 1), spread
    assert whole == {"text": server.SENTENCE, "tokens": len(tokens)}


# -- grpc_echo: a gRPC function through the platform's gRPC entry point ----------------------------


@pytest.mark.nats
@pytest.mark.timeout(90)
def test_grpc_echo_answers_unary_and_streaming_calls_under_the_dev_command(tmp_path: Path) -> None:
    grpc = pytest.importorskip("grpc")
    port, proxy_port, platform_port = free_ports(3)
    argv = localize(readme_dev_command("grpc_echo"), {"8000": port, "10081": proxy_port})
    argv[2:2] = ["--port", str(platform_port)]  # the platform's port, 8080 by default
    function_id = parse_dev_command(argv).function_id
    command = DevCommand(argv, tmp_path / "dev.log")
    try:
        command.wait_ready(60)
        assert f"h2c at 127.0.0.1:{proxy_port}" in command.output()  # dev prints the address
        metadata = [("authorization", "Bearer nvcf-local-key"), ("function-id", function_id)]
        options = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{proxy_port}", options=options) as channel:
            unary = channel.unary_unary("/echo.Echo/Unary")(b"hello", metadata=metadata, timeout=30)
            repeated = list(
                channel.unary_stream("/echo.Echo/Repeat")(b"again", metadata=metadata, timeout=30)
            )
            chat = list(
                channel.stream_stream("/echo.Echo/Chat")(
                    iter([b"a", b"bb"]), metadata=metadata, timeout=30
                )
            )
    finally:
        status = command.stop()
    assert status == 0, command.output()
    assert (unary, repeated, chat) == (b"hello", [b"again"] * 3, [b"a", b"bb"])
