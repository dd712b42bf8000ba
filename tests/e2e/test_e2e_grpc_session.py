"""Stateful (gRPC) sessions through a real sidecar (reference nvcf-grpc-sessions §3, §4).

The test plays NVIDIA's gRPC proxy the way its own `TestStreamDirector` does: it publishes a
session work item (`statefulConfig`) to the version's queue, accepts the worker's dial-back
(`CONNECT /v1/proxy` with the item's token and request id), and joins a grpcio client's
connection to that tunnel byte for byte. The sidecar carries the HTTP/2 to a real grpcio server
(unary, server-streaming and bidirectional calls), registers the session in the lookup stream,
dials back again on a reconnect item, and acks the item when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from e2e.conftest import REGION, grpc_echo_function
from harness.waits import wait_for
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack
from nvcf_sidecar.protocol import (
    request_subject,
    session_lookup_stream_name,
    session_lookup_subject,
    session_lookup_subject_filter,
    session_reconnect_subject,
)
from nvcf_sidecar.protocol.gen.nvcf_pb2 import StatefulSessionTracking, WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.tunnel import Tunnel, splice

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

DELIVERED = 'nvcf_worker_requests_total{outcome="delivered"}'
WORKER_ERROR = 'nvcf_worker_requests_total{outcome="worker_error"}'
# Each channel its own connection: grpcio shares them between channels of one process by
# default, and a session is one connection.
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Proxy:
    """The dial-back side of the proxy: answers each CONNECT with `status` and keeps the
    tunnels it opened for the test to use."""

    status: int = 200
    connects: list[dict[str, str]] = field(default_factory=list)
    tunnels: asyncio.Queue[Tunnel] = field(default_factory=asyncio.Queue)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/proxy"

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.rstrip("\r\n").split("\r\n")
        fields = {"request-line": request_line}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        self.connects.append(fields)
        if self.status != 200:
            writer.write(f"HTTP/1.1 {self.status} Refused\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        await self.tunnels.put(Tunnel(reader, writer))


def session_item(request_id: str, proxy_url: str, token: str) -> bytes:
    item = WorkerInvokeFunctionRequest(requestId=request_id, ncaId="nca-caller", subject="caller")
    item.requestTime.GetCurrentTime()
    item.statefulConfig.nvcfRegionOfInvoker = REGION
    config = item.statefulConfig.connectionConfigs.add()
    config.http1Config.proxyURI = proxy_url
    config.http1Config.proxyAuthorizationToken = token
    return item.SerializeToString()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    played = Proxy()
    played.server = await asyncio.start_server(played.on_connect, "127.0.0.1", 0)
    yield played
    played.server.close()


@pytest.fixture
def grpc_stack(start_stack: Callable[..., LocalStack]) -> tuple[LocalStack, FunctionSpec]:
    spec = grpc_echo_function()
    return start_stack([spec]), spec


async def publish(stack: LocalStack, subject: str, data: bytes, *, stream: bool = True) -> None:
    client = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        if stream:
            await client.jetstream().publish(subject, data)
        else:
            await client.publish(subject, data)
            await client.flush()
    finally:
        await client.close()


async def lookup_record(stack: LocalStack, subject: str) -> bytes | None:
    client = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = client.jetstream()
        try:
            message = await js.get_last_msg(session_lookup_stream_name(REGION), subject)
        except nats.js.errors.NotFoundError:
            return None
        return message.data
    finally:
        await client.close()


async def create_lookup_stream(stack: LocalStack) -> None:
    """As NVIDIA's proxy does at its start (replicas 1: one nats-server)."""
    client = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        await client.jetstream().add_stream(
            StreamConfig(
                name=session_lookup_stream_name(REGION),
                subjects=[session_lookup_subject_filter(REGION)],
                retention=RetentionPolicy.LIMITS,
                max_msgs_per_subject=1,
                max_age=3600,
                discard=DiscardPolicy.NEW,
                storage=StorageType.MEMORY,
                num_replicas=1,
            )
        )
    finally:
        await client.close()


