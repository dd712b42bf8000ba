"""The whole sidecar in-process: start-up order, readiness, graceful stop, fatal start-up errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.modules import load_module
from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.worker.api_client import TOKEN_CACHE_NAME
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.metrics import Outcome
from nvcf_sidecar.worker.sidecar import RunnerContext, Sidecar, StartupError

pytestmark = pytest.mark.nats


SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")


async def _container_app(status: dict[str, int]) -> tuple[aiohttp.web.AppRunner, int]:
    async def ready(_request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=status["code"])

    app = aiohttp.web.Application()
    app.router.add_get("/v2/health/ready", ready)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, LOOPBACK, port).start()
    return runner, port


def sidecar_config(tmp_path: Path, nats_url: str, api_url: str, port: int, **changes: Any) -> Any:
    return shell.make_config(
        grpc_url=api_url,
        nats_url=nats_url,
        worker_token="env-token",
        inference_port=port,
        sidecar_health_host=LOOPBACK,
        sidecar_health_port=0,
        health_check_interval=0.2,
        shared_config_dir=tmp_path / "shared",
        base_response_dir=tmp_path / "response",
        base_asset_dir=tmp_path / "assets",
        **changes,
    )


class Running:
    def __init__(self, sidecar: Sidecar, task: asyncio.Task[None], api: Any, runner: Any) -> None:
        self.sidecar = sidecar
        self.task = task
        self.api = api
        self.runner = runner
        self.container_status: dict[str, int] = {}

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.sidecar.health_port}"

    async def status(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.base + path) as response:
            body = await response.read()
            try:
                return response.status, json.loads(body)
            except ValueError:
                return response.status, body.decode()

    async def until_ready(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while True:
                if self.sidecar.consumer is not None and not self.sidecar.readiness():
                    return
                await asyncio.sleep(0.05)


@asynccontextmanager
async def running_sidecar(
    nats_url: str, tmp_path: Path, *, container_code: int = 200, **changes: Any
) -> AsyncIterator[Running]:
    status = {"code": container_code}
    container, port = await _container_app(status)
    runner = shell.StandInRunner()
    try:
        async with shell.FakeWorkerApi(nats_url) as api:
            config = sidecar_config(tmp_path, nats_url, api.url, port, **changes)

            async def stand_in(context: RunnerContext) -> Any:
                assert context.api.token == "worker-token-1"  # connected before the runner
                return runner

            sidecar = Sidecar(config, handler_factory=stand_in, connect_retry_seconds=2.0)
            task = asyncio.create_task(sidecar.run())
            state = Running(sidecar, task, api, runner)
            state.container_status = status
            try:
                yield state
            finally:
                sidecar.stop()
                async with asyncio.timeout(15):
                    await asyncio.gather(task, return_exceptions=True)
    finally:
        await container.cleanup()


async def test_the_sidecar_starts_serves_and_stops_gracefully(
    nats_server: Any, tmp_path: Path
) -> None:
    async with running_sidecar(nats_server.url, tmp_path) as state:
        await state.until_ready()
        assert state.api.provisioned == [shell.REGION]  # no queue yet: provisioned, then bound
        assert await state.status("/v1/health/ready") == (200, {"status": "ready"})
        assert (await state.status("/v1/health/live"))[0] == 200

        ids = await shell.publish_work(nats_server.url, [shell.work_item() for _ in range(3)])
        await state.runner.wait_finished(3)
        assert sorted(state.runner.finished) == sorted(ids)
        await shell.wait_for_state(nats_server.url, (0, 0, 0))
        code, metrics = await state.status("/metrics")
        assert code == 200
        assert 'nvcf_worker_requests_total{outcome="delivered"} 3.0' in metrics
        assert "nvcf_worker_container_healthy 1.0" in metrics

        state.sidecar.stop()
        async with asyncio.timeout(10):
            await state.task  # returns: no error
        assert state.task.result() is None
    cache = tmp_path / "shared" / TOKEN_CACHE_NAME
    assert json.loads(cache.read_text())["access_token"] == "worker-token-1"
    assert (tmp_path / "assets").is_dir()
    assert (tmp_path / "response").is_dir()


async def test_readiness_reports_an_unhealthy_container(nats_server: Any, tmp_path: Path) -> None:
    async with running_sidecar(nats_server.url, tmp_path) as state:
        await state.until_ready()
        state.container_status["code"] = 500
        async with asyncio.timeout(5):
            while (await state.status("/v1/health/ready"))[0] != 503:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        code, body = await state.status("/v1/health/ready")
        assert code == 503
        assert body["reasons"] == [
            "inference container not healthy: "
            f"GET {state.sidecar.config.health_url}: status 500, expected 200"
        ]


async def test_stop_lets_in_flight_requests_finish_and_leaves_the_queue(
    nats_server: Any, tmp_path: Path
) -> None:
    async with running_sidecar(nats_server.url, tmp_path, max_request_concurrency=2) as state:
        await state.until_ready()
        state.runner.hold = True
        await shell.publish_work(nats_server.url, [shell.work_item(), shell.work_item()])
        await state.runner.wait_started(2)
        state.sidecar.stop()
        await asyncio.sleep(0.3)
        waiting = await shell.publish_work(nats_server.url, [shell.work_item()])
        assert not state.task.done()  # draining: the two requests still run
        state.runner.release()
        async with asyncio.timeout(10):
            await state.task
        assert len(state.runner.finished) == 2
        assert waiting[0] not in state.runner.started
    assert await shell.queue_state(nats_server.url) == (1, 0, 1)  # left for another instance


async def test_the_grace_period_bounds_the_drain(nats_server: Any, tmp_path: Path) -> None:
    async with running_sidecar(nats_server.url, tmp_path, shutdown_grace=0.5) as state:
        await state.until_ready()
        state.runner.hold = True
        [request_id] = await shell.publish_work(nats_server.url, [shell.work_item()])
        await state.runner.wait_started(1)
        state.sidecar.stop()
        async with asyncio.timeout(5):
            await state.task
        assert state.runner.cancelled == [request_id]
        assert state.sidecar.metrics.requests.labels(Outcome.CANCELLED.value)._value.get() == 1
    assert await shell.queue_state(nats_server.url) == (0, 0, 0)  # abandoned work is acked


async def test_a_second_stop_cancels_in_flight_requests(nats_server: Any, tmp_path: Path) -> None:
    async with running_sidecar(nats_server.url, tmp_path) as state:
        await state.until_ready()
        state.runner.hold = True
        await shell.publish_work(nats_server.url, [shell.work_item()])
        await state.runner.wait_started(1)
        state.sidecar.stop()
        await asyncio.sleep(0.2)
        assert not state.task.done()
        state.sidecar.stop()
        async with asyncio.timeout(5):
            await state.task
        assert len(state.runner.cancelled) == 1


async def test_a_container_that_never_gets_ready_is_a_user_error(
    nats_server: Any, tmp_path: Path
) -> None:
    async with running_sidecar(
        nats_server.url, tmp_path, container_code=503, ready_timeout=1.0
    ) as state:
        with pytest.raises(StartupError) as failure:
            async with asyncio.timeout(10):
                await state.task
        assert not failure.value.is_internal
        assert "not ready within 1 s" in failure.value.message


async def test_an_unreachable_api_is_an_internal_startup_error(
    nats_server: Any, tmp_path: Path
) -> None:
    config = sidecar_config(tmp_path, nats_server.url, f"http://{LOOPBACK}:{free_port()}", 1)

    async def never(context: RunnerContext) -> Any:
        raise AssertionError("the runner must not be built")

    sidecar = Sidecar(config, handler_factory=never, connect_retry_seconds=1.0)
    with pytest.raises(StartupError) as failure:
        async with asyncio.timeout(30):
            await sidecar.run()
    assert failure.value.is_internal
    assert "ConnectOnce failed" in failure.value.message


async def test_a_stop_during_startup_ends_cleanly(nats_server: Any, tmp_path: Path) -> None:
    async with running_sidecar(
        nats_server.url, tmp_path, container_code=503, ready_timeout=600.0
    ) as state:
        await asyncio.sleep(1.0)  # waiting for the container now
        assert not state.task.done()
        state.sidecar.stop()
        async with asyncio.timeout(5):
            await state.task  # no StartupError
        assert state.api.provisioned == []


def test_config_type_is_the_workers() -> None:
    assert isinstance(shell.make_config(), WorkerConfig)
