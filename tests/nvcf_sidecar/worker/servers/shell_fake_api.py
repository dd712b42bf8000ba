"""Stand-ins for the sidecar's process-shell tests: the `nvcf.Worker` API, a request runner, loaders.

`FakeWorkerApi` is a real grpc.aio server on loopback: ConnectOnce hands out a region and a token,
ProvisionRegionalWorker creates the work-queue stream and durable consumer with nats-py (with a
short ack wait when a test asks). `StandInRunner` records requests, holds them on demand and
returns outcomes, so the shell runs on real NATS without the data path.

Test modules load this file by path (see `load_shell_helpers` in each), as `tests/nvcf_sidecar`
cannot be a package next to the real `nvcf_sidecar`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import nats
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig

from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.protocol import (
    ProvisionWorkerRequest,
    ProvisionWorkerResponse,
    WorkerConnect,
    WorkerConnectOnceResponse,
    WorkerInvokeFunctionRequest,
    WorkerServicer,
    add_worker_servicer,
    attach_config,
    consumer_name,
    encode_invoke_request,
    request_consumer_config,
    request_stream_config,
    request_stream_name,
    request_subject,
)
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.consumer import RequestConsumer
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics

FUNCTION_ID = "11111111-2222-3333-4444-555555555555"
FUNCTION_VERSION_ID = "66666666-7777-8888-9999-000000000000"
REGION = "test-region"


async def provision_queue(
    nats_url: str,
    region: str,
    function_version_id: str = FUNCTION_VERSION_ID,
    *,
    ack_wait: float | None = None,
    max_batch: int | None = None,
    with_consumer: bool = True,
) -> None:
    """Create the work-queue stream (and its durable consumer) like the NVCF API does."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(request_stream_config(region, function_version_id))
        if with_consumer:
            config: ConsumerConfig = request_consumer_config(region, function_version_id)
            if ack_wait is not None:
                config = dataclasses.replace(config, ack_wait=ack_wait)
            stream = request_stream_name(region, function_version_id)
            if max_batch is None:
                await js.add_consumer(stream, config)
            else:
                # nats-py's ConsumerConfig has no max_batch; send the JetStream API request.
                document = {**config.as_dict(), "max_batch": max_batch}
                reply = await nc.request(
                    f"$JS.API.CONSUMER.CREATE.{stream}.{config.durable_name}",
                    json.dumps({"stream_name": stream, "config": document}).encode(),
                    timeout=5,
                )
                answer = json.loads(reply.data)
                assert "error" not in answer, answer
    finally:
        await nc.close()


def work_item(
    request_id: str | None = None,
    *,
    target_uri: str = "http://127.0.0.1:9",
    response_token: str | None = None,
) -> WorkerInvokeFunctionRequest:
    """A minimal work item (the shell never looks past requestId)."""
    request = WorkerInvokeFunctionRequest(
        requestId=request_id or str(uuid.uuid4()),
        requestMethod="POST",
        requestPath="/infer",
        requestBody=b"{}",
    )
    request.statelessConfig.CopyFrom(attach_config(target_uri, response_token or str(uuid.uuid4())))
    return request


async def publish_work(
    nats_url: str,
    items: Sequence[WorkerInvokeFunctionRequest | bytes],
    *,
    region: str = REGION,
    function_version_id: str = FUNCTION_VERSION_ID,
) -> list[str]:
    """JetStream-publish work items (or raw bytes) as the invocation service does; their ids."""
    ids = []
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for item in items:
            if isinstance(item, bytes):
                request_id, data = str(uuid.uuid4()), item
            else:
                request_id, data = item.requestId, encode_invoke_request(item)
            await js.publish(request_subject(region, function_version_id, request_id), data)
            ids.append(request_id)
    finally:
        await nc.close()
    return ids


