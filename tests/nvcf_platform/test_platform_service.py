"""The platform as a whole: `nvcf-sidecar platform` as a real process, lifetime and `/health`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.processes import StartProcess
from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.errors import ConfigError, PlatformError
from nvcf_platform.service import PlatformService
from nvcf_platform.settings import PlatformSettings

pytestmark = pytest.mark.nats

COMMAND = [sys.executable, "-m", "nvcf_sidecar.cli", "platform"]


async def test_platform_command_serves_until_sigterm_and_exits_0(
    start_process: StartProcess,
    nats_server: EmbeddedNatsServer,
    registry_file: Path,
    tmp_path: Path,
    start_worker: Any,
    ids: Any,
) -> None:
    ready = tmp_path / "run" / "platform.json"
    process = start_process(
        [
            *COMMAND,
            "--config",
            registry_file,
            "--nats",
            nats_server.url,
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--region",
            ids.region,
            "--api-key",
            ids.api_key,
            "--ready-file",
            ready,
            "--log-level",
            "DEBUG",  # the per-request line is DEBUG
        ],
        name="platform",
    )
    process.wait_for(ready.exists, timeout=30, what="the ready file")
    endpoints = json.loads(ready.read_text())
    assert endpoints["base_url"] == f"http://127.0.0.1:{endpoints['http_port']}"
    assert endpoints["grpc_url"] == f"http://127.0.0.1:{endpoints['grpc_port']}"
    assert endpoints["region"] == ids.region
    worker = await start_worker()
    url = f"{endpoints['base_url']}/v2/nvcf/pexec/functions/{ids.function_id}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{endpoints['base_url']}/health") as response:
            assert response.status == 200
        headers = {"Authorization": f"Bearer {ids.api_key}"}
        async with session.post(url, data=b"over the wire", headers=headers) as response:
            assert response.status == 200
            assert await response.read() == b"over the wire"
    assert len(worker.items) == 1
    assert process.stop() == 0
    assert not ready.exists()
    log = process.log_text()
    assert "worker responded" in log
    assert f"request_id={worker.items[0].requestId}" in log


def test_platform_command_without_registry_exits_2_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = subprocess.run(
        [*COMMAND, "--config", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot read function registry" in result.stderr
    result = subprocess.run(
        [*COMMAND, "--images", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot read image catalog" in result.stderr


async def test_health_is_503_while_nats_is_down(
    start_nats_server: Any, registry: Any, tmp_path: Path
) -> None:
    server = start_nats_server(server_name="health")
    settings = PlatformSettings(nats_url=server.url, port=0, grpc_port=0)
    async with PlatformService(settings, registry) as platform, aiohttp.ClientSession() as session:
        url = f"{platform.base_url}/health"
        async with session.get(url) as response:
            assert response.status == 200
        server.close()
        deadline = time.monotonic() + 10
        while True:
            async with session.get(url) as response:
                if response.status == 503:
                    assert (await response.json())["detail"] == "NATS is not connected"
                    break
            assert time.monotonic() < deadline, "health never reported the lost connection"
            await asyncio.sleep(0.05)


async def test_service_reports_ports_only_while_running(
    platform_settings: PlatformSettings, registry: Any
) -> None:
    service = PlatformService(platform_settings, registry)
    with pytest.raises(PlatformError):
        _ = service.http_port
    async with service:
        assert service.http_port > 0
        assert service.grpc_port > 0
        assert service.http_port != service.grpc_port
        assert service.nats.is_connected
    with pytest.raises(PlatformError):
        _ = service.base_url


async def test_the_attach_listener_gets_its_own_port_which_work_items_name(
    platform_settings: PlatformSettings, registry: Any
) -> None:
    async with PlatformService(platform_settings, registry) as plain:
        assert plain.attach_url == plain.base_url  # off: workers attach on the HTTP port
    settings = dataclasses.replace(platform_settings, attach_port=0)
    async with PlatformService(settings, registry) as service:
        endpoints = service.endpoints()
        port = int(endpoints["attach_url"].rsplit(":", 1)[1])
        assert port not in {0, service.http_port, service.grpc_port}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{endpoints['attach_url']}/v2/nvcf/worker/request-attach") as response,
        ):
            assert response.status == 401  # served there, by the lean listener
            assert response.headers["Date"]
            assert "Server" not in response.headers
    public = dataclasses.replace(
        settings, public_url="http://is.example:8080", public_attach_url="http://is.example:8081"
    )
    async with PlatformService(public, registry) as service:
        assert service.attach_url == "http://is.example:8081"
        assert service.base_url == "http://is.example:8080"


def test_service_needs_a_registry() -> None:
    with pytest.raises(ConfigError, match="config_path"):
        PlatformService(PlatformSettings())


async def test_an_inherited_listening_socket_is_served_and_a_wrong_fd_refused(
    platform_settings: PlatformSettings, registry: Any, tmp_path: Path
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        # As a child inherits it: its own descriptor of the supervisor's socket.
        settings = dataclasses.replace(platform_settings, http_fd=os.dup(listener.fileno()))
        async with PlatformService(settings, registry) as service:
            assert service.http_port == port
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/health") as response,
            ):
                assert response.status == 200
        # The platform closed its copy only: the supervisor's socket still listens.
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        listener.close()
    with (tmp_path / "not-a-socket").open("w") as plain:
        settings = dataclasses.replace(platform_settings, http_fd=plain.fileno())
        with pytest.raises(PlatformError, match=f"fd {plain.fileno()}"):
            async with PlatformService(settings, registry):
                pass
