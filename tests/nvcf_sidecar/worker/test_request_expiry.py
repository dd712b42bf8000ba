"""Too late is never executed: items whose answer can no longer be delivered skip the container.

An item more than 2 s past its poll budget, and a redelivered (or long queued) item whose
response the platform no longer waits for (its first worker answered, or its caller is gone), end
as `EXPIRED` without a container call. A first delivery costs no extra round trip; an IS without the liveness route
(NVIDIA's) changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.http import http_request
from harness.modules import load_module
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.request import STALE_ITEM_SECONDS, RequestRunner
from nvcf_sidecar.worker.sessions import HttpSessions

SERVERS = Path(__file__).parent / "servers"
invoke_request = load_module(SERVERS / "data_path_attach.py").invoke_request
PASSTHROUGH = ("nvcf-feature-disable-worker-compatibility", "true")


@pytest.fixture
async def runner(tmp_path: Path, container: Any) -> AsyncIterator[tuple[RequestRunner, Any]]:
    config = WorkerConfig(
        function_id="11111111-1111-1111-1111-111111111111",
        function_version_id="22222222-2222-2222-2222-222222222222",
        grpc_url="http://127.0.0.1:1",
        inference_port=container.port,
        base_asset_dir=tmp_path / "assets",
        base_response_dir=tmp_path / "response",
    )
    metrics = WorkerMetrics()
    async with HttpSessions(config) as sessions:
        yield RequestRunner(config, metrics, sessions), metrics


def started(container: Any, request_id: str) -> bool:
    response = http_request("GET", f"http://127.0.0.1:{container.port}/state/{request_id}")
    return bool(response.json()["started"])


def sleeper(attach_server: Any, request_id: str, **fields: Any) -> Any:
    return invoke_request(
        attach_server.url,
        request_id,
        method="GET",
        path=f"/sleep?id={request_id}&seconds=0",
        body=None,
        response_token=f"token-{request_id}",
        **fields,
    )


def expired(metrics: WorkerMetrics, reason: str) -> float:
    return metrics.expired.labels(reason)._value.get()


async def test_a_redelivered_item_already_answered_is_not_run_again(
    runner: tuple[RequestRunner, Any], attach_server: Any, container: Any
) -> None:
    run, metrics = runner
    request = sleeper(attach_server, "answered-before")  # its token is not waited for any more

    assert await run.run(request, redelivered=True) is Outcome.EXPIRED

    assert not started(container, "answered-before")
    assert attach_server.liveness_checks == ["token-answered-before"]
    assert attach_server.posts == []  # nothing to send: nobody waits
    assert expired(metrics, "token_gone") == 1


async def test_an_item_long_in_the_queue_whose_caller_is_gone_is_not_run(
    runner: tuple[RequestRunner, Any], attach_server: Any, container: Any
) -> None:
    # A nats-server restart can lose an item's delivery count: its age makes the sidecar ask.
    run, metrics = runner
    request = sleeper(attach_server, "stale", request_time=time.time() - 3 * STALE_ITEM_SECONDS)

    assert await run.run(request) is Outcome.EXPIRED

    assert not started(container, "stale")
    assert attach_server.liveness_checks == ["token-stale"]
    assert expired(metrics, "token_gone") == 1


async def test_a_redelivered_item_still_awaited_is_served(
    runner: tuple[RequestRunner, Any], attach_server: Any, container: Any
) -> None:
    run, _ = runner
    request = sleeper(attach_server, "still-awaited")
    attach_server.expect_response("token-still-awaited")

    assert await run.run(request, redelivered=True) is Outcome.DELIVERED

    assert started(container, "still-awaited")
    assert (await attach_server.response("token-still-awaited")).head().status == 200


async def test_without_the_liveness_route_a_redelivered_item_is_served_as_nvidia_does(
    runner: tuple[RequestRunner, Any], attach_server: Any, container: Any
) -> None:
    run, _ = runner
    attach_server.liveness = False  # NVIDIA's IS: 404
    request = sleeper(attach_server, "nvidia-is")
    attach_server.expect_response("token-nvidia-is")

    assert await run.run(request, redelivered=True) is Outcome.DELIVERED
    assert started(container, "nvidia-is")


async def test_a_first_delivery_asks_nothing(
    runner: tuple[RequestRunner, Any], attach_server: Any
) -> None:
    run, _ = runner
    request = sleeper(attach_server, "first")
    attach_server.expect_response("token-first")
    assert await run.run(request) is Outcome.DELIVERED
    assert attach_server.liveness_checks == []


@pytest.mark.parametrize("mode", ["compatibility", "passthrough"])
async def test_an_item_past_its_deadline_is_answered_500_and_never_executed(
    runner: tuple[RequestRunner, Any], attach_server: Any, container: Any, mode: str
) -> None:
    run, metrics = runner
    request_id = f"late-{mode}"
    headers = [("nvcf-poll-seconds", "5")] + ([PASSTHROUGH] if mode == "passthrough" else [])
    request = sleeper(attach_server, request_id, headers=headers, request_time=time.time() - 40)
    attach_server.expect_response(f"token-{request_id}")

    assert await run.run(request) is Outcome.EXPIRED

    assert not started(container, request_id)
    post = await attach_server.response(f"token-{request_id}")
    assert post.head().status == 500  # NVIDIA's answer, for a platform that still waits
    assert expired(metrics, "deadline") == 1
