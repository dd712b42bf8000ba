"""Container health (HTTP and gRPC), the sidecar's own endpoints, and fetching gated on health."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest

from harness.modules import load_module
from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.worker.health import (
    ContainerHealth,
    ContainerNotReady,
    SidecarHealthServer,
)
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.sidecar import Sidecar

CONTAINER = Path(__file__).parent / "servers" / "shell_container.py"


SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")


class Container:
    """The tiny container process and the file that decides its health status."""

    def __init__(self, port: int, state_file: Path) -> None:
        self.port = port
        self.state_file = state_file

    def answer(self, status: int | None) -> None:
        if status is None:
            self.state_file.unlink(missing_ok=True)
        else:
            self.state_file.write_text(str(status))


@pytest.fixture
def container(start_process: Any, tmp_path: Path) -> Container:
    port = free_port()
    state = tmp_path / "container-health"
    process = start_process(
        [sys.executable, str(CONTAINER), str(port), str(state)], name="shell-container"
    )
    process.wait_http_ok(f"http://{LOOPBACK}:{port}/calls", timeout=30)
    return Container(port, state)


def checks(metrics: WorkerMetrics, result: str) -> float:
    return metrics.health_checks.labels(result)._value.get()


# --- container health ----------------------------------------------------------------------------


async def test_wait_ready_polls_until_the_container_answers_200(container: Container) -> None:
    config = shell.make_config(inference_port=container.port, ready_timeout=20.0)
    metrics = WorkerMetrics()
    changes: list[bool] = []
    async with ContainerHealth(config, metrics, on_change=changes.append) as health:
        assert not health.healthy
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, container.answer, 200)
        started = loop.time()
        await health.wait_ready()
        assert 0.9 <= loop.time() - started < 5
        assert health.healthy
        assert changes == [True]
    assert checks(metrics, "failure") >= 1  # polled (about every 500 ms) while it was 503
    assert checks(metrics, "success") == 1
    assert metrics.container_healthy._value.get() == 1


async def test_wait_ready_gives_up_after_the_ready_timeout(container: Container) -> None:
    container.answer(500)
    config = shell.make_config(inference_port=container.port, ready_timeout=1.0)
    async with ContainerHealth(config, WorkerMetrics()) as health:
        with pytest.raises(ContainerNotReady, match=r"within 1 s .*status 500, expected 200"):
            await health.wait_ready()


async def test_an_unreachable_container_is_not_ready() -> None:
    config = shell.make_config(inference_port=free_port(), ready_timeout=0.6)
    async with ContainerHealth(config, WorkerMetrics()) as health:
        probe = await health.probe()
        assert not probe.ok
        assert "ClientConnectorError" in probe.reason
        with pytest.raises(ContainerNotReady):
            await health.wait_ready()


async def test_a_custom_endpoint_and_expected_status(container: Container) -> None:
    container.answer(204)
    config = shell.make_config(inference_port=container.port, health_expected_status=204)
    async with ContainerHealth(config, WorkerMetrics()) as health:
        assert (await health.probe()).ok
    container.answer(200)
    async with ContainerHealth(config, WorkerMetrics()) as health:
        assert not (await health.probe()).ok


async def test_a_404_is_retried_before_it_counts_as_unhealthy(container: Container) -> None:
    container.answer(200)
    config = shell.make_config(inference_port=container.port)
    metrics = WorkerMetrics()
    changes: list[bool] = []
    async with ContainerHealth(config, metrics, on_change=changes.append) as health:
        assert await health.check()
        container.answer(404)
        asyncio.get_running_loop().call_later(2.5, container.answer, 200)
        assert await health.check()  # the 404 was retried until the 200 came back
        assert changes == [True]
        container.answer(503)
        assert not await health.check()  # any other status fails at once
        assert changes == [True, False]
        assert not health.healthy
        assert "status 503" in health.reason
    assert metrics.container_healthy._value.get() == 0


async def test_grpc_health_protocol() -> None:
    serving = {"status": b"\x08\x01"}  # HealthCheckResponse{status: SERVING}

    def check(request: bytes, context: Any) -> bytes:
        return serving["status"]

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    try:
        config = shell.make_config(inference_port=port, health_protocol="grpc")
        async with ContainerHealth(config, WorkerMetrics()) as health:
            assert (await health.probe()).ok
            serving["status"] = b"\x08\x02"  # NOT_SERVING
            probe = await health.probe()
            assert not probe.ok
            assert "status 2" in probe.reason
    finally:
        await server.stop(None)


# --- the sidecar's endpoints -----------------------------------------------------------------------


async def test_live_ready_and_metrics_endpoints() -> None:
    reasons: list[str] = ["NATS not connected"]
    metrics = WorkerMetrics()
    metrics.naks.labels("capacity").inc()
    config = shell.make_config(sidecar_health_host=LOOPBACK)
    async with (
        SidecarHealthServer(config, metrics, lambda: reasons, port=0) as server,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://{LOOPBACK}:{server.port}"
        async with http.get(f"{base}/v1/health/live") as response:
            assert response.status == 200
        async with http.get(f"{base}/v1/health/ready") as response:
            assert response.status == 503
            assert await response.json() == {
                "status": "not ready",
                "reasons": ["NATS not connected"],
            }
        reasons.clear()
        async with http.get(f"{base}/v1/health/ready") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ready"}
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
            assert 'nvcf_worker_naks_total{reason="capacity"} 1.0' in text
            assert 'nvcf_worker_requests_total{outcome="malformed"} 0.0' in text


# --- gating in the running sidecar -----------------------------------------------------------------


async def _http_status(url: str) -> int:
    """The status of GET `url`, or 0 while nothing listens."""
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return 0


async def _eventually(condition: Callable[[], Any], within: float = 10.0) -> None:
    """Poll `condition` (an HTTP probe: there is no event to await) until it holds."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.nats
