"""The `nvcf.Worker` gRPC stand-in over a real loopback channel (reference §3.3, §12)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from nats.js.errors import NotFoundError

from nvcf_sidecar.protocol import (
    LargeResponseDownloadCredentialsRequest,
    ProvisionWorkerRequest,
    WorkerConnect,
    WorkerStub,
    consumer_name,
    request_stream_name,
)

pytestmark = pytest.mark.nats

METADATA = (("authorization", "Bearer initial-worker-token"),)


@pytest.fixture
async def stub(platform: Any) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.grpc_port}") as channel:
        yield WorkerStub(channel)


async def test_connect_once_answers_region_and_a_3_hour_token_and_creates_the_consumer(
    stub: Any, observer: Any, ids: Any
) -> None:
    js = observer.jetstream()
    await js.delete_stream(ids.stream)
    request = WorkerConnect(
        instanceId="instance-1", functionId=ids.function_id, functionVersionId=ids.version_id
    )
    response = await stub.ConnectOnce(request, metadata=METADATA, timeout=10)
    assert response.connectedRegion == ids.region
    assert list(response.otherRegions) == []
    assert len(response.nvcfWorkerToken) >= 32
    assert abs(response.expiration.seconds - (time.time() + 3 * 3600)) < 60
    consumer = await js.consumer_info(ids.stream, ids.consumer)
    assert consumer.config.durable_name == ids.consumer
    second = await stub.ConnectOnce(request, metadata=METADATA, timeout=10)
    assert second.nvcfWorkerToken != response.nvcfWorkerToken


async def test_provision_regional_worker_creates_stream_and_consumer_in_that_region(
    stub: Any, observer: Any, ids: Any
) -> None:
    js = observer.jetstream()
    stream = request_stream_name("other-region", ids.version_id)
    with pytest.raises(NotFoundError):
        await js.stream_info(stream)
    request = ProvisionWorkerRequest(
        instanceId="instance-1",
        functionId=ids.function_id,
        functionVersionId=ids.version_id,
        regionToProvision="other-region",
    )
    await stub.ProvisionRegionalWorker(request, metadata=METADATA, timeout=10)
    await stub.ProvisionRegionalWorker(request, metadata=METADATA, timeout=10)  # idempotent
    info = await js.consumer_info(stream, consumer_name("other-region", ids.version_id))
    assert info.config.ack_wait == 5.0


@pytest.mark.parametrize(
    ("function_id", "version_id"),
    [
        (None, "bac11503-75ca-4a40-bf24-77ce49d13355"),
        ("bac11503-75ca-4a40-bf24-77ce49d13355", None),
        (None, "not-a-uuid"),
    ],
)
async def test_unknown_function_or_version_is_not_found(
    stub: Any, ids: Any, function_id: str | None, version_id: str | None
) -> None:
    request = WorkerConnect(
        instanceId="i",
        functionId=function_id or ids.function_id,
        functionVersionId=version_id or ids.version_id,
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ConnectOnce(request, metadata=METADATA, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_version_of_another_function_is_not_found(stub: Any, ids: Any) -> None:
    request = WorkerConnect(
        instanceId="i", functionId=ids.function_id, functionVersionId=ids.other_version_ids[0]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ConnectOnce(request, metadata=METADATA, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("metadata", [(), (("authorization", "Basic eDp5"),)])
async def test_call_without_bearer_metadata_is_unauthenticated(
    stub: Any, ids: Any, metadata: tuple[tuple[str, str], ...]
) -> None:
    request = WorkerConnect(
        instanceId="i", functionId=ids.function_id, functionVersionId=ids.version_id
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ConnectOnce(request, metadata=metadata, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_provision_without_region_is_invalid_argument(stub: Any, ids: Any) -> None:
    request = ProvisionWorkerRequest(functionId=ids.function_id, functionVersionId=ids.version_id)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ProvisionRegionalWorker(request, metadata=METADATA, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_large_response_rpcs_are_unimplemented_for_now(stub: Any, ids: Any) -> None:
    request = LargeResponseDownloadCredentialsRequest(
        functionId=ids.function_id, functionVersionId=ids.version_id, requestId="r"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RequestLargeResponseDownloadCredentials(request, metadata=METADATA, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
