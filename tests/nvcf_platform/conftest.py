"""Fixtures for the local platform: a running `PlatformService`, a caller and a mock worker.

The mock worker (`platform_mock_worker.py`) plays NVIDIA's worker the way the Rust invocation
service's own tests do; test files reach it through `start_worker`, and load that module only for
the `PollingJob` handler. The caller speaks pexec, status polls and exec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tomllib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import orjson
import pytest
from nats.aio.client import Client

from harness.modules import load_module
from nvcf_platform.control.registry import Registry
from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.service import PlatformService
from nvcf_platform.settings import PlatformSettings
from nvcf_sidecar.protocol import (
    consumer_name,
    request_stream_name,
)

FUNCTION_ID = "6f1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a11"
VERSION_ID = "0b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e61"
OTHER_FUNCTION_ID = "9c2d9d6a-0e64-4b43-a4f0-5a0b7d9e8c21"
OTHER_VERSION_IDS = ("1a2b3c4d-0000-4000-8000-000000000001", "1a2b3c4d-0000-4000-8000-000000000002")
API_KEY = "nvapi-test-key"
REGION = "test-region"
INVOCATION_PATH = "/v2/echo"

_mock_worker = load_module(Path(__file__).with_name("platform_mock_worker.py"))
MockWorker = _mock_worker.MockWorker
Handler = _mock_worker.Handler
echo = _mock_worker.echo

REGISTRY_TOML = f"""
[[functions]]
id = "{FUNCTION_ID}"
name = "echo"
default_invocation_path = "{INVOCATION_PATH}"

[[functions.versions]]
id = "{VERSION_ID}"

[[functions]]
id = "{OTHER_FUNCTION_ID}"
name = "two-versions"

[[functions.versions]]
id = "{OTHER_VERSION_IDS[0]}"
default_invocation_path = "/first"

[[functions.versions]]
id = "{OTHER_VERSION_IDS[1]}"
"""


class Caller:
    """An NVCF caller of one running platform (aiohttp, API key preset)."""

    def __init__(self, platform: PlatformService, session: aiohttp.ClientSession) -> None:
        self.platform = platform
        self.session = session

    @property
    def base_url(self) -> str:
        return self.platform.base_url

    def pexec_url(self, function_id: str = FUNCTION_ID, version_id: str | None = VERSION_ID) -> str:
        url = f"{self.base_url}/v2/nvcf/pexec/functions/{function_id}"
        return url if version_id is None else f"{url}/versions/{version_id}"

    def pexec(
        self,
        body: bytes | AsyncIterable[bytes] = b"a body",
        *,
        headers: dict[str, str] | Iterable[tuple[str, str]] | None = None,
        function_id: str = FUNCTION_ID,
        version_id: str | None = VERSION_ID,
        api_key: str | None = API_KEY,
    ) -> Any:
        """`async with caller.pexec(...) as response:` (an aiohttp request context manager)."""
        return self.session.post(
            self.pexec_url(function_id, version_id),
            data=body,
            headers=_caller_headers(api_key, headers),
        )

    def status(
        self,
        request_id: str,
        *,
        headers: dict[str, str] | Iterable[tuple[str, str]] | None = None,
        api_key: str | None = API_KEY,
    ) -> Any:
        """`async with caller.status(reqid) as response:` (GET /v2/nvcf/pexec/status/{reqid})."""
        return self.session.get(
            f"{self.base_url}/v2/nvcf/pexec/status/{request_id}",
            headers=_caller_headers(api_key, headers),
        )

    def exec(
        self,
        payload: Any,
        *,
        function_id: str = FUNCTION_ID,
        version_id: str | None = VERSION_ID,
        api_key: str | None = API_KEY,
    ) -> Any:
        """`async with caller.exec({...}) as response:`; bytes are sent as they are, else JSON."""
        url = f"{self.base_url}/v2/nvcf/exec/functions/{function_id}"
        if version_id is not None:
            url = f"{url}/versions/{version_id}"
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        headers = _caller_headers(api_key, {"Content-Type": "application/json"})
        return self.session.post(url, data=data, headers=headers)

    def exec_status(self, request_id: str, *, api_key: str | None = API_KEY) -> Any:
        """`async with caller.exec_status(reqid) as response:` (GET /v2/nvcf/exec/status/{reqid})."""
        return self.session.get(
            f"{self.base_url}/v2/nvcf/exec/status/{request_id}",
            headers=_caller_headers(api_key, None),
        )


def _caller_headers(
    api_key: str | None, headers: dict[str, str] | Iterable[tuple[str, str]] | None
) -> list[tuple[str, str]]:
    all_headers: list[tuple[str, str]] = []
    if api_key is not None:
        all_headers.append(("Authorization", f"Bearer {api_key}"))
    if headers:
        all_headers.extend(headers.items() if isinstance(headers, dict) else headers)
    return all_headers


# --- fixtures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    """The ids, key and region the test platform is configured with."""

    function_id: str = FUNCTION_ID
    version_id: str = VERSION_ID
    other_function_id: str = OTHER_FUNCTION_ID
    other_version_ids: tuple[str, str] = OTHER_VERSION_IDS
    api_key: str = API_KEY
    region: str = REGION
    invocation_path: str = INVOCATION_PATH
    registry_toml: str = REGISTRY_TOML

    @property
    def stream(self) -> str:
        return request_stream_name(REGION, VERSION_ID)

    @property
    def consumer(self) -> str:
        return consumer_name(REGION, VERSION_ID)


@pytest.fixture
def ids() -> Ids:
    return Ids()


@pytest.fixture
def registry() -> Registry:
    return Registry.from_mapping(tomllib.loads(REGISTRY_TOML), source="test")


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "functions.toml"
    path.write_text(REGISTRY_TOML)
    return path


@pytest.fixture
def platform_settings(nats_server: EmbeddedNatsServer) -> PlatformSettings:
    """Settings of a test platform: free ports, the test's NATS server, one API key."""
    return PlatformSettings(
        nats_url=nats_server.url,
        port=0,
        grpc_port=0,
        region=REGION,
        api_keys=(API_KEY,),
        consumer_ack_wait=5.0,
    )


