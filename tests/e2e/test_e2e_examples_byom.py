"""The BYOM example end to end: examples/byom's Triton model repository behind the local stack,
invoked through the platform with a Predict Protocol v2 (KServe v2) JSON body.

Two functions serve the same model. `readme` starts Triton as examples/byom/README.md says
(`nvcf-tritonserver --model-repository ...`); `function.json` starts it with the Triton flags of
the definition's `containerArgs` (its own header-forward pattern) and with nvcf_worker vendored
into the model directory, as a model-only NVCF function would be served. Either way the model
must see the caller-visible request id, and its progress reports reach the caller as 202s.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.ports import LOOPBACK, free_ports
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack

pytestmark = [pytest.mark.nats, pytest.mark.triton, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "byom"
DEFINITION = json.loads((EXAMPLE / "function.json").read_text())
MODEL = DEFINITION["models"][0]["name"]
MAX_POLLS = 40


def _launcher() -> list[str]:
    """`nvcf-tritonserver` of this environment (the README's command)."""
    script = Path(sys.executable).parent / "nvcf-tritonserver"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "nvcf_worker.integrations.tritonserver"]


def _container_args_flags() -> list[str]:
    """function.json's tritonserver flags, less the model repository (a local copy is served).

    Split on white space, as the definition is one string; every flag is `--name=value`.
    """
    words = DEFINITION["containerArgs"].split()
    assert words[0] == "tritonserver"
    return [word for word in words[1:] if not word.startswith("--model-repository")]


def _copy_repository(destination: Path, *, vendor_library: bool) -> Path:
    shutil.copytree(
        EXAMPLE / "model_repository",
        destination,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if vendor_library:  # what a model-only function uploads: the library beside model.py
        shutil.copytree(
            ROOT / "src" / "nvcf_worker",
            destination / MODEL / "1" / "nvcf_worker",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return destination


def _spec(label: str, repository: Path, backends: Path, launcher_args: list[str]) -> FunctionSpec:
    """Triton for one function on free ports. The python backend names its shared-memory
    regions with a fixed prefix, so two servers alive on one machine (these two, or another
    test's) need prefixes of their own, else one aborts with boost's lock_exception."""
    http_port, grpc_port, metrics_port = free_ports(3)
    separator = [] if "--" in launcher_args else ["--"]
    shm = f"--backend-config=python,shm-region-prefix-name=byom{http_port}_"
    command = [
        *_launcher(),
        f"--model-repository={repository}",
        f"--address={LOOPBACK}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--backend-directory={backends}",
        *launcher_args,
        *separator,
        shm,
    ]
    return FunctionSpec(
        command=command,
        inference_port=http_port,
        name=f"{DEFINITION['name']}-{label}",
        default_invocation_path=DEFINITION["inferenceUrl"],
        health_endpoint=DEFINITION["healthUri"],
    )


@dataclass(frozen=True)
class Byom:
    stack: LocalStack
    functions: dict[str, FunctionSpec]


@pytest.fixture(scope="module")
def byom(
    tmp_path_factory: pytest.TempPathFactory, triton_backend_directory: Path
) -> Iterator[Byom]:
    directory = tmp_path_factory.mktemp("byom")
    functions = {
        "readme": _spec(
            "readme",
            _copy_repository(directory / "repository", vendor_library=False),
            triton_backend_directory,
            [],
        ),
        "function.json": _spec(
            "definition",
            _copy_repository(directory / "vendored", vendor_library=True),
            triton_backend_directory,
            # No pattern from the launcher: the one in containerArgs must do the forwarding.
            ["--http-header-forward-pattern=", "--", *_container_args_flags()],
        ),
    }
    stack = LocalStack(list(functions.values()), work_dir=directory / "stack")
    stack.start(timeout=150)
    try:
        yield Byom(stack, functions)
    finally:
        stack.stop()
        for process in stack.processes():
            sys.stdout.write(f"\n----- {process.name} -----\n{process.log_tail(40)}\n")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), trust_env=False
    ) as session:
        yield session


async def invoke(
    http: aiohttp.ClientSession, stack: LocalStack, function: FunctionSpec, body: Any
) -> list[Answer]:
    """POST pexec, then poll the status route while the answer is a 202, like an NVCF client."""
    async with http.post(
        stack.invoke_url(function.function_id),
        json=body,
        headers={**stack.auth_headers, "NVCF-POLL-SECONDS": "10"},
        allow_redirects=False,
    ) as response:
        answers = [Answer(response.status, response.headers, await response.read())]
    request_id = answers[0].headers["nvcf-reqid"]
    while answers[-1].status == 202:
        assert len(answers) < MAX_POLLS, f"still 202 after {MAX_POLLS} polls"
        async with http.get(
            f"{stack.base_url}/v2/nvcf/pexec/status/{request_id}",
            headers=stack.auth_headers,
            allow_redirects=False,
        ) as response:
            answers.append(Answer(response.status, response.headers, await response.read()))
    return answers


