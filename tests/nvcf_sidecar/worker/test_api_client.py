"""The `nvcf.Worker` client against a real loopback gRPC server: connect, tokens, provisioning."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness.modules import load_module
from harness.ports import free_port
from nvcf_sidecar.worker.api_client import (
    TOKEN_CACHE_NAME,
    ApiCallFailed,
    ConnectionLost,
    ConnectRejected,
    WorkerApiClient,
    WorkerConnection,
    _grpc_target,
    refresh_delay,
)

SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")


def client_config(api_url: str, tmp_path: Path, **changes: Any) -> Any:
    return shell.make_config(
        grpc_url=api_url,
        worker_token="env-token",
        instance_id="instance-1",
        shared_config_dir=tmp_path / "shared",
        **changes,
    )


async def test_connect_once_presents_the_token_and_adopts_the_new_one(tmp_path: Path) -> None:
    async with shell.FakeWorkerApi("nats://unused") as api:
        async with WorkerApiClient(client_config(api.url, tmp_path)) as client:
            assert client.token == "env-token"
            connection = await client.connect_once()
            assert connection.region == shell.REGION
            assert connection.token == "worker-token-1"
            assert client.token == "worker-token-1"
            assert connection.expiration is not None
            assert connection.expiration > datetime.now(UTC) + timedelta(hours=2)
            await client.connect_once()
        assert api.connect_bearers == ["Bearer env-token", "Bearer worker-token-1"]


async def test_regions_put_the_primary_first_without_duplicates() -> None:
    connection = WorkerConnection("a", ("b", "a", "", "c", "b"), "t", None)
    assert connection.regions == ("a", "b", "c")


async def test_the_token_is_cached_like_nvidia_and_reused_next_start(tmp_path: Path) -> None:
    async with shell.FakeWorkerApi("nats://unused") as api:
        config = client_config(api.url, tmp_path)
        async with WorkerApiClient(config) as client:
            await client.connect_once()
        cache = config.shared_config_dir / TOKEN_CACHE_NAME
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
        document = json.loads(cache.read_text())
        assert document["access_token"] == "worker-token-1"
        assert document["expiry"].endswith("Z")

        async with WorkerApiClient(config) as restarted:
            assert restarted.token == "worker-token-1"  # not the (older) env token
            await restarted.connect_once()
        assert api.connect_bearers[-1] == "Bearer worker-token-1"

    # An expired cached token would only be refused: the env token is used instead.
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    cache.write_text(json.dumps({"access_token": "stale", "expiry": past}))
    assert WorkerApiClient(config).token == "env-token"
    cache.write_text("{not json")
    assert WorkerApiClient(config).token == "env-token"


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ({"empty_region": True}, "without a connected region"),
        ({"expired_token": True}, "token that expired"),
    ],
)
async def test_unusable_connect_answers_are_rejected(
    tmp_path: Path, problem: dict[str, bool], message: str
) -> None:
    api = shell.FakeWorkerApi("nats://unused", **problem)
    async with api, WorkerApiClient(client_config(api.url, tmp_path)) as client:
        with pytest.raises(ConnectRejected, match=message):
            await client.connect_once()
        assert client.token == "env-token"


async def test_connect_retries_until_the_api_answers(tmp_path: Path) -> None:
    async with shell.FakeWorkerApi("nats://unused", fail_connects=2) as api:
        async with WorkerApiClient(client_config(api.url, tmp_path)) as client:
            connection = await client.connect(max_elapsed=30)
        assert connection.token == "worker-token-1"
        assert len(api.connect_bearers) == 3


async def test_connect_gives_up_after_its_budget(tmp_path: Path) -> None:
    config = client_config(f"http://127.0.0.1:{free_port()}", tmp_path)
    async with WorkerApiClient(config, call_timeout=1.0) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ApiCallFailed) as failure:
            await client.connect(max_elapsed=1.5)
        assert failure.value.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert loop.time() - started < 6


@pytest.mark.nats
async def test_provision_regional_worker_asks_for_the_region(
    nats_server: Any, tmp_path: Path
) -> None:
    async with shell.FakeWorkerApi(nats_server.url) as api:
        async with WorkerApiClient(client_config(api.url, tmp_path)) as client:
            await client.connect_once()
            await client.provision_regional_worker("eu-north")
        assert api.provisioned == ["eu-north"]
        assert api.provision_bearers == ["Bearer worker-token-1"]
    state = await shell.queue_state(nats_server.url, region="eu-north")
    assert state == (0, 0, 0)  # the fake API created the stream and its consumer


async def test_keep_connected_refreshes_before_the_token_expires(tmp_path: Path) -> None:
    refreshed: list[WorkerConnection] = []
    twice = asyncio.Event()

    def on_connected(connection: WorkerConnection) -> None:
        refreshed.append(connection)
        if len(refreshed) == 2:
            twice.set()

    api = shell.FakeWorkerApi("nats://unused", token_lifetime=timedelta(seconds=2))
    async with api, WorkerApiClient(client_config(api.url, tmp_path)) as client:
        await client.connect_once()
        refresher = asyncio.create_task(client.keep_connected(on_connected))
        try:
            async with asyncio.timeout(10):
                await twice.wait()
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        assert [c.token for c in refreshed] == ["worker-token-2", "worker-token-3"]
        assert client.token == "worker-token-3"


async def test_keep_connected_gives_up_once_the_token_has_expired(tmp_path: Path) -> None:
    api = await shell.FakeWorkerApi("nats://unused", token_lifetime=timedelta(seconds=2)).start()
    async with WorkerApiClient(client_config(api.url, tmp_path), call_timeout=0.5) as client:
        await client.connect_once()
        await api.stop()
        with pytest.raises(ConnectionLost, match="before it expired"):
            async with asyncio.timeout(15):
                await client.keep_connected()


def test_refresh_delay_is_20_to_30_minutes_or_90_percent_of_a_short_life() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(50):
        assert 1200 <= refresh_delay(now + timedelta(hours=3), now) <= 1800
        assert 1200 <= refresh_delay(None, now) <= 1800
    assert refresh_delay(now + timedelta(minutes=10), now) == pytest.approx(540)
    assert refresh_delay(now - timedelta(minutes=1), now) == 0


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://127.0.0.1:9090", ("127.0.0.1:9090", False)),
        ("https://api.nvcf.example", ("api.nvcf.example:443", True)),
        ("http://api.nvcf.example", ("api.nvcf.example:80", False)),
        ("https://[::1]:8443", ("[::1]:8443", True)),
    ],
)
def test_grpc_target_from_the_url(url: str, target: tuple[str, bool]) -> None:
    assert _grpc_target(url) == target
