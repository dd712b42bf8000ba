"""The `nvcf.Worker` gRPC stand-in over a real loopback channel (reference §3.3, §12)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import grpc
import nats
import pytest
from aiohttp import web
from nats.js.api import StorageType
from nats.js.errors import NotFoundError

from nvcf_platform.control.registry import Registry
from nvcf_platform.errors import ConfigError
from nvcf_platform.invocation.worker_api import WorkerApi
from nvcf_platform.invocation.workqueue import WorkQueue
from nvcf_platform.objects.object_routes import ObjectEndpoints
from nvcf_platform.objects.objects import ObjectStore
from nvcf_platform.objects.presign import UrlSigner
from nvcf_sidecar.protocol import (
    LargeResponseDownloadCredentialsRequest,
    ProvisionWorkerRequest,
    RefreshLargeUploadCredentialsRequest,
    WorkerConnect,
    WorkerStub,
    add_worker_servicer,
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


# --- the large-response RPCs over the object store ------------------------------------------------

CALLER_NCA = "caller-nca"
REQUEST_ID = "5d6f2a10-7c1b-4e9a-8b3c-2a1f0e9d8c7b"


@dataclass
class ObjectsApi:
    stub: Any
    store: ObjectStore
    session: aiohttp.ClientSession


@pytest.fixture
async def objects_api(nats_server: Any, registry: Registry) -> AsyncIterator[ObjectsApi]:
    """A `WorkerApi` with an object store (served over HTTP) on its own loopback gRPC server."""
    async with contextlib.AsyncExitStack() as stack:
        nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
        stack.push_async_callback(nc.close)
        listener = socket.create_server(("127.0.0.1", 0))
        stack.callback(listener.close)
        store = ObjectStore(
            nc,
            signer=UrlSigner(secrets.token_bytes(32)),
            base_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            storage=StorageType.MEMORY,
        )
        await store.provision()
        app = web.Application()
        ObjectEndpoints(store).register(app.router)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.SockSite(runner, listener).start()
        queue = WorkQueue(
            nc, region="test-region", max_messages=10, ack_wait=5.0, storage=StorageType.MEMORY
        )
        server = grpc.aio.server()
        add_worker_servicer(WorkerApi(registry, queue, store, nca_id=CALLER_NCA), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stack.push_async_callback(server.stop, None)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield ObjectsApi(WorkerStub(channel), store, session)


async def test_refreshed_upload_url_and_download_url_move_a_large_response(
    objects_api: ObjectsApi, ids: Any
) -> None:
    refresh = RefreshLargeUploadCredentialsRequest(
        requestId=REQUEST_ID, functionId=ids.function_id, functionVersionId=ids.version_id
    )
    upload = await objects_api.stub.RefreshLargeUploadCredentials(
        refresh, metadata=METADATA, timeout=10
    )
    assert f"/v2/nvcf/objects/results/{CALLER_NCA}/{REQUEST_ID}?" in upload.largeResponseUrl
    async with objects_api.session.put(
        upload.largeResponseUrl, data=b"fake-zip", headers={"Content-Type": "application/zip"}
    ) as response:
        assert response.status == 200
    download_request = LargeResponseDownloadCredentialsRequest(
        functionId=ids.function_id,
        functionVersionId=ids.version_id,
        requestId=REQUEST_ID,
        ncaId=CALLER_NCA,
    )
    download = await objects_api.stub.RequestLargeResponseDownloadCredentials(
        download_request, metadata=METADATA, timeout=10
    )
    async with objects_api.session.get(download.largeResponseDownloadUrl) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/zip"
        assert await response.read() == b"fake-zip"
    # The download URL of another caller's NCA names another object.
    download_request.ncaId = "someone-else"
    other = await objects_api.stub.RequestLargeResponseDownloadCredentials(
        download_request, metadata=METADATA, timeout=10
    )
    async with objects_api.session.get(other.largeResponseDownloadUrl) as response:
        assert response.status == 404


def _url_requests(ids: Any, **changes: str) -> list[Any]:
    fields = {
        "functionId": ids.function_id,
        "functionVersionId": ids.version_id,
        "requestId": REQUEST_ID,
        **changes,
    }
    return [
        LargeResponseDownloadCredentialsRequest(ncaId=CALLER_NCA, **fields),
        RefreshLargeUploadCredentialsRequest(**fields),
    ]


async def _call(stub: Any, request: Any, metadata: Any = METADATA) -> grpc.StatusCode:
    method = (
        stub.RequestLargeResponseDownloadCredentials
        if isinstance(request, LargeResponseDownloadCredentialsRequest)
        else stub.RefreshLargeUploadCredentials
    )
    try:
        await method(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"functionId": "bac11503-75ca-4a40-bf24-77ce49d13355"}, grpc.StatusCode.NOT_FOUND),
        ({"functionVersionId": "not-a-uuid"}, grpc.StatusCode.NOT_FOUND),
        ({"requestId": "not-a-uuid"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"requestId": ""}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_url_rpcs_reject_unknown_versions_and_bad_request_ids(
    objects_api: ObjectsApi, ids: Any, changes: dict[str, str], code: grpc.StatusCode
) -> None:
    for request in _url_requests(ids, **changes):
        assert await _call(objects_api.stub, request) == code


async def test_url_rpcs_need_a_bearer_and_a_caller_nca(objects_api: ObjectsApi, ids: Any) -> None:
    for request in _url_requests(ids):
        assert await _call(objects_api.stub, request, ()) == grpc.StatusCode.UNAUTHENTICATED
    download, _ = _url_requests(ids)
    download.ncaId = ""
    assert await _call(objects_api.stub, download) == grpc.StatusCode.INVALID_ARGUMENT
    download.ncaId = "../x"
    assert await _call(objects_api.stub, download) == grpc.StatusCode.INVALID_ARGUMENT


def test_an_object_store_needs_the_caller_nca(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="nca_id: NCA id ''"):
        WorkerApi(registry, cast(Any, None), cast(Any, object()))
