"""ASGI integration: the middleware and the FastAPI dependency in process, and a real FastAPI app
under uvicorn called over HTTP with NVCF headers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from harness.http import http_request
from harness.nvcf import ASSET, nvcf_invocation
from harness.ports import LOOPBACK, free_port
from harness.processes import ManagedProcess, StartProcess
from nvcf_worker import InvocationContext, current_request_id
from nvcf_worker.errors import InvalidHeader
from nvcf_worker.integrations.asgi import (
    STATE_KEY,
    NVCFContextMiddleware,
    context_from_request,
    nvcf_context,
)

SERVER_SCRIPT = Path(__file__).parent / "servers" / "nvcf_fastapi_server.py"
PROBLEM = "application/problem+json"


# -- in process -------------------------------------------------------------------------------


def http_scope(headers: dict[str, str], scope_type: str = "http") -> Scope:
    return {
        "type": scope_type,
        "method": "GET",
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


class RecordingApp:
    """An ASGI app that records what it saw and answers 204."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str | None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append((scope.get("state", {}).get(STATE_KEY), current_request_id()))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})


async def call(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_import_nvcf_worker_does_not_import_the_integration() -> None:
    code = (
        "import sys, nvcf_worker; "
        "assert 'nvcf_worker.integrations.asgi' not in sys.modules; "
        "assert 'starlette' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_middleware_stores_the_context_and_binds_the_request_id() -> None:
    app = RecordingApp()
    sent = await call(NVCFContextMiddleware(app), http_scope({"NVCF-REQID": "req-1"}))
    [(ctx, bound)] = app.calls
    assert isinstance(ctx, InvocationContext)
    assert (ctx.request_id, bound) == ("req-1", "req-1")
    assert sent[0]["status"] == 204
    assert current_request_id() is None


async def test_middleware_answers_an_invalid_header_without_calling_the_app() -> None:
    app = RecordingApp()
    scope = http_scope({"NVCF-REQID": "req-1", "NVCF-LARGE-OUTPUT-DIR": "/a/../b"})
    start, body = await call(NVCFContextMiddleware(app), scope)
    assert app.calls == []
    assert start["status"] == 400
    assert (b"content-type", PROBLEM.encode()) in start["headers"]
    assert json.loads(body["body"]) == {
        "title": "Bad Request",
        "status": 400,
        "detail": "invalid NVCF-LARGE-OUTPUT-DIR header '/a/../b': must not contain a '..' segment",
        "header": "NVCF-LARGE-OUTPUT-DIR",
        "value": "/a/../b",
    }


@pytest.mark.parametrize(
    ("scope_type", "headers"),
    [("http", {"x-other": "1"}), ("websocket", {"NVCF-REQID": "../x"}), ("lifespan", {})],
)
async def test_middleware_passes_other_traffic_through_untouched(
    scope_type: str, headers: dict[str, str]
) -> None:
    app = RecordingApp()
    await call(NVCFContextMiddleware(app), http_scope(headers, scope_type))
    assert app.calls == [(None, None)]


async def test_nvcf_context_returns_the_middlewares_context() -> None:
    stored = InvocationContext.from_headers({"NVCF-REQID": "from-middleware"})
    scope = http_scope({"NVCF-REQID": "from-headers"})
    scope["state"] = {STATE_KEY: stored}
    assert await nvcf_context(Request(scope)) is stored


async def test_nvcf_context_parses_the_headers_without_the_middleware() -> None:
    ctx = await nvcf_context(Request(http_scope({"NVCF-REQID": "r1", "NVCF-ENV": "prod"})))
    assert (ctx.request_id, ctx.env) == ("r1", "prod")


async def test_nvcf_context_turns_a_bad_or_missing_header_into_http_400() -> None:
    with pytest.raises(HTTPException) as caught:
        await nvcf_context(Request(http_scope({})))
    assert caught.value.status_code == 400
    assert caught.value.detail.startswith("invalid NVCF-REQID header None: missing")


def test_context_from_request_raises_invalid_header() -> None:
    with pytest.raises(InvalidHeader, match="'a/b'"):
        context_from_request(Request(http_scope({"NVCF-REQID": "a/b"})))


# -- a real FastAPI app under uvicorn -----------------------------------------------------------


@pytest.fixture
def fastapi_server(start_process: StartProcess) -> tuple[ManagedProcess, str]:
    port = free_port()
    process = start_process([sys.executable, SERVER_SCRIPT, str(port)], name="fastapi-server")
    base_url = f"http://{LOOPBACK}:{port}"
    process.wait_http_ok(f"{base_url}/health", timeout=30)
    return process, base_url


@pytest.mark.parametrize(("path", "text"), [("/infer", "hello"), ("/infer-sync", "sync")])
def test_server_serves_an_invocation_with_progress_output_and_context(
    fastapi_server: tuple[ManagedProcess, str], tmp_path: Path, path: str, text: str
) -> None:
    process, base_url = fastapi_server
    headers, output_dir = nvcf_invocation(tmp_path, "req-fastapi-1")

    response = http_request("POST", f"{base_url}{path}", body=text.encode(), headers=headers)

    assert response.status == 200, response.body
    body: dict[str, Any] = response.json()
    assert body["text"] == text.upper()
    # Bound by the middleware, seen in async endpoints and in the thread pool alike.
    assert body["bound_request_id"] == "req-fastapi-1"
    assert body.get("same_as_middleware", True) is True
    assert body["context"]["NVCF-ASSET-DIR"] == headers["NVCF-ASSET-DIR"]
    assert json.loads((output_dir / "progress").read_bytes()) == {
        "id": "req-fastapi-1",
        "progress": 100,
        "partialResponse": {"stage": "done", "bytes": len(ASSET)},
    }
    assert (output_dir / "result.txt").read_bytes() == ASSET + f"|{text}".encode()
    assert sorted(path.name for path in output_dir.iterdir()) == ["progress", "result.txt"]
    process.wait_for_log(f"[req-fastapi-1] serving {text}", timeout=10)


def test_server_answers_an_invalid_header_with_a_400_problem(
    fastapi_server: tuple[ManagedProcess, str], tmp_path: Path
) -> None:
    _, base_url = fastapi_server
    headers, output_dir = nvcf_invocation(tmp_path, "req-fastapi-2")
    headers["NVCF-FUNCTION-ASSET-IDS"] = "ok,../../etc"

    response = http_request("POST", f"{base_url}/infer", body=b"hello", headers=headers)

    assert response.status == 400
    assert response.headers["Content-Type"] == PROBLEM
    problem = response.json()
    assert (problem["status"], problem["header"]) == (400, "NVCF-FUNCTION-ASSET-IDS")
    assert problem["value"] == "../../etc"  # the offending id of the list
    assert list(output_dir.iterdir()) == []


def test_server_dependency_refuses_a_call_without_request_id(
    fastapi_server: tuple[ManagedProcess, str],
) -> None:
    _, base_url = fastapi_server
    response = http_request("POST", f"{base_url}/infer", body=b"hello")
    assert response.status == 400
    assert response.json()["detail"].startswith("invalid NVCF-REQID header None: missing")


def test_server_health_route_answers_without_nvcf_headers(
    fastapi_server: tuple[ManagedProcess, str],
) -> None:
    _, base_url = fastapi_server
    response = http_request("GET", f"{base_url}/health")
    assert response.status == 200
    assert response.json() == {"status": "ok", "bound_request_id": None}
