"""aiohttp integration: the context middleware in process, and a real aiohttp server process
called over HTTP with NVCF headers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from harness.http import http_request
from harness.nvcf import ASSET, nvcf_invocation
from harness.ports import LOOPBACK, free_port
from harness.processes import ManagedProcess, StartProcess
from nvcf_worker import current_request_id
from nvcf_worker.errors import InvalidHeader
from nvcf_worker.integrations.aiohttp import (
    NVCF_CONTEXT_KEY,
    context_from_request,
    get_context,
    nvcf_context_middleware,
)

SERVER_SCRIPT = Path(__file__).parent / "servers" / "nvcf_aiohttp_server.py"
PROBLEM = "application/problem+json"


# -- in process -------------------------------------------------------------------------------


async def echo_context(request: web.Request) -> web.Response:
    ctx = get_context(request)
    return web.json_response({"request_id": ctx.request_id, "bound": current_request_id()})


async def no_context(request: web.Request) -> web.Response:
    return web.json_response({"has_context": NVCF_CONTEXT_KEY in request})


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[nvcf_context_middleware])
    app.router.add_get("/echo", echo_context)
    app.router.add_get("/health", no_context)
    async with TestClient(TestServer(app, host=LOOPBACK)) as test_client:
        yield test_client


def test_import_nvcf_worker_does_not_import_the_integration() -> None:
    code = (
        "import sys, nvcf_worker; "
        "assert 'nvcf_worker.integrations.aiohttp' not in sys.modules; "
        "assert 'aiohttp' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_context_from_request_reads_headers_in_any_case() -> None:
    request = make_mocked_request("GET", "/", headers={"nvcf-reqid": "r1", "Nvcf-Region": "eu"})
    ctx = context_from_request(request)
    assert (ctx.request_id, ctx.region) == ("r1", "eu")


def test_get_context_without_the_middleware_names_the_missing_request_id() -> None:
    request = make_mocked_request("GET", "/")
    with pytest.raises(InvalidHeader, match="is nvcf_context_middleware installed") as caught:
        get_context(request)
    assert caught.value.header == "NVCF-REQID"


async def test_middleware_stores_the_context_and_binds_the_request_id(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/echo", headers={"NVCF-REQID": "req-1"})
    assert response.status == 200
    assert await response.json() == {"request_id": "req-1", "bound": "req-1"}


async def test_middleware_answers_an_invalid_header_with_a_problem(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get(
        "/echo", headers={"NVCF-REQID": "req-1", "NVCF-MAX-RESPONSE-SIZE-BYTES": "lots"}
    )
    assert response.status == 400
    assert response.content_type == PROBLEM
    problem = await response.json()
    assert problem == {
        "title": "Bad Request",
        "status": 400,
        "detail": "invalid NVCF-MAX-RESPONSE-SIZE-BYTES header 'lots': expected a decimal integer",
        "header": "NVCF-MAX-RESPONSE-SIZE-BYTES",
        "value": "lots",
    }


async def test_a_request_without_request_id_reaches_its_handler_without_context(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/health")
    assert await response.json() == {"has_context": False}


async def test_get_context_on_a_request_without_request_id_becomes_a_400_problem(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/echo")
    assert response.status == 400
    assert response.content_type == PROBLEM
    problem = await response.json()
    assert problem["header"] == "NVCF-REQID"
    assert problem["value"] is None


# -- a real aiohttp server process --------------------------------------------------------------


@pytest.fixture
def aiohttp_server(start_process: StartProcess) -> tuple[ManagedProcess, str]:
    port = free_port()
    process = start_process([sys.executable, SERVER_SCRIPT, str(port)], name="aiohttp-server")
    base_url = f"http://{LOOPBACK}:{port}"
    process.wait_http_ok(f"{base_url}/health", timeout=30)
    return process, base_url


def test_server_serves_an_invocation_with_progress_output_and_context(
    aiohttp_server: tuple[ManagedProcess, str], tmp_path: Path
) -> None:
    process, base_url = aiohttp_server
    headers, output_dir = nvcf_invocation(tmp_path, "req-aiohttp-1")

    response = http_request("POST", f"{base_url}/infer", body=b"hello", headers=headers)

    assert response.status == 200, response.body
    body: dict[str, Any] = response.json()
    assert body["text"] == "HELLO"
    assert body["bound_request_id"] == "req-aiohttp-1"
    assert body["context"]["NVCF-LARGE-OUTPUT-DIR"] == str(output_dir)
    assert body["context"]["NVCF-FUNCTION-ASSET-IDS"] == "asset-1"
    assert json.loads((output_dir / "progress").read_bytes()) == {
        "id": "req-aiohttp-1",
        "progress": 100,
        "partialResponse": {"stage": "done", "bytes": len(ASSET)},
    }
    assert (output_dir / "result.txt").read_bytes() == ASSET + b"|hello"
    assert sorted(path.name for path in output_dir.iterdir()) == ["progress", "result.txt"]
    process.wait_for_log("[req-aiohttp-1] serving hello", timeout=10)


def test_server_answers_an_invalid_header_with_a_400_problem(
    aiohttp_server: tuple[ManagedProcess, str], tmp_path: Path
) -> None:
    _, base_url = aiohttp_server
    headers, output_dir = nvcf_invocation(tmp_path, "req-aiohttp-2")
    headers["NVCF-ASSET-DIR"] = "relative/dir"

    response = http_request("POST", f"{base_url}/infer", body=b"hello", headers=headers)

    assert response.status == 400
    assert response.headers["Content-Type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["status"] == 400
    assert problem["header"] == "NVCF-ASSET-DIR"
    assert problem["value"] == "relative/dir"
    assert "must be an absolute directory" in problem["detail"]
    assert list(output_dir.iterdir()) == []


def test_server_health_route_answers_without_nvcf_headers(
    aiohttp_server: tuple[ManagedProcess, str],
) -> None:
    _, base_url = aiohttp_server
    response = http_request("GET", f"{base_url}/health")
    assert response.status == 200
    assert response.json() == {"status": "ok", "bound_request_id": None}
