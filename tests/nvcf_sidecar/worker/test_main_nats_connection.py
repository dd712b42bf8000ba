"""The sidecar's NATS connection: NVIDIA's auth token bytes, its name, and nkey handling."""

from __future__ import annotations

import base64
import importlib.util
from typing import Any

import aiohttp
import pytest

from nvcf_sidecar.worker.config import ConfigError, WorkerConfig
from nvcf_sidecar.worker.nats_connection import NatsConnection, nats_auth_token

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


@pytest.mark.skipif(importlib.util.find_spec("nkeys") is not None, reason="nkeys is installed")
async def test_an_nkey_seed_without_the_nkeys_package_is_a_clear_config_error() -> None:
    config = _config("nats://127.0.0.1:1", nkey_seed="SUAEXAMPLESEED")
    with pytest.raises(ConfigError, match="NKEY_SEED is set but the `nkeys` package"):
        await NatsConnection(config, lambda: "token").__aenter__()