ATTACH_SERVERS: dict[str, int | None] = {"aiohttp": None, "lean": 0}
"""The servers of the worker-facing attach routes: `attach_port` of each (lean: its own port)."""


@pytest.fixture(params=sorted(ATTACH_SERVERS))
def attach_settings(
    request: pytest.FixtureRequest, platform_settings: PlatformSettings
) -> PlatformSettings:
    """`platform_settings` with the attach routes served by each server in turn (a module
    runs its tests on both by overriding `platform_settings` with this)."""
    return dataclasses.replace(platform_settings, attach_port=ATTACH_SERVERS[request.param])


@pytest.fixture
async def start_platform(
    platform_settings: PlatformSettings, registry: Registry
) -> AsyncIterator[Callable[..., Awaitable[PlatformService]]]:
    """Factory: `await start_platform(**settings overrides)` -> a running PlatformService."""
    stack = contextlib.AsyncExitStack()

    async def start(**overrides: Any) -> PlatformService:
        settings = dataclasses.replace(platform_settings, **overrides)
        return await stack.enter_async_context(PlatformService(settings, registry))

    async with stack:
        yield start


@pytest.fixture
async def platform(start_platform: Callable[..., Awaitable[PlatformService]]) -> PlatformService:
    return await start_platform()


@pytest.fixture
async def caller_factory() -> AsyncIterator[Callable[[PlatformService], Awaitable[Caller]]]:
    """Factory: `await caller_factory(platform)` -> a Caller of that platform."""
    async with aiohttp.ClientSession() as session:

        async def make(platform: PlatformService) -> Caller:
            return Caller(platform, session)

        yield make


@pytest.fixture
async def caller(
    platform: PlatformService, caller_factory: Callable[[PlatformService], Awaitable[Caller]]
) -> Caller:
    return await caller_factory(platform)


@pytest.fixture
async def start_worker(
    nats_server: EmbeddedNatsServer,
) -> AsyncIterator[Callable[..., Awaitable[MockWorker]]]:
    """Factory: `await start_worker(handler=echo, version_id=VERSION_ID)` -> a running MockWorker."""
    workers: list[MockWorker] = []

    async def start(
        handler: Handler = echo, version_id: str = VERSION_ID, region: str = REGION
    ) -> MockWorker:
        worker = MockWorker(nats_server.url, region, version_id, handler)
        workers.append(worker)
        return await worker.start()

    yield start
    for worker in reversed(workers):
        await worker.close()


@pytest.fixture
async def observer(nats_server: EmbeddedNatsServer) -> AsyncIterator[Client]:
    """A plain NATS connection for the test to look at subjects and streams."""
    nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    yield nc
    await nc.close()
