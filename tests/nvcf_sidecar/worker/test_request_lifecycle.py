"""How a request ends in the sidecar: directories, failures, problem answers, cancellation, metrics.

Real servers on loopback: the container is a process (`servers/data_path_container.py`), the
invocation service's attach endpoint runs in the test's event loop (`servers/data_path_attach.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.http import http_request
from harness.modules import load_module
from harness.ports import free_port
from nvcf_sidecar.protocol import H1_CONTENT_TYPE, WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.request import RequestRunner
from nvcf_sidecar.worker.sessions import HttpSessions

SERVERS = Path(__file__).parent / "servers"
attach_helpers = load_module(SERVERS / "data_path_attach.py")
container_server = load_module(SERVERS / "data_path_container.py")
AttachServer = attach_helpers.AttachServer
ServedBody = attach_helpers.ServedBody
invoke_request = attach_helpers.invoke_request

WAIT = 10.0


@dataclass
class Sidecar:
    config: WorkerConfig
    metrics: WorkerMetrics
    runner: RequestRunner

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
async def make_sidecar(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    async with AsyncExitStack() as stack:

        async def make(port: int, **overrides: Any) -> Sidecar:
            settings: dict[str, Any] = {
                "base_asset_dir": tmp_path / "assets",
                "base_response_dir": tmp_path / "response",
                **overrides,
            }
            config = WorkerConfig(
                function_id="11111111-1111-1111-1111-111111111111",
                function_version_id="22222222-2222-2222-2222-222222222222",
                grpc_url="http://127.0.0.1:1",
                inference_port=port,
                **settings,
            )
            sessions = await stack.enter_async_context(HttpSessions(config))
            metrics = WorkerMetrics()
            return Sidecar(config, metrics, RequestRunner(config, metrics, sessions))

        yield make


@pytest.fixture
async def sidecar(make_sidecar: Callable[..., Awaitable[Sidecar]], container: Any) -> Sidecar:
    return await make_sidecar(container.port)


def _token(request: WorkerInvokeFunctionRequest) -> str:
    return request.statelessConfig.connectionConfigs[0].http1Config.responseAuthorizationToken


async def _run(sidecar: Sidecar, attach_server: Any, request: Any) -> tuple[Outcome, Any]:
    attach_server.expect_response(_token(request))
    outcome = await sidecar.runner.run(request)
    return outcome, await attach_server.response(_token(request))


def _problem(post: Any) -> dict[str, Any]:
    head = post.head()
    assert head.status == 500
    assert ("Content-Type", "application/problem+json") in head.headers
    assert head.content_length() == len(head.body)
    problem: dict[str, Any] = orjson.loads(head.body)
    return problem


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _container_state(container: Any, request_id: str) -> dict[str, bool]:
    response = http_request("GET", f"http://127.0.0.1:{container.port}/state/{request_id}")
    state: dict[str, bool] = response.json()
    return state


# --- the response directory ----------------------------------------------------------------


async def test_response_dir_exists_world_writable_during_the_call_and_is_removed_after(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(attach_server.url, "dir-ok", path="/echo")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert orjson.loads(post.head().body)["large_output_dir_mode"] == 0o777
    assert not (sidecar.config.base_response_dir / "dir-ok").exists()
    assert sidecar.config.base_response_dir.is_dir()


async def test_no_response_dir_when_compatibility_is_disabled(
    make_sidecar: Callable[..., Awaitable[Sidecar]], attach_server: Any, container: Any
) -> None:
    sidecar = await make_sidecar(container.port, compatibility_disabled=True)
    request = invoke_request(attach_server.url, "no-dir", path="/echo")

    outcome, post = await _run(sidecar, attach_server, request)

    echo = orjson.loads(post.head().body)
    assert outcome is Outcome.DELIVERED
    assert echo["large_output_dir_mode"] is None
    assert ["NVCF-LARGE-OUTPUT-DIR", str(sidecar.config.base_response_dir / "no-dir")] in echo[
        "headers"
    ]


async def test_response_dir_failure_is_answered_500_preparing_for_inference(
    make_sidecar: Callable[..., Awaitable[Sidecar]],
    attach_server: Any,
    container: Any,
    tmp_path: Path,
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("in the way")
    sidecar = await make_sidecar(container.port, base_response_dir=not_a_dir)
    request = invoke_request(attach_server.url, "dir-fails", path="/echo")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert _problem(post) == {
        "type": "urn:nvcf-worker-service:problem-details:internal-server-error",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "Internal error while preparing for inference",
    }


async def test_a_request_id_that_is_not_one_path_component_never_names_a_directory(
    sidecar: Sidecar, attach_server: Any, tmp_path: Path
) -> None:
    (tmp_path / "victim").mkdir()
    request = invoke_request(attach_server.url, "../victim", path="/echo")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert _problem(post)["detail"] == "Internal error while preparing for inference"
    assert (tmp_path / "victim").is_dir()


# --- failures before and after the response head -------------------------------------------


async def test_a_refused_container_connection_is_an_inference_connection_problem(
    make_sidecar: Callable[..., Awaitable[Sidecar]], attach_server: Any
) -> None:
    sidecar = await make_sidecar(free_port())
    request = invoke_request(attach_server.url, "refused", path="/echo")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.CONTAINER_ERROR
    assert _problem(post) == {
        "type": "urn:inference-connection:problem-details:internal-server-error",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "Inference connection error while making inference request",
    }
    assert not (sidecar.config.base_response_dir / "refused").exists()


@pytest.mark.parametrize(("path", "received"), [("/die-length", 1000), ("/die-chunked", 5)])
async def test_a_container_dying_mid_body_truncates_the_relayed_response(
    make_sidecar: Callable[..., Awaitable[Sidecar]],
    attach_server: Any,
    container: Any,
    path: str,
    received: int,
) -> None:
    sidecar = await make_sidecar(container.raw_port)
    request = invoke_request(attach_server.url, "dies", path=path)

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.CONTAINER_ERROR
    assert post.error is not None  # the platform saw the POST break off, not a complete body
    head = post.head()
    assert head.status == 200
    assert len(head.body) == received
    assert sidecar.sample("nvcf_worker_attach_errors_total", direction="post") == 0


async def test_post_attach_refused_is_an_attach_error(sidecar: Sidecar, attach_server: Any) -> None:
    request = invoke_request(attach_server.url, "post-401", path="/echo", response_token="stale")

    outcome = await sidecar.runner.run(request)

    assert outcome is Outcome.ATTACH_ERROR
    assert [(post.token, post.status) for post in attach_server.posts] == [("stale", 401)]
    assert sidecar.sample("nvcf_worker_attach_errors_total", direction="post") == 1
    assert not (sidecar.config.base_response_dir / "post-401").exists()


async def test_get_attach_refused_is_answered_with_a_500_problem(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(
        attach_server.url,
        "get-401",
        path="/echo",
        headers=[("content-length", str(32 * 1024 + 10))],
        body=b"x" * 32 * 1024,
        request_token="unknown-token",
    )

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert _problem(post)["type"] == "urn:nvcf-worker-service:problem-details:internal-server-error"
    assert _problem(post)["detail"] == "Internal error while making inference request"
    assert [(get.token, get.status) for get in attach_server.gets] == [("unknown-token", 401)]
    assert sidecar.sample("nvcf_worker_attach_errors_total", direction="get") == 1


async def test_a_body_shorter_than_its_content_length_fails_instead_of_hanging(
    sidecar: Sidecar, attach_server: Any
) -> None:
    attach_server.serve_body("short-rest", ServedBody(b"y" * 100))
    request = invoke_request(
        attach_server.url,
        "short-body",
        path="/echo",
        headers=[("content-length", str(32 * 1024 + 1000))],
        body=b"x" * 32 * 1024,
        request_token="short-rest",
    )

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert _problem(post)["detail"] == "Internal error while making inference request"
    assert sidecar.sample("nvcf_worker_attach_errors_total", direction="get") == 0


async def test_a_streamed_request_with_a_transfer_coding_is_refused(
    sidecar: Sidecar, attach_server: Any
) -> None:
    data = b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    attach_server.serve_body("h1-te", ServedBody(data, content_type=H1_CONTENT_TYPE))
    request = invoke_request(
        attach_server.url, "h1-te", method="", path="", body=None, request_token="h1-te"
    )

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert _problem(post)["detail"] == "Internal error while making inference request"
    assert sidecar.sample("nvcf_worker_attach_errors_total", direction="get") == 1


async def test_a_work_item_without_an_attach_connection_ends_as_a_worker_error(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(attach_server.url, "no-attach", path="/echo")
    request.ClearField("statelessConfig")

    outcome = await sidecar.runner.run(request)

    assert outcome is Outcome.WORKER_ERROR
    assert attach_server.posts == []


# --- cancellation --------------------------------------------------------------------------


async def test_cancelling_closes_the_container_connection_and_removes_the_response_dir(
    sidecar: Sidecar, attach_server: Any, container: Any
) -> None:
    request = invoke_request(attach_server.url, "cancel-me", path="/sleep?id=cancel-me")
    attach_server.expect_response(_token(request))
    response_dir = sidecar.config.base_response_dir / "cancel-me"
    task = asyncio.create_task(sidecar.runner.run(request))
    await _until(lambda: _container_state(container, "cancel-me")["started"], "the call")
    assert response_dir.is_dir()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not response_dir.exists()
    await _until(
        lambda: _container_state(container, "cancel-me")["disconnected"],
        "the container to see the connection close",
    )
    assert attach_server.posts == []


async def test_cancelling_mid_stream_aborts_the_post_attach(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(
        attach_server.url, "cancel-sse", method="GET", path="/sse?n=1000&delay=0.01"
    )
    attach_server.expect_response(_token(request))
    task = asyncio.create_task(sidecar.runner.run(request))
    await _until(lambda: bool(attach_server.posts and attach_server.posts[0].arrivals), "a relay")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    post = await attach_server.response(_token(request))
    assert post.error is not None
    assert len(post.head().body) < len(b"data: 999\n\n") * 1000
    assert not (sidecar.config.base_response_dir / "cancel-sse").exists()


async def test_cancelling_while_the_body_streams_from_get_attach_stops_both(
    sidecar: Sidecar, attach_server: Any, container: Any
) -> None:
    # GET attach sends 10 bytes and then holds its body open: the transfer is still running.
    attach_server.serve_body("slow-rest", ServedBody(b"y" * 10, with_length=False, stall=60))
    request = invoke_request(
        attach_server.url,
        "cancel-body",
        path="/sleep?id=cancel-body",
        headers=[("content-length", "1000")],
        body=b"x" * 100,
        request_token="slow-rest",
    )
    task = asyncio.create_task(sidecar.runner.run(request))
    await _until(lambda: _container_state(container, "cancel-body")["started"], "the call")
    await _until(lambda: bool(attach_server.gets), "the GET attach")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await _until(lambda: attach_server.gets[0].disconnected, "GET attach to be dropped")
    await _until(
        lambda: _container_state(container, "cancel-body")["disconnected"],
        "the container to see the connection close",
    )
    assert not (sidecar.config.base_response_dir / "cancel-body").exists()
    assert attach_server.posts == []


# --- metrics and logs ----------------------------------------------------------------------


async def test_queue_wait_and_container_latency_are_measured(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(
        attach_server.url, "timed", path="/echo", request_time=time.time() - 2.0
    )

    outcome, _ = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert sidecar.sample("nvcf_worker_queue_wait_seconds_count") == 1
    assert 2.0 <= sidecar.sample("nvcf_worker_queue_wait_seconds_sum") < 12.0
    assert sidecar.sample("nvcf_worker_container_latency_seconds_count") == 1


async def test_every_log_record_of_a_request_carries_its_id(
    sidecar: Sidecar, attach_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nvcf_sidecar.worker")
    request = invoke_request(attach_server.url, "logged", path="/error")

    await _run(sidecar, attach_server, request)

    records = [r for r in caplog.records if r.name.startswith("nvcf_sidecar.worker")]
    assert records
    assert {getattr(record, "request_id", None) for record in records} == {"logged"}
    finished = [record for record in records if record.getMessage() == "request finished"]
    assert [getattr(record, "outcome", None) for record in finished] == ["delivered"]