async def queue_state(
    nats_url: str, *, region: str = REGION, function_version_id: str = FUNCTION_VERSION_ID
) -> tuple[int, int, int]:
    """(messages in the stream, consumer's ack-pending, consumer's pending) right now."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = request_stream_name(region, function_version_id)
        stream_info = await js.stream_info(stream)
        info = await js.consumer_info(stream, consumer_name(region, function_version_id))
        return stream_info.state.messages, info.num_ack_pending, info.num_pending
    finally:
        await nc.close()


@dataclass
class FakeWorkerApi(WorkerServicer):
    """A loopback `nvcf.Worker` server; counts calls and records the bearer of each."""

    nats_url: str
    region: str = REGION
    other_regions: tuple[str, ...] = ()
    ack_wait: float | None = None
    max_batch: int | None = None
    provision_creates: bool = True
    token_lifetime: timedelta = timedelta(hours=3)
    fail_connects: int = 0
    """The first this many ConnectOnce calls fail with UNAVAILABLE."""
    empty_region: bool = False
    expired_token: bool = False
    connect_bearers: list[str | None] = field(default_factory=list)
    provision_bearers: list[str | None] = field(default_factory=list)
    provisioned: list[str] = field(default_factory=list)
    port: int = 0
    _server: grpc.aio.Server | None = None

    @property
    def url(self) -> str:
        """The `NVCF_FQDN_GRPC` value for this server."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def issued_tokens(self) -> list[str]:
        """Tokens handed out so far, in order."""
        return [f"worker-token-{n}" for n in range(1, self._successes + 1)]

    _successes: int = 0

    async def start(self) -> FakeWorkerApi:
        self.port = free_port()
        self._server = grpc.aio.server()
        add_worker_servicer(self, self._server)
        self._server.add_insecure_port(f"{LOOPBACK}:{self.port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> FakeWorkerApi:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @staticmethod
    def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                return value if isinstance(value, str) else value.decode()
        return None

    async def ConnectOnce(
        self, request: WorkerConnect, context: grpc.aio.ServicerContext[Any, Any]
    ) -> WorkerConnectOnceResponse:
        self.connect_bearers.append(self._bearer(context))
        if len(self.connect_bearers) <= self.fail_connects:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        if request.functionVersionId != FUNCTION_VERSION_ID:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "wrong function version")
        self._successes += 1
        expiration = Timestamp()
        moment = datetime.now(UTC) + (
            -timedelta(minutes=1) if self.expired_token else self.token_lifetime
        )
        expiration.FromDatetime(moment)
        return WorkerConnectOnceResponse(
            connectedRegion="" if self.empty_region else self.region,
            otherRegions=list(self.other_regions),
            nvcfWorkerToken=f"worker-token-{self._successes}",
            expiration=expiration,
        )

    async def ProvisionRegionalWorker(
        self, request: ProvisionWorkerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ProvisionWorkerResponse:
        self.provision_bearers.append(self._bearer(context))
        self.provisioned.append(request.regionToProvision)
        if self.provision_creates:
            await provision_queue(
                self.nats_url,
                request.regionToProvision,
                request.functionVersionId,
                ack_wait=self.ack_wait,
                max_batch=self.max_batch,
            )
        return ProvisionWorkerResponse()

    async def RequestLargeResponseDownloadCredentials(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the shell tests")

    async def RefreshLargeUploadCredentials(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the shell tests")


class StandInRunner:
    """Records each request it runs; holds requests until released (on demand) or for `delay`.

    `max_active` is the highest number of requests it ran at once.
    """

    def __init__(self, *, delay: float = 0.0, outcome: Outcome = Outcome.DELIVERED) -> None:
        self.delay = delay
        self.outcome = outcome
        self.hold = False
        self.late_container_done = 0
        """How many of the next requests call `container_done` 0.2 s after they ended."""
        self.released = asyncio.Event()
        self.started: list[str] = []
        self.redelivered: list[bool] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.active = 0
        self.max_active = 0
        self.changed = asyncio.Event()

    def release(self) -> None:
        """Let every held request (and every later one) finish."""
        self.released.set()

    async def wait_started(self, count: int, within: float = 10.0) -> None:
        """Wait until at least `count` requests have started."""
        await self._wait(lambda: len(self.started) >= count, within)

    async def wait_finished(self, count: int, within: float = 10.0) -> None:
        """Wait until at least `count` requests have ended (finished or cancelled)."""
        await self._wait(lambda: len(self.finished) + len(self.cancelled) >= count, within)

    async def _wait(self, condition: Any, within: float) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def run(
        self,
        request: WorkerInvokeFunctionRequest,
        *,
        redelivered: bool = False,
        container_done: Any = None,
    ) -> Outcome:
        self.started.append(request.requestId)
        self.redelivered.append(redelivered)
        if self.late_container_done > 0 and container_done is not None:
            self.late_container_done -= 1
            asyncio.get_running_loop().call_later(0.2, container_done)
            self.finished.append(request.requestId)
            self.changed.set()
            return self.outcome
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.changed.set()
        try:
            if self.hold:
                await self.released.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.append(request.requestId)
            raise
        finally:
            self.active -= 1
            self.changed.set()
        self.finished.append(request.requestId)
        return self.outcome


# --- a RequestConsumer serving a real queue -----------------------------------------------


def make_config(**changes: Any) -> WorkerConfig:
    settings: dict[str, Any] = {
        "function_id": FUNCTION_ID,
        "function_version_id": FUNCTION_VERSION_ID,
        "grpc_url": "http://127.0.0.1:1",
        "max_request_concurrency": 1,
        "fetch_max_wait": 10.0,
        "fetch_heartbeat": 1.0,
    }
    settings.update(changes)
    if "inference_port" in changes:  # like from_env: the health port follows the inference port
        settings.setdefault("health_port", changes["inference_port"])
    return WorkerConfig(**settings)


def naks(metrics: WorkerMetrics, reason: str) -> float:
    return metrics.naks.labels(reason)._value.get()


def outcomes(metrics: WorkerMetrics, outcome: Outcome) -> float:
    return metrics.requests.labels(outcome.value)._value.get()


class Serving:
    """A running consumer and what the test needs to look at it."""

    def __init__(self, consumer: RequestConsumer, metrics: WorkerMetrics, nc: NATS) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.nc = nc
        self.healthy = True


@asynccontextmanager
async def serving(
    nats_url: str,
    runner: Any,
    *,
    regions: tuple[str, ...] = (REGION,),
    provisioned: list[str] | None = None,
    refuse: frozenset[str] = frozenset(),
    drain: float | None = 10.0,
    **config_changes: Any,
) -> AsyncIterator[Serving]:
    """Bind and fetch with a RequestConsumer until the block ends, then drain."""
    config = make_config(**config_changes)
    metrics = WorkerMetrics()
    nc = await nats.connect(nats_url)
    calls = provisioned if provisioned is not None else []

    async def provision(region: str) -> None:
        calls.append(region)
        if region in refuse:
            raise RuntimeError(f"region {region} is down")
        await provision_queue(nats_url, region)

    state: Serving | None = None
    try:
        consumer = RequestConsumer(
            nc,
            config,
            metrics,
            runner,
            provision,
            is_healthy=lambda: state is None or state.healthy,
        )
        state = Serving(consumer, metrics, nc)
        async with consumer:
            await consumer.bind(regions)
            async with asyncio.TaskGroup() as background:
                fetching = background.create_task(consumer.fetch())
                yield state
                consumer.stop_fetching()
                async with asyncio.timeout(5):
                    await fetching
                await consumer.drain(drain)
    finally:
        await nc.close()


async def wait_for_state(
    nats_url: str, expected: tuple[int, int, int], within: float = 10.0
) -> None:
    deadline = time.monotonic() + within
    while True:
        state = await queue_state(nats_url)
        if state == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"queue state {state}, expected {expected}")
        await asyncio.sleep(0.05)
