"""PyTriton integration: contexts from request parameters, the per-request decorator, the config,
and a real PyTriton model called over HTTP with NVCF headers."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pytriton.proxy.types import Request

from harness.http import http_request
from harness.nvcf import ASSET, nvcf_invocation
from harness.triton import StartPyTriton, TritonServer
from nvcf_worker import InvocationContext, current_request_id
from nvcf_worker.errors import InvalidHeader
from nvcf_worker.integrations import pytriton as nvcf_pytriton
from nvcf_worker.integrations.pytriton import (
    HEADER_FORWARD_PATTERN,
    context_from_request,
    infer_with_context,
    nvcf_triton_config,
)

SERVERS = Path(__file__).parent / "servers"
MODEL = "nvcf_context"


def pytriton_request(parameters: dict[str, Any] | None, text: bytes = b"hi") -> Request:
    return Request(data={"TEXT": np.array([text], dtype=np.object_)}, parameters=parameters)


def start_model_server(pytriton_server: StartPyTriton) -> TritonServer:
    """Start the test model and wait until the model itself is ready.

    PyTriton's `/v2/health/ready` (what the fixture waits for) answers 200 as soon as the
    server runs, before `bind` has loaded the model, even with `strict_readiness`.
    """
    server = pytriton_server(SERVERS / "nvcf_pytriton_model.py")
    server.process.wait_http_ok(f"{server.http_url}/v2/models/{MODEL}/ready", timeout=60)
    return server


def infer_body(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [text]}]}


# -- in process -------------------------------------------------------------------------------


def test_import_nvcf_worker_does_not_import_the_integration() -> None:
    code = (
        "import sys, nvcf_worker; "
        "assert 'nvcf_worker.integrations.pytriton' not in sys.modules; "
        "assert 'pytriton' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_context_from_request_reads_the_forwarded_parameters() -> None:
    ctx = context_from_request(
        pytriton_request({"NVCF-REQID": "req-1", "nvcf-function-name": "demo"})
    )
    assert ctx.request_id == "req-1"
    assert ctx.function_name == "demo"


def test_context_from_request_without_parameters_is_a_missing_request_id() -> None:
    with pytest.raises(InvalidHeader, match="NVCF-REQID") as caught:
        context_from_request(pytriton_request(None))
    assert caught.value.header == "NVCF-REQID"


def test_infer_with_context_serves_each_request_with_its_context_and_bound_id() -> None:
    seen: list[tuple[str, str | None]] = []

    @infer_with_context
    def infer(request: Request, ctx: InvocationContext) -> dict[str, Any]:
        seen.append((ctx.request_id, current_request_id()))
        return {"TEXT_UPPER": np.char.upper(request["TEXT"].astype(np.str_))}

    responses = infer(
        [
            pytriton_request({"NVCF-REQID": "a"}, b"one"),
            pytriton_request({"NVCF-REQID": "b"}, b"two"),
        ]
    )
    assert seen == [("a", "a"), ("b", "b")]
    assert [response["TEXT_UPPER"].tolist() for response in responses] == [["ONE"], ["TWO"]]
    assert all(isinstance(response, dict) for response in responses)
    assert current_request_id() is None


def test_infer_with_context_refuses_the_batch_before_serving_any_request() -> None:
    served: list[str] = []

    @infer_with_context
    def infer(request: Request, ctx: InvocationContext) -> dict[str, Any]:
        served.append(ctx.request_id)
        return {}

    with pytest.raises(InvalidHeader, match=re.escape("invalid NVCF-REQID header '../x'")):
        infer([pytriton_request({"NVCF-REQID": "a"}), pytriton_request({"NVCF-REQID": "../x"})])
    assert served == []


async def test_infer_with_context_runs_async_requests_concurrently_with_their_own_ids() -> None:
    started: list[str] = []
    both_started = asyncio.Event()

    @infer_with_context
    async def infer(request: Request, ctx: InvocationContext) -> dict[str, Any]:
        started.append(ctx.request_id)
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), timeout=5)  # both are in flight at once
        return {"ID": np.array([str(current_request_id()).encode()], dtype=np.object_)}

    assert asyncio.iscoroutinefunction(infer)
    responses = await infer(
        [pytriton_request({"NVCF-REQID": "a"}), pytriton_request({"NVCF-REQID": "b"})]
    )
    assert [response["ID"].tolist() for response in responses] == [[b"a"], [b"b"]]


async def test_infer_with_context_serves_an_object_with_async_call_asynchronously() -> None:
    class Model:
        async def __call__(self, request: Request, ctx: InvocationContext) -> dict[str, Any]:
            return {"ID": np.array([ctx.request_id.encode()], dtype=np.object_)}

    infer = infer_with_context(Model())
    assert asyncio.iscoroutinefunction(infer)
    [response] = await infer([pytriton_request({"NVCF-REQID": "a"})])
    assert response["ID"].tolist() == [b"a"]


def test_infer_with_context_names_the_request_when_the_function_returns_no_mapping() -> None:
    @infer_with_context
    def infer(request: Request, ctx: InvocationContext) -> dict[str, Any]:
        return [1, 2]  # type: ignore[return-value]

    with pytest.raises(TypeError, match="returned list for request 'a'"):
        infer([pytriton_request({"NVCF-REQID": "a"})])


def test_nvcf_triton_config_defaults_prepares_the_environment_and_takes_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepared: list[bool] = []
    monkeypatch.setattr(
        nvcf_pytriton, "prepare_pytriton_environment", lambda: prepared.append(True)
    )
    config = nvcf_triton_config()
    assert prepared == [True]
    assert config.http_port == 8000
    assert config.http_header_forward_pattern == HEADER_FORWARD_PATTERN == "(?i)NVCF-.*"
    assert config.strict_readiness is True
    overridden = nvcf_triton_config(http_port=9000, http_address="127.0.0.1")
    assert (overridden.http_port, overridden.http_address) == (9000, "127.0.0.1")


# -- a real PyTriton server ---------------------------------------------------------------------


@pytest.mark.triton
def test_pytriton_model_gets_its_context_and_writes_progress_and_outputs(
    pytriton_server: StartPyTriton, tmp_path: Path
) -> None:
    server = start_model_server(pytriton_server)
    headers, output_dir = nvcf_invocation(tmp_path, "req-pytriton-1")
    # Triton forwards header names as sent; the (?i) pattern lets any casing through.
    headers["nvcf-function-name"] = "demo"
    headers["Nvcf-Poll-Seconds"] = "42"

    response = http_request(
        "POST", server.infer_url(MODEL), json_body=infer_body("hello"), headers=headers
    )

    assert response.status == 200, response.body
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert outputs["TEXT_UPPER"] == ["HELLO"]
    echo = json.loads(outputs["CONTEXT"][0])
    assert echo["bound_request_id"] == "req-pytriton-1"
    assert echo["context"]["NVCF-LARGE-OUTPUT-DIR"] == str(output_dir)
    assert echo["context"]["NVCF-FUNCTION-NAME"] == "demo"
    assert echo["context"]["NVCF-POLL-SECONDS"] == "42"
    assert json.loads((output_dir / "progress").read_bytes()) == {
        "id": "req-pytriton-1",
        "progress": 100,
        "partialResponse": {"stage": "done", "bytes": len(ASSET)},
    }
    assert (output_dir / "result.txt").read_bytes() == ASSET + b"|hello"
    assert sorted(path.name for path in output_dir.iterdir()) == ["progress", "result.txt"]
    assert "[req-pytriton-1] serving hello" in server.process.log_text()


@pytest.mark.triton
def test_pytriton_answers_an_invalid_request_id_with_a_400_naming_header_and_value(
    pytriton_server: StartPyTriton, tmp_path: Path
) -> None:
    server = start_model_server(pytriton_server)
    headers, output_dir = nvcf_invocation(tmp_path, "req-pytriton-2")
    headers["NVCF-REQID"] = "../escape"

    response = http_request(
        "POST", server.infer_url(MODEL), json_body=infer_body("hello"), headers=headers
    )

    # PyTriton has no error codes: nvidia-pytriton 0.5.0's Triton answers 400, later ones 500.
    assert response.status in (400, 500)
    assert "invalid NVCF-REQID header '../escape'" in response.json()["error"]
    assert list(output_dir.iterdir()) == []
    # The model keeps serving after a refused request.
    headers["NVCF-REQID"] = "req-pytriton-2"
    again = http_request(
        "POST", server.infer_url(MODEL), json_body=infer_body("again"), headers=headers
    )
    assert again.status == 200, again.body
