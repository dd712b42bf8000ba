"""The sidecar's NATS connection: NVIDIA's auth token bytes, its name, and nkey auth (NKEY_SEED)."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest

from harness.ports import LOOPBACK, free_ports
from harness.processes import StartProcess
from nvcf_platform.devstack.nats_server import find_nats_server
from nvcf_sidecar.worker.config import ConfigError, WorkerConfig
from nvcf_sidecar.worker.nats_connection import (
    NatsConnection,
    NatsUnavailable,
    nats_auth_token,
    nkey_public_key,
)

FVID = "66666666-7777-8888-9999-000000000000"


def _config(nats_url: str, **changes: Any) -> WorkerConfig:
    return WorkerConfig(
        function_id="11111111-2222-3333-4444-555555555555",
        function_version_id=FVID,
        grpc_url="http://127.0.0.1:1",
        nats_url=nats_url,
        instance_id="instance-7",
        **changes,
    )


def test_auth_token_is_base64url_without_padding_of_nvidia_json() -> None:
    # base64url('{"account":"Worker","pluginName":"webhook","payload":"abc"}'), no '='.
    assert nats_auth_token("abc") == (
        "eyJhY2NvdW50IjoiV29ya2VyIiwicGx1Z2luTmFtZSI6IndlYmhvb2siLCJwYXlsb2FkIjoiYWJjIn0"
    )
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.e30.sig-_x"
    token = nats_auth_token(jwt_like)
    assert "=" not in token
    assert "+" not in token
    assert "/" not in token
    decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert decoded == (
        b'{"account":"Worker","pluginName":"webhook","payload":"eyJhbGciOiJSUzI1NiJ9.e30.sig-_x"}'
    )


def test_auth_token_escapes_like_go_encoding_json() -> None:
    # Go's json.Marshal escapes <, > and & inside strings; the callout sees the same bytes.
    assert nats_auth_token("a<b&") == (
        "eyJhY2NvdW50IjoiV29ya2VyIiwicGx1Z2luTmFtZSI6IndlYmhvb2siLCJwYXlsb2FkIjoiYVx1MDAzY2JcdTAwMjYifQ"
    )


@pytest.mark.nats
async def test_the_server_sees_the_token_and_the_connection_name(start_nats_server: Any) -> None:
    worker_token = "worker-token-1"
    server = start_nats_server(extra_args=["--auth", nats_auth_token(worker_token)])
    # The server accepts exactly NVIDIA's wrapping of the worker token, nothing else.
    async with NatsConnection(_config(server.url), lambda: worker_token) as connection:
        assert connection.connected
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{server.monitor_url}/connz") as response,
        ):
            names = [entry.get("name") for entry in (await response.json())["connections"]]
        assert names == [f"worker_{FVID}_instance-7"]
    assert not connection.connected


@pytest.mark.nats
async def test_the_connection_gets_every_server_of_the_list_and_moves_to_another(
    start_nats_server: Any,
) -> None:
    # Two unrelated servers: the second is reachable only because the list reached nats-py
    # as a list (a comma-separated string would be one bogus host).
    first = start_nats_server(server_name="first")
    second = start_nats_server(server_name="second")
    reconnected = asyncio.Event()
    config = _config(f"{first.url},{second.url}")
    async with NatsConnection(config, lambda: "", on_reconnected=reconnected.set) as connection:
        servers = {server.uri.netloc for server in connection.client._server_pool}
        assert {f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"} <= servers
        connected = connection.client.connected_url
        assert connected is not None
        alive, dead = (second, first) if connected.port == first.port else (first, second)
        dead.kill()
        await asyncio.wait_for(reconnected.wait(), 15)
        now = connection.client.connected_url
        assert now is not None
        assert now.port == alive.port
        await connection.client.flush(timeout=5)


@pytest.mark.skipif(importlib.util.find_spec("nkeys") is not None, reason="nkeys is installed")
async def test_an_nkey_seed_without_the_nkeys_package_is_a_clear_config_error() -> None:
    config = _config("nats://127.0.0.1:1", nkey_seed="SUAEXAMPLESEED")
    with pytest.raises(ConfigError, match="NKEY_SEED is set but the `nkeys` package"):
        await NatsConnection(config, lambda: "token").__aenter__()


# --- nkey auth (NKEY_SEED) -----------------------------------------------------------------------

needs_nkeys = pytest.mark.skipif(
    importlib.util.find_spec("nkeys") is None, reason="the nkeys package is not installed"
)


def _user_nkey() -> tuple[str, str]:
    """A fresh user nkey: (seed, public key)."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public_key = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    return seed, public_key