class ClientSide:
    """A listener for grpcio clients: each connection is joined to the next tunnel."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.splices: list[asyncio.Task[tuple[int, int]]] = []
        self.server: asyncio.Server | None = None

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tunnel = await asyncio.wait_for(self.proxy.tunnels.get(), 30)
        task = asyncio.create_task(splice(tunnel, (reader, writer)))
        self.splices.append(task)
        await task

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.on_client, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        while not self.proxy.tunnels.empty():  # a tunnel no client used: close it, as the
            self.proxy.tunnels.get_nowait().writer.close()  # proxy's idle timeout would
        for task in self.splices:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def call_everything(target: str) -> dict[str, Any]:
    """Unary, server-streaming and bidirectional calls on one channel (blocking)."""
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        unary = channel.unary_unary("/echo.Echo/Unary")(b"hello", timeout=30)
        repeated = list(channel.unary_stream("/echo.Echo/Repeat")(b"again", timeout=30))
        chat = list(
            channel.stream_stream("/echo.Echo/Chat")(iter([b"a", b"bb", b"ccc"]), timeout=30)
        )
    return {"unary": unary, "repeat": repeated, "chat": chat}


async def test_a_session_carries_unary_and_streaming_calls_and_ends_acked(
    grpc_stack: tuple[LocalStack, FunctionSpec], proxy: Proxy, scrape: Any, queue_state: Any
) -> None:
    stack, spec = grpc_stack
    [sidecar] = stack.sidecars(spec.version_id)
    await create_lookup_stream(stack)
    request_id, token = str(uuid.uuid4()), uuid.uuid4().hex * 2
    lookup = session_lookup_subject(REGION, spec.version_id, request_id)
    async with ClientSide(proxy) as target:
        await publish(
            stack,
            request_subject(REGION, spec.version_id, request_id),
            session_item(request_id, proxy.url, token),
        )
        await wait_for(lambda: len(proxy.connects) == 1, "the worker's dial-back", within=30)
        record = None
        for _ in range(100):  # registered while the session lives (the tunnel waits for us)
            record = await lookup_record(stack, lookup)
            if record is not None:
                break
            await asyncio.sleep(0.05)
        assert record is not None
        answers = await asyncio.to_thread(call_everything, target)
        tracking = StatefulSessionTracking.FromString(record)
        assert (tracking.functionId, tracking.functionVersionId, tracking.invokerNcaId) == (
            spec.function_id,
            spec.version_id,
            "nca-caller",
        )
    assert answers == {"unary": b"hello", "repeat": [b"again"] * 3, "chat": [b"a", b"bb", b"ccc"]}
    [connect] = proxy.connects
    assert connect["request-line"] == "CONNECT /v1/proxy HTTP/1.1"
    assert connect["authorization"] == f"Bearer {token}"
    assert connect["x-request-id"] == request_id
    # The client left: the session ends, its item is acked, its registration purged.
    await wait_for(lambda: scrape(sidecar.metrics_url).get(DELIVERED) == 1, "the session's end")
    await queue_state(stack, spec.version_id, expect=(0, 1, 0))
    assert await lookup_record(stack, lookup) is None
    assert sidecar.returncode is None


async def test_a_reconnect_item_opens_another_tunnel_into_the_same_session(
    grpc_stack: tuple[LocalStack, FunctionSpec], proxy: Proxy, scrape: Any
) -> None:
    stack, spec = grpc_stack
    [sidecar] = stack.sidecars(spec.version_id)
    request_id = str(uuid.uuid4())
    async with ClientSide(proxy) as target:
        await publish(
            stack,
            request_subject(REGION, spec.version_id, request_id),
            session_item(request_id, proxy.url, "first-token"),
        )
        await wait_for(lambda: len(proxy.connects) == 1, "the first dial-back", within=30)
        first = asyncio.create_task(asyncio.to_thread(call_everything, target))
        await publish(
            stack,
            session_reconnect_subject(request_id),
            session_item(request_id, proxy.url, "second-token"),
            stream=False,
        )
        await wait_for(lambda: len(proxy.connects) == 2, "the second dial-back", within=30)
        second = await asyncio.to_thread(call_everything, target)
        assert (await first)["unary"] == b"hello"
    assert second["chat"] == [b"a", b"bb", b"ccc"]
    assert [c["authorization"] for c in proxy.connects] == [
        "Bearer first-token",
        "Bearer second-token",
    ]
    assert {c["x-request-id"] for c in proxy.connects} == {request_id}
    # One session, one slot, one outcome, whatever the number of tunnels.
    await wait_for(lambda: scrape(sidecar.metrics_url).get(DELIVERED) == 1, "the session's end")


async def test_a_proxy_refusing_the_token_gets_one_try_and_the_item_is_acked(
    grpc_stack: tuple[LocalStack, FunctionSpec], proxy: Proxy, scrape: Any, queue_state: Any
) -> None:
    stack, spec = grpc_stack
    [sidecar] = stack.sidecars(spec.version_id)
    proxy.status = 403
    request_id = str(uuid.uuid4())
    await publish(
        stack,
        request_subject(REGION, spec.version_id, request_id),
        session_item(request_id, proxy.url, "spent-token"),
    )
    await wait_for(lambda: scrape(sidecar.metrics_url).get(WORKER_ERROR) == 1, "the refusal")
    await queue_state(stack, spec.version_id, expect=(0, 1, 0))
    assert len(proxy.connects) == 1  # 403 is final: no retry
    assert sidecar.is_ready()  # and the sidecar goes on serving
