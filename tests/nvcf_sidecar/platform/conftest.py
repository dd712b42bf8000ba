"""Fixtures for the local platform: a running `PlatformService`, a caller and a mock worker.

The mock worker plays NVIDIA's worker the way the Rust invocation service's own tests do: it binds
the durable consumer (never creates it), decodes the protobuf, fetches the rest of the body over
GET attach and POSTs an HTTP/1.1-framed response. Test files reach these through fixtures only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tomllib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from nvcf_sidecar.platform.nats_server import EmbeddedNatsServer
from nvcf_sidecar.platform.registry import Registry
from nvcf_sidecar.platform.service import PlatformService
from nvcf_sidecar.platform.settings import PlatformSettings
from nvcf_sidecar.protocol import (
    H1_CONTENT_TYPE,
    WorkerInvokeFunctionRequest,
    attach_url,
    bearer,
    consumer_name,
    decode_invoke_request,
    encode_response_head,
    first_http1_config,
    get_attach_accept,
    request_stream_name,
)

FUNCTION_ID = "6f1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a11"
VERSION_ID = "0b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e61"
OTHER_FUNCTION_ID = "9c2d9d6a-0e64-4b43-a4f0-5a0b7d9e8c21"
OTHER_VERSION_IDS = ("1a2b3c4d-0000-4000-8000-000000000001", "1a2b3c4d-0000-4000-8000-000000000002")
API_KEY = "nvapi-test-key"
REGION = "test-region"
INVOCATION_PATH = "/v2/echo"

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

Reply = tuple[int, list[tuple[str, str]], "bytes | AsyncIterable[bytes]"]
"""What a mock-worker handler returns: status, headers, body (bytes, or chunks streamed)."""
Handler = Callable[[WorkerInvokeFunctionRequest, bytes, "MockWorker"], Awaitable[Reply | None]]
"""(work item, full request body, worker) -> reply, or None when the handler posted itself."""


async def echo(item: WorkerInvokeFunctionRequest, body: bytes, worker: MockWorker) -> Reply:
    """NVIDIA's default mock handler, echoing: 200 text/plain with the request body."""
    return 200, [("Content-Type", "text/plain")], body


class MockWorker:
    """A minimal NVCF worker: pull from the durable consumer, GET the body rest, POST a reply."""

    def __init__(
        self, nats_url: str, region: str, function_version_id: str, handler: Handler
    ) -> None:
        self.nats_url = nats_url
        self.stream = request_stream_name(region, function_version_id)
        self.consumer = consumer_name(region, function_version_id)
        self.handler = handler
        self.items: list[WorkerInvokeFunctionRequest] = []
        """Every work item received, in order."""
        self.get_attach: dict[str, tuple[int, dict[str, str], bytes]] = {}
        """reqid -> (status, headers, body) of its GET attach."""
        self.post_results: dict[str, list[tuple[int, bytes]]] = {}
        """reqid -> (status, body) of each POST attach."""
        self.errors: list[BaseException] = []
        self.handled = 0
        """Work items whose handling (GET, handler, POST, ack) is over."""
        self._progress = asyncio.Condition()
        self._nc: Client | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> MockWorker:
        self._nc = await nats.connect(self.nats_url, connect_timeout=2, allow_reconnect=False)
        subscription = await self._nc.jetstream().pull_subscribe_bind(
            consumer=self.consumer, stream=self.stream
        )
        self._session = aiohttp.ClientSession()
        self._loop = asyncio.create_task(self._fetch_loop(subscription))
        return self

    async def close(self) -> None:
        if self._loop is not None:
            # A flag, not only a cancel: nats-py's fetch can turn a cancellation that races its
            # own expiry into a timeout, which the loop would take for an empty pull.
            self._stopping = True
            await asyncio.wait({self._loop}, timeout=5)
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await self._loop
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self._session is not None:
            await self._session.close()
        if self._nc is not None:
            await self._nc.close()

    async def _fetch_loop(self, subscription: Any) -> None:
        while not self._stopping:
            try:
                messages: list[Msg] = await subscription.fetch(batch=32, timeout=0.5)
            except NatsTimeoutError:
                continue
            for message in messages:
                task = asyncio.create_task(self._handle(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def wait_for(self, *, items: int = 0, handled: int = 0, within: float = 30) -> None:
        """Until at least `items` work items arrived and `handled` were handled."""

        def reached() -> bool:
            return len(self.items) >= items and self.handled >= handled

        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(reached), within)

    async def _advance(self, item: WorkerInvokeFunctionRequest | None = None) -> None:
        async with self._progress:
            if item is None:
                self.handled += 1
            else:
                self.items.append(item)
            self._progress.notify_all()

    async def _handle(self, message: Msg) -> None:
        try:
            item = decode_invoke_request(message.data)
            await self._advance(item)
            body = item.requestBody + await self._rest_of_body(item)
            reply = await self.handler(item, body, self)
            if reply is not None:
                status, headers, content = reply
                await self.post_attach(item, _frame(status, headers, content))
        except BaseException as error:
            self.errors.append(error)
            raise
        finally:
            await message.ack()
            await self._advance()

    async def _rest_of_body(self, item: WorkerInvokeFunctionRequest) -> bytes:
        config = first_http1_config(item)
        if not config.HasField("requestAuthorizationToken"):
            return b""
        assert self._session is not None
        async with self._session.get(
            attach_url(config.targetURI),
            headers={
                "Authorization": bearer(config.requestAuthorizationToken),
                "Accept": get_attach_accept(item.requestMethod),
            },
        ) as response:
            data = await response.read()
            self.get_attach[item.requestId] = (response.status, dict(response.headers), data)
            return data

    async def post_attach(
        self,
        item: WorkerInvokeFunctionRequest,
        data: bytes | AsyncIterable[bytes],
        *,
        token: str | None = None,
    ) -> tuple[int, bytes]:
        """POST `data` (head + body) to the item's attach URL; returns the platform's answer."""
        assert self._session is not None
        config = first_http1_config(item)
        async with self._session.post(
            attach_url(config.targetURI),
            data=data,
            headers={
                "Authorization": bearer(token or config.responseAuthorizationToken),
                "Content-Type": H1_CONTENT_TYPE,
            },
        ) as response:
            result = (response.status, await response.read())
        self.post_results.setdefault(item.requestId, []).append(result)
        return result


def _frame(
    status: int, headers: list[tuple[str, str]], content: bytes | AsyncIterable[bytes]
) -> bytes | AsyncIterable[bytes]:
    if isinstance(content, bytes):
        return encode_response_head(status, headers, content_length=len(content)) + content

    async def stream() -> AsyncIterator[bytes]:
        yield encode_response_head(status, headers)
        async for chunk in content:
            yield chunk

    return stream()


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
        all_headers: list[tuple[str, str]] = []
        if api_key is not None:
            all_headers.append(("Authorization", f"Bearer {api_key}"))
        if headers:
            all_headers.extend(headers.items() if isinstance(headers, dict) else headers)
        return self.session.post(
            self.pexec_url(function_id, version_id), data=body, headers=all_headers
        )


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