async def test_no_fetch_until_the_container_is_ready_nor_while_it_is_unhealthy(
    nats_server: Any, container: Container, tmp_path: Path
) -> None:
    await shell.provision_queue(nats_server.url, shell.REGION)
    runner = shell.StandInRunner()
    health_port = free_port()
    config = shell.make_config(
        grpc_url="http://127.0.0.1:1",
        nats_url=nats_server.url,
        inference_port=container.port,
        sidecar_health_host=LOOPBACK,
        sidecar_health_port=health_port,
        health_check_interval=0.2,
        shared_config_dir=tmp_path / "shared",
        base_response_dir=tmp_path / "response",
        base_asset_dir=tmp_path / "assets",
    )
    ready_url = f"http://{LOOPBACK}:{health_port}/v1/health/ready"
    async with shell.FakeWorkerApi(nats_server.url) as api:
        config = dataclasses.replace(config, grpc_url=api.url)

        async def stand_in(context: Any) -> Any:
            return runner

        sidecar = Sidecar(config, handler_factory=stand_in)
        running = asyncio.create_task(sidecar.run())
        try:
            [first] = await shell.publish_work(nats_server.url, [shell.work_item()])
            await _eventually(lambda: _answers(ready_url), within=10)
            await asyncio.sleep(1.0)
            assert runner.started == []  # the container has not been healthy yet
            assert await _http_status(ready_url) == 503
            assert await shell.queue_state(nats_server.url) == (1, 0, 1)

            container.answer(200)
            await runner.wait_finished(1)
            assert runner.started == [first]
            await _eventually(lambda: _ok(ready_url))

            container.answer(503)
            await _eventually(lambda: _unavailable(ready_url))
            [second] = await shell.publish_work(nats_server.url, [shell.work_item()])
            await asyncio.sleep(1.0)
            assert runner.started == [first]
            assert await shell.queue_state(nats_server.url) == (1, 0, 1)

            container.answer(200)
            await runner.wait_finished(2)
            assert runner.started == [first, second]
        finally:
            sidecar.stop()
            async with asyncio.timeout(10):
                await running


async def _answers(url: str) -> bool:
    return await _http_status(url) != 0


async def _ok(url: str) -> bool:
    return await _http_status(url) == 200


async def _unavailable(url: str) -> bool:
    return await _http_status(url) == 503


async def test_after_a_drop_and_a_failed_probe_calls_stay_held_until_a_check_passes(
    container: Container,
) -> None:
    """The gate holds a call while `suspect`: through the probe a dropped call starts, and on,
    when it fails, until a check passes (a call arriving after a failed probe is held too)."""
    container.answer(200)
    config = shell.make_config(inference_port=container.port)
    async with ContainerHealth(config, WorkerMetrics()) as health:
        assert await health.check()
        assert not health.suspect
        container.answer(503)
        health.report_dropped("a call lost its connection")
        assert health.suspect  # the probe is under way
        assert not await health.wait_settled()
        assert health.suspect  # it failed: still suspect, though settled
        assert not await health.wait_settled()  # at once, as a later call sees it
        container.answer(200)
        assert await health.check()
        assert not health.suspect
        assert await health.wait_settled()
        container.answer(503)
        assert not await health.check()  # unhealthy without a drop: calls are not held
        assert not health.suspect
