"""NVIDIA's samples run unchanged: functions shaped like them (tests/e2e/servers/nvidia_samples/),
with only the helper import switched to `nvcf_worker.compat`, served by `nvcf-sidecar dev`.

One `dev --config` stack serves the FastAPI samples (assets, secrets, multi-endpoint), each
started with its Dockerfile's `uvicorn` command; a second `dev` serves the Triton model
repository through `nvcf-tritonserver`, as examples/byom/README.md starts one. Every call goes
through the platform as an NVCF caller makes it; every wait is bounded and every process reaped.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.http import HttpResponse, http_request
from harness.ports import LOOPBACK, free_ports
from harness.processes import ManagedProcess

pytestmark = [pytest.mark.nats, pytest.mark.timeout(240)]

SAMPLES = Path(__file__).resolve().parent / "servers" / "nvidia_samples"
DEV = [sys.executable, "-m", "nvcf_sidecar.cli", "dev"]
READY = "[dev] Ctrl-C stops everything."
KEY = "samples-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_POLLS = 40


@dataclass(frozen=True)
class Dev:
    """A running `nvcf-sidecar dev` and the ids of its functions by name."""

    process: ManagedProcess
    base_url: str
    ids: dict[str, str]

    def invoke_url(self, name: str) -> str:
        return f"{self.base_url}/v2/nvcf/pexec/functions/{self.ids[name]}"


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def _printed_pids(output: str) -> dict[str, int]:
    match = re.search(r"^\[dev\] pids: (.*)$", output, re.M)
    assert match is not None, output[-3000:]
    return {name: int(pid) for name, pid in re.findall(r"(\S+)=(\d+)", match.group(1))}


@dataclass(frozen=True)
class _Function:
    """One `[[functions]]` table: a sample directory served by `command` in that directory."""

    name: str
    sample: str
    command: list[str]
    port: int
    path: str
    extra: str = ""


def _config(functions: list[_Function]) -> tuple[str, dict[str, str]]:
    ids = {function.name: str(uuid.uuid4()) for function in functions}
    tables = [
        f'[[functions]]\nname = "{f.name}"\nid = "{ids[f.name]}"\n'
        f"cwd = {json.dumps(str(SAMPLES / f.sample))}\n"
        f"command = {json.dumps(f.command)}\ninference_port = {f.port}\n"
        f'default_invocation_path = "{f.path}"\nhealth_endpoint = "/health"\n{f.extra}'
        for f in functions
    ]
    return "\n".join(tables), ids


@contextlib.contextmanager
def running_dev(
    port: int, args: list[str], ids: dict[str, str], log_dir: Path, timeout: float
) -> Iterator[Dev]:
    """Start `nvcf-sidecar dev` on `port`; yield once it is ready; stop it with SIGTERM and
    check that every process it printed is gone."""
    command = [*DEV, "--port", str(port), "--api-key", KEY, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = ManagedProcess(command, name="dev", env=env, log_path=log_dir / "dev.log")
    process.start()
    pids: dict[str, int] = {}
    try:
        process.wait_for_log(READY, timeout=timeout)
        pids = _printed_pids(process.log_text())
        yield Dev(process, f"http://{LOOPBACK}:{port}", ids)
    finally:
        code = process.stop(timeout=30)
        sys.stdout.write(f"\n----- dev -----\n{process.log_tail(60)}\n")
        left = {name: pid for name, pid in pids.items() if not _gone(pid)}
        for pid in left.values():  # ours: reap them before failing
            os.kill(pid, signal.SIGKILL)
    assert code == 0, f"dev exited with {code}"
    assert not left, f"still running after dev stopped: {left}"


def follow(dev: Dev, first: HttpResponse) -> list[HttpResponse]:
    """Every answer from `first` on, polling the status route while it is a 202 (bounded)."""
    answers = [first]
    request_id = first.headers["nvcf-reqid"]
    while answers[-1].status == 202:
        assert len(answers) < MAX_POLLS, f"still 202 after {MAX_POLLS} polls"
        url = f"{dev.base_url}/v2/nvcf/pexec/status/{request_id}"
        answers.append(http_request("GET", url, headers=AUTH, timeout=30))
    return answers


def invoke(dev: Dev, name: str, body: Any, headers: dict[str, str] | None = None) -> HttpResponse:
    sent = {**AUTH, "NVCF-POLL-SECONDS": "5", **(headers or {})}
    return http_request("POST", dev.invoke_url(name), json_body=body, headers=sent, timeout=30)


# --- the FastAPI samples, one dev --config stack ----------------------------------------------

SECRETS = {"secret-key-1": "value-1", "secret-key-2": "value-2"}


@pytest.fixture(scope="module")
def fastapi_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    directory = tmp_path_factory.mktemp("nvidia-samples")
    secrets_file = directory / "secrets.json"
    secrets_file.write_text(json.dumps(SECRETS))
    platform, rotator, secrets, helper, multi = free_ports(5)

    def uvicorn(module: str, port: int) -> list[str]:
        # The Dockerfiles' `uvicorn <module>:app --host=0.0.0.0 --workers=$WORKER_COUNT`, run in
        # the sample's directory (their WORKDIR, dev's `cwd`) on loopback with one worker.
        return [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            f"--host={LOOPBACK}",
            f"--port={port}",
        ]

    secrets_env = (
        f"env = {{ SECRETS_PATH = {json.dumps(str(secrets_file))}, "
        f"ACCOUNTS_SECRETS_PATH = {json.dumps(str(directory / 'missing.json'))} }}\n"
    )
    config, ids = _config(
        [
            _Function(
                "rotator",
                "fastapi_asset",
                uvicorn("http_server", rotator),
                rotator,
                "/rotate_image",
            ),
            _Function(
                "secrets", "secrets", uvicorn("http_server", secrets), secrets, "/test", secrets_env
            ),
            _Function(
                "secrets-helpers",
                "secrets",
                uvicorn("http_server", helper),
                helper,
                "/helpers",
                f"secrets = {json.dumps(str(secrets_file))}\n",
            ),
            _Function(
                "multi", "multi_endpoint", uvicorn("http_echo_server", multi), multi, "/echo"
            ),
        ]
    )
    config_path = directory / "functions.toml"
    config_path.write_text(config)
    args = ["--config", str(config_path), "--work-dir", str(directory / "work")]
    with running_dev(platform, args, ids, directory, timeout=120) as dev:
        yield dev


def noise_png(side: int) -> tuple[bytes, Image.Image]:
    """A PNG of random pixels: it does not compress, so its base64 exceeds 5 MB at 1200 px."""
    image = Image.frombytes("RGB", (side, side), random.Random(13).randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image


def upload_asset(dev: Dev, data: bytes, content_type: str) -> str:
    """The assets API: create an asset, PUT its bytes to the presigned URL, return its id."""
    created = http_request(
        "POST",
        f"{dev.base_url}/v2/nvcf/assets",
        json_body={"contentType": content_type, "description": "nvidia sample"},
        headers=AUTH,
    )
    assert created.status == 200, created.body
    asset = created.json()
    stored = http_request(
        "PUT",
        asset["uploadUrl"],
        body=data,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert stored.status == 200, stored.body
    return str(asset["assetId"])


def test_fastapi_asset_sample_reports_float_progress_and_ships_its_image_as_a_zip(
    fastapi_dev: Dev,
) -> None:
    png, image = noise_png(1200)
    asset_id = upload_asset(fastapi_dev, png, "image/png")
    first = invoke(
        fastapi_dev,
        "rotator",
        {"steps": 3, "delay": 0.6},
        {"NVCF-INPUT-ASSET-REFERENCES": asset_id},
    )
    answers = follow(fastapi_dev, first)
    request_id = first.headers["nvcf-reqid"]

    # Progress 33.33.. and 66.66.. arrive as their integer part, with the partial response.
    assert first.status == 202, first.body
    progress = [
        (a.headers["NVCF-PERCENT-COMPLETE"], a.json())
        for a in answers
        if a.status == 202 and a.headers.get("NVCF-PERCENT-COMPLETE")
    ]
    assert progress, [(a.status, dict(a.headers)) for a in answers]
    for percent, partial in progress:
        assert percent == str(partial["step"] * 100 // 3), (percent, partial)
    assert progress[0][1] == {"step": 1, "of": 3}

    # The image was too large for the body: it is saved as an output, the answer is a zip.
    final = answers[-1]
    assert final.status == 302, final.body
    zipped = http_request("GET", final.headers["Location"], timeout=30)
    assert zipped.status == 200
    with zipfile.ZipFile(io.BytesIO(zipped.body)) as archive:
        assert archive.namelist() == [f"{request_id}.response", "image.png"]
        response = json.loads(archive.read(f"{request_id}.response"))
        saved = Image.open(io.BytesIO(archive.read("image.png")))
    assert response == {
        "request_id": request_id,
        "asset_ids": [asset_id],
        "image_saved": "image.png",
    }
    assert saved.tobytes() == image.transpose(Image.Transpose.ROTATE_180).tobytes()


def test_fastapi_asset_sample_through_the_invoke_client(fastapi_dev: Dev, tmp_path: Path) -> None:
    png, image = noise_png(1200)
    (tmp_path / "noise.png").write_bytes(png)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "nvcf_sidecar.cli", "invoke", fastapi_dev.ids["rotator"]]
    command += ["--url", fastapi_dev.base_url, "--api-key", KEY, "--poll-seconds", "5"]
    command += ["--asset", str(tmp_path / "noise.png"), "--out", str(out)]
    command += ["--data", '{"steps": 2, "delay": 0.6}', "--timeout", "100"]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    [saved] = out.rglob("image.png")
    assert Image.open(saved).tobytes() == image.transpose(Image.Transpose.ROTATE_180).tobytes()


def test_secrets_sample_reads_the_file_its_variable_names(fastapi_dev: Dev) -> None:
    one = invoke(fastapi_dev, "secrets", {"key": "secret-key-1"})
    assert one.status == 200, one.body
    assert one.json() == {"function secrets": {"secret-key-1": "value-1"}, "account secrets": {}}
    every = invoke(fastapi_dev, "secrets", {})
    assert every.json() == {"function secrets": SECRETS, "account secrets": {}}


def test_get_secrets_reads_the_secrets_dev_was_given(fastapi_dev: Dev) -> None:
    answer = invoke(fastapi_dev, "secrets-helpers", {"key": "secret-key-2"})
    assert answer.status == 200, answer.body
    assert answer.json() == {"function secrets": {"secret-key-2": "value-2"}}


def test_multi_endpoint_sample_echoes_and_streams_on_its_invocation_path(
    fastapi_dev: Dev,
) -> None:
    plain = invoke(fastapi_dev, "multi", {"message": "hi", "repeats": 3})
    assert plain.status == 200, plain.body
    assert plain.json() == "hihihi"
    stream = invoke(
        fastapi_dev,
        "multi",
        {"message": "hi", "repeats": 3, "stream": True, "delay": 0.05},
        {"Accept": "text/event-stream"},
    )
    assert stream.status == 200, stream.body
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    request_id = stream.headers["nvcf-reqid"]
    assert stream.body.decode() == f"id: {request_id}\ndata: hi\n\n" * 3


# --- the Triton python-backend sample, dev's one-function form ---------------------------------

ADD_SUB = "add_sub"


@pytest.fixture(scope="module")
def triton_dev(
    tmp_path_factory: pytest.TempPathFactory, triton_backend_directory: Path
) -> Iterator[Dev]:
    directory = tmp_path_factory.mktemp("nvidia-triton")
    repository = directory / "model_repository"  # a copy: Triton leaves __pycache__ behind
    shutil.copytree(SAMPLES / "triton_add_sub" / "model_repository", repository)
    platform, http_port, grpc_port, metrics_port = free_ports(4)
    function_id = str(uuid.uuid4())
    args = ["--work-dir", str(directory / "work"), "--inference-port", str(http_port)]
    args += ["--path", f"/v2/models/{ADD_SUB}/infer", "--health-endpoint", "/v2/health/ready"]
    args += ["--name", "add-sub", "--function-id", function_id, "--"]
    # examples/byom/README.md's command, on free loopback ports; the python backend's shared
    # memory gets a prefix of its own so another test's Triton on this machine cannot clash.
    args += [sys.executable, "-m", "nvcf_worker.integrations.tritonserver"]
    args += [f"--model-repository={repository}", f"--address={LOOPBACK}"]
    args += [f"--http-port={http_port}", f"--grpc-port={grpc_port}"]
    args += [f"--metrics-port={metrics_port}", f"--backend-directory={triton_backend_directory}"]
    args += ["--", f"--backend-config=python,shm-region-prefix-name=addsub{http_port}_"]
    with running_dev(platform, args, {ADD_SUB: function_id}, directory, timeout=150) as dev:
        yield dev


@pytest.mark.triton
def test_triton_add_sub_sample_answers_predict_v2_with_the_forwarded_request_id(
    triton_dev: Dev,
) -> None:
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": [0.5, 0.5, 0.5, 0.5]},
        ]
    }
    first = invoke(triton_dev, ADD_SUB, body)
    answers = follow(triton_dev, first)
    for answer in answers[:-1]:  # the model's progress report, when the caller saw it
        assert answer.headers.get("NVCF-PERCENT-COMPLETE") in (None, "50")
    final = answers[-1]
    assert final.status == 200, final.body
    document = final.json()
    assert document["model_name"] == ADD_SUB
    outputs = {output["name"]: output["data"] for output in document["outputs"]}
    assert outputs == {
        "OUTPUT0": [1.5, 2.5, 3.5, 4.5],
        "OUTPUT1": [0.5, 1.5, 2.5, 3.5],
        "REQUEST_ID": [first.headers["nvcf-reqid"]],
    }
