"""A real Triton function through the whole stack: a PyTriton model behind the sidecar.

The function's default invocation path is the model's KServe v2 infer route, as an NVCF
Triton function is deployed; the caller posts a KServe v2 JSON body to pexec and gets the
model's output tensors, and the model sees the caller-visible reqid as NVCF-REQID.

Its health endpoint is the model's ready route, not `/v2/health/ready`: PyTriton starts
tritonserver before it loads the bound models, so the server route answers 200 (zero models,
all ready) for a while before the model exists, and a sidecar checking it would take requests
that fail with 400 "unknown model". The test shows that window, then invokes.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.ports import free_ports
from nvcf_platform.devstack.stack import FunctionSpec
from nvcf_platform.devstack.stack_process import http_status

pytestmark = [pytest.mark.nats, pytest.mark.triton, pytest.mark.timeout(150)]

SCRIPT = Path(__file__).parent / "servers" / "pytriton_doubler.py"


@pytest.fixture
def pytriton_home() -> Iterator[Path]:
    """A short PYTRITON_HOME: PyTriton's IPC socket paths must stay under 107 bytes."""
    home = Path(tempfile.mkdtemp(prefix="pytriton-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def watch_readiness(port: int, within: float = 90.0) -> bool:
    """Poll the server's and the model's ready routes until the model is ready; whether the
    server answered 200 while the model did not yet."""
    base = f"http://127.0.0.1:{port}/v2"
    deadline = time.monotonic() + within
    early = False
    while http_status(f"{base}/models/doubler/ready", timeout=0.5) != 200:
        assert time.monotonic() < deadline, "the doubler model never became ready"
        early = early or http_status(f"{base}/health/ready", timeout=0.5) == 200
        time.sleep(0.01)
    return early


async def test_a_pytriton_model_is_invoked_through_the_stack_with_a_kserve_body(
    start_stack: Any, pytriton_home: Path
) -> None:
    http_port, grpc_port, metrics_port = free_ports(3)
    doubler = FunctionSpec(
        command=[sys.executable, str(SCRIPT)],
        inference_port=http_port,
        name="doubler",
        default_invocation_path="/v2/models/doubler/infer",
        health_endpoint="/v2/models/doubler/ready",
        sidecars=0,
        container_env={
            "TRITON_HTTP_PORT": str(http_port),
            "TRITON_GRPC_PORT": str(grpc_port),
            "TRITON_METRICS_PORT": str(metrics_port),
            "PYTRITON_HOME": str(pytriton_home),
        },
    )
    stack = start_stack([doubler], timeout=120)
    server_ready_before_model = await asyncio.to_thread(watch_readiness, http_port)
    assert server_ready_before_model, "/v2/health/ready was never 200 before the model loaded"
    await asyncio.to_thread(stack.add_sidecar, doubler.version_id, timeout=30)
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [3], "data": [1, 2.5, -3]}]}
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.post(
            stack.invoke_url(doubler.function_id), json=body, headers=stack.auth_headers
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["nvcf-status"] == "fulfilled"
        request_id = response.headers["nvcf-reqid"]
        answer = await response.json()
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert answer["model_name"] == "doubler"
    assert outputs["OUTPUT"]["datatype"] == "FP32"
    assert outputs["OUTPUT"]["shape"] == [3]
    assert outputs["OUTPUT"]["data"] == [2.0, 5.0, -6.0]
    assert outputs["REQID"]["data"] == [request_id]
