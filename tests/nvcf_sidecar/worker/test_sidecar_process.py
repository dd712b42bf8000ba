"""`nvcf-sidecar run` as a real process with the real data path: serve, then drain on SIGTERM.

NVIDIA's graceful-shutdown scenario: five 2 s requests are in flight when SIGTERM arrives; all
five finish and are answered, five published afterwards stay queued for another instance, and
the process exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harness.modules import load_module
from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.protocol import ATTACH_PATH, parse_bearer, parse_response_head

pytestmark = pytest.mark.nats

CONTAINER = Path(__file__).parent / "servers" / "shell_container.py"


SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")


class ResponseSink:
    """POST attach: keeps each delivered response by its token (the IS side of the answer)."""

    def __init__(self) -> None:
        self.responses: dict[str, bytes] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ResponseSink:
        async def post(request: web.Request) -> web.Response:
            token = parse_bearer(request.headers.get("Authorization")) or ""
            self.responses[token] = await request.read()
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post(ATTACH_PATH, post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, LOOPBACK, port).start()
        self.url = f"http://{LOOPBACK}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def sidecar_command() -> list[str]:
    script = Path(sys.executable).parent / "nvcf-sidecar"
    if script.exists():
        return [str(script), "run"]
    return [sys.executable, "-m", "nvcf_sidecar.cli", "run"]


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return await response.json()


async def test_sigterm_drains_in_flight_requests_and_leaves_the_queue(
    nats_server: Any, start_process: Any, tmp_path: Path
) -> None:
    container_port, health_port = free_port(), free_port()
    state_file = tmp_path / "container-health"
    state_file.write_text("200")
    container = start_process(
        [sys.executable, str(CONTAINER), str(container_port), str(state_file)],
        name="container",
    )
    await asyncio.to_thread(
        container.wait_http_ok, f"http://{LOOPBACK}:{container_port}/calls", timeout=30
    )
    async with shell.FakeWorkerApi(nats_server.url) as api, ResponseSink() as sink:
        env = {
            "FUNCTION_ID": shell.FUNCTION_ID,
            "FUNCTION_VERSION_ID": shell.FUNCTION_VERSION_ID,
            "NVCF_FQDN_GRPC": api.url,
            "NVCF_WORKER_TOKEN": "env-token",
            "INSTANCE_ID": "sidecar-under-test",
            "MAX_REQUEST_CONCURRENCY": "5",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        sidecar = start_process(
            [
                *sidecar_command(),
                "--nats-url",
                nats_server.url,
                "--inference-port",
                str(container_port),
                "--health-host",
                LOOPBACK,
                "--health-port",
                str(health_port),
                "--base-response-dir",
                str(tmp_path / "response"),
                "--base-asset-dir",
                str(tmp_path / "assets"),
                "--shared-config-dir",
                str(tmp_path / "shared"),
            ],
            name="nvcf-sidecar",
            env=env,
        )
        ready = f"http://{LOOPBACK}:{health_port}/v1/health/ready"
        await asyncio.to_thread(sidecar.wait_http_ok, ready, timeout=60)

        def item() -> Any:
            request = shell.work_item(target_uri=sink.url, response_token=f"token-{uuid.uuid4()}")
            request.requestPath = "/infer?seconds=2"
            request.requestTime.GetCurrentTime()
            return request

        first = [item() for _ in range(5)]
        await shell.publish_work(nats_server.url, first)
        calls = f"http://{LOOPBACK}:{container_port}/calls"
        async with asyncio.timeout(15):
            while (await get_json(calls))["started"] < 5:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        assert sidecar.pid is not None
        os.kill(sidecar.pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        await asyncio.sleep(0.3)
        later = [item() for _ in range(5)]
        await shell.publish_work(nats_server.url, later)

        code = await asyncio.to_thread(sidecar.wait_exit, 30)
        assert code == 0, sidecar.log_tail()
        assert time.monotonic() - stopped_at < 20
        assert await get_json(calls) == {"started": 5, "finished": 5}
        for request in first:
            token = request.statelessConfig.connectionConfigs[
                0
            ].http1Config.responseAuthorizationToken
            head = parse_response_head(sink.responses[token])
            assert head.status == 200
            assert head.body == b'{"slept": 2.0}'
        assert len(sink.responses) == 5
    assert await shell.queue_state(nats_server.url) == (5, 0, 5)
    log = sidecar.log_text()
    assert "stop requested; draining" in log
    assert "sidecar stopped" in log