@needs_nkeys
async def test_an_nkey_seed_replaces_the_worker_token(monkeypatch: pytest.MonkeyPatch) -> None:
    seed, _ = _user_nkey()
    seen: dict[str, Any] = {}
    token_reads: list[str] = []

    async def refuse(*servers: Any, **options: Any) -> Any:
        seen.update(options)
        raise nats.errors.NoServersError

    def token() -> str:
        token_reads.append("read")
        return "worker-token-1"

    monkeypatch.setattr(nats, "connect", refuse)
    with pytest.raises(NatsUnavailable):
        await NatsConnection(_config("nats://127.0.0.1:1", nkey_seed=seed), token).__aenter__()
    assert seen["nkeys_seed_str"] == seed
    assert not {"token", "user", "password", "user_credentials", "nkeys_seed"} & set(seen)
    assert token_reads == []


@needs_nkeys
def test_the_public_key_of_a_seed_is_the_one_the_server_lists() -> None:
    seed, public_key = _user_nkey()
    assert nkey_public_key(seed) == public_key
    assert nkey_public_key(f"  {seed}\n") == public_key  # as read from a file or a secret


@needs_nkeys
async def test_a_malformed_nkey_seed_is_a_config_error_that_keeps_the_seed_secret() -> None:
    seed = "SUAEXAMPLE-NOT-A-SEED"
    with pytest.raises(ConfigError, match="NKEY_SEED: not a valid nkey seed") as error:
        await NatsConnection(
            _config("nats://127.0.0.1:1", nkey_seed=seed), lambda: "t"
        ).__aenter__()
    assert seed not in str(error.value)


@pytest.fixture
def nkey_nats_server(tmp_path: Path, start_process: StartProcess) -> tuple[str, str, str, str]:
    """A nats-server that admits only one user nkey: (client URL, monitor URL, seed, public key).

    EmbeddedNatsServer writes its own config file, so this one is started from a small config of
    its own, on free loopback ports; the `start_process` fixture stops it at teardown.
    """
    seed, public_key = _user_nkey()
    port, monitor_port = free_ports(2)
    config = tmp_path / "nkey-server.conf"
    config.write_text(
        f"listen: {LOOPBACK}:{port}\n"
        f"http: {LOOPBACK}:{monitor_port}\n"
        f"authorization {{\n  users = [\n    {{ nkey: {public_key} }}\n  ]\n}}\n"
    )
    server = start_process([find_nats_server(), "--config", config], name="nats-server-nkey")
    monitor_url = f"http://{LOOPBACK}:{monitor_port}"
    server.wait_http_ok(f"{monitor_url}/healthz", timeout=20)
    return f"nats://{LOOPBACK}:{port}", monitor_url, seed, public_key


@needs_nkeys
@pytest.mark.nats
async def test_the_sidecar_connects_to_a_server_that_admits_only_its_nkey(
    nkey_nats_server: tuple[str, str, str, str],
) -> None:
    url, monitor_url, seed, public_key = nkey_nats_server
    # The control: without the nkey this server refuses the connection.
    with pytest.raises((nats.errors.Error, OSError)):
        async with asyncio.timeout(10):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)

    token_reads: list[str] = []

    def token() -> str:
        token_reads.append("read")
        return "worker-token-1"

    async with NatsConnection(_config(url, nkey_seed=seed), token) as connection:
        assert connection.connected
        await connection.client.flush(timeout=5)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{monitor_url}/connz?auth=true") as response,
        ):
            [entry] = (await response.json())["connections"]
        assert entry["name"] == f"worker_{FVID}_instance-7"
        assert entry["authorized_user"] == public_key
    assert not connection.connected
    assert token_reads == []