def tensor(name: str, datatype: str, data: list[float]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


def outputs_of(answer: Answer) -> dict[str, dict[str, Any]]:
    document = answer.json()
    assert document["model_name"] == MODEL
    return {output["name"]: output for output in document["outputs"]}


def wait_for_log(path: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text(errors="replace") if path.exists() else ""
        if text in log or time.monotonic() >= deadline:
            return log
        time.sleep(0.05)


def test_the_definition_names_the_model_of_the_repository() -> None:
    config = (EXAMPLE / "model_repository" / MODEL / "config.pbtxt").read_text()
    assert f'name: "{MODEL}"' in config
    assert (EXAMPLE / "model_repository" / MODEL / "1" / "model.py").is_file()
    assert DEFINITION["inferenceUrl"] == f"/v2/models/{MODEL}/infer"
    assert DEFINITION["apiBodyFormat"] == "PREDICT_V2"
    assert DEFINITION["inferencePort"] == 8000


@pytest.mark.parametrize("label", ["readme", "function.json"])
async def test_the_model_scales_sums_and_sees_the_nvcf_request_id(
    byom: Byom, http: aiohttp.ClientSession, label: str
) -> None:
    function = byom.functions[label]
    body = {
        "inputs": [
            tensor("INPUT", "FP32", [1, 2.5, -3, 0.25]),
            tensor("SCALE", "FP32", [2]),
        ]
    }
    answers = await invoke(http, byom.stack, function, body)
    final = answers[-1]
    assert final.status == 200, final.body
    assert final.headers["nvcf-status"] == "fulfilled"
    request_id = final.headers["nvcf-reqid"]
    outputs = outputs_of(final)
    assert outputs["OUTPUT"]["datatype"] == "FP32"
    assert outputs["OUTPUT"]["shape"] == [4]
    assert outputs["OUTPUT"]["data"] == [2.0, 5.0, -6.0, 0.5]
    assert outputs["SUM"]["data"] == [1.5]
    assert outputs["REQUEST_ID"]["data"] == [request_id]  # the model saw NVCF-REQID

    # Progress the model reported before it answered may have reached the caller as 202s.
    for answer in answers[:-1]:
        assert answer.status == 202
        assert answer.headers["nvcf-reqid"] == request_id
        percent = answer.headers.get("NVCF-PERCENT-COMPLETE")
        if percent is not None:
            expected = {"50": {"stage": "scaled", "elements": 4}, "100": {"stage": "summed"}}
            assert answer.json() == expected[percent]

    log_path = byom.stack.container(function.version_id).log_path
    line = f"[INFERENCE] [{request_id}] scaled 4 values by 2, sum 1.5"
    assert line in wait_for_log(log_path, line)


@pytest.mark.parametrize("label", ["readme", "function.json"])
async def test_scale_defaults_to_one(byom: Byom, http: aiohttp.ClientSession, label: str) -> None:
    body = {"inputs": [tensor("INPUT", "FP32", [0.5, 1.5])]}
    answers = await invoke(http, byom.stack, byom.functions[label], body)
    assert answers[-1].status == 200, answers[-1].body
    outputs = outputs_of(answers[-1])
    assert outputs["OUTPUT"]["data"] == [0.5, 1.5]
    assert outputs["SUM"]["data"] == [2.0]


async def test_an_empty_input_is_refused_with_a_problem_naming_it(
    byom: Byom, http: aiohttp.ClientSession
) -> None:
    body = {"inputs": [tensor("INPUT", "FP32", [])]}
    answers = await invoke(http, byom.stack, byom.functions["readme"], body)
    final = answers[-1]
    # Triton 2.41 (nvidia-pytriton 0.5) answers 400 for any model error; newer Tritons answer
    # the error's code, INTERNAL (500) for a plain message.
    assert final.status in (400, 500), final.body
    assert final.headers["Content-Type"] == "application/problem+json"
    assert final.headers["nvcf-status"] == "errored"
    assert final.json()["detail"] == "INPUT must hold at least one value"
    # The model still serves the next request.
    ok = await invoke(
        http, byom.stack, byom.functions["readme"], {"inputs": [tensor("INPUT", "FP32", [3])]}
    )
    assert ok[-1].status == 200, ok[-1].body
