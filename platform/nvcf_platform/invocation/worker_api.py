"""A stand-in for the NVCF API's `nvcf.Worker` gRPC service, enough for a worker to start (§3.3, §12).

ConnectOnce and ProvisionRegionalWorker create the queue stream and durable consumer, as NVIDIA's
API does; the two large-response RPCs sign URLs of the platform's object store.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn

import grpc
from nats.errors import Error as NatsError

from nvcf_platform.control.registry import FunctionVersion, Registry
from nvcf_platform.errors import (
    ConfigError,
    FunctionNotFound,
    FunctionVersionNotFound,
    InvalidObjectName,
    NatsUnavailable,
)
from nvcf_platform.invocation.workqueue import WorkQueue
from nvcf_platform.objects.objects import ObjectStore, check_nca_id
from nvcf_sidecar.protocol import (
    InvalidSubjectToken,
    LargeResponseDownloadCredentialsRequest,
    LargeResponseDownloadCredentialsResponse,
    ProvisionWorkerRequest,
    ProvisionWorkerResponse,
    RefreshLargeUploadCredentialsRequest,
    RefreshLargeUploadCredentialsResponse,
    WorkerConnect,
    WorkerConnectOnceResponse,
    WorkerServicer,
    parse_bearer,
)

__all__ = ["WORKER_TOKEN_LIFETIME_SECONDS", "WorkerApi"]

WORKER_TOKEN_LIFETIME_SECONDS: Final = 3 * 3600
"""Validity of the worker token ConnectOnce issues (NVIDIA's API issues 3 h tokens)."""

_Context = grpc.aio.ServicerContext[Any, Any]
_log = logging.getLogger(__name__)


async def _abort(context: _Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # grpc raises; this keeps mypy honest


class WorkerApi(WorkerServicer):
    """The `nvcf.Worker` RPCs a worker calls at start-up; every call needs a bearer in metadata.

    Any bearer is accepted (the platform issues the tokens it would check); a call without one
    is UNAUTHENTICATED. Unknown functions or versions are NOT_FOUND. The large-response RPCs
    need `objects` (else UNIMPLEMENTED) and `nca_id`, the caller NCA whose uploads they sign.
    `on_connect(version, instance_id)` is called for every successful ConnectOnce (the platform
    counts connected workers with it).
    """

    def __init__(
        self,
        registry: Registry,
        queue: WorkQueue,
        objects: ObjectStore | None = None,
        *,
        nca_id: str = "",
        on_connect: Callable[[FunctionVersion, str], None] | None = None,
    ) -> None:
        if objects is not None:
            try:
                check_nca_id(nca_id)
            except InvalidObjectName as error:
                raise ConfigError(f"nca_id: {error}") from None
        self._registry = registry
        self._queue = queue
        self._objects = objects
        self._nca_id = nca_id
        self._on_connect = on_connect

    async def ConnectOnce(
        self, request: WorkerConnect, context: _Context
    ) -> WorkerConnectOnceResponse:
        """Provision the queue in the platform's region and hand out a fresh 3 h token."""
        await _require_bearer(context)
        version = await self._version(request.functionId, request.functionVersionId, context)
        await self._provision(version, self._queue.region, context)
        response = WorkerConnectOnceResponse(
            connectedRegion=self._queue.region, nvcfWorkerToken=secrets.token_urlsafe(32)
        )
        response.expiration.FromSeconds(int(time.time()) + WORKER_TOKEN_LIFETIME_SECONDS)
        if self._on_connect is not None:
            self._on_connect(version, request.instanceId)
        _log.info(
            "worker connected",
            extra={
                "instance_id": request.instanceId,
                "function_version_id": version.function_version_id,
            },
        )
        return response

    async def ProvisionRegionalWorker(
        self, request: ProvisionWorkerRequest, context: _Context
    ) -> ProvisionWorkerResponse:
        """Create the stream and durable consumer of one more region (idempotent)."""
        await _require_bearer(context)
        version = await self._version(request.functionId, request.functionVersionId, context)
        if not request.regionToProvision:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "regionToProvision is empty")
        await self._provision(version, request.regionToProvision, context)
        return ProvisionWorkerResponse()

    async def RequestLargeResponseDownloadCredentials(
        self, request: LargeResponseDownloadCredentialsRequest, context: _Context
    ) -> LargeResponseDownloadCredentialsResponse:
        """A presigned GET of `results/<ncaId>/<requestId>`, for the worker's 302 Location."""
        await _require_bearer(context)
        objects = await self._object_store(context)
        await self._version(request.functionId, request.functionVersionId, context)
        if not request.ncaId:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "ncaId is empty")
        try:
            url = objects.large_response_download_url(request.ncaId, request.requestId)
        except InvalidObjectName as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        _log.debug("large-response download URL issued", extra={"request_id": request.requestId})
        return LargeResponseDownloadCredentialsResponse(largeResponseDownloadUrl=url)

    async def RefreshLargeUploadCredentials(
        self, request: RefreshLargeUploadCredentialsRequest, context: _Context
    ) -> RefreshLargeUploadCredentialsResponse:
        """A fresh presigned PUT of `results/<ncaId>/<requestId>` (the platform's caller NCA)."""
        await _require_bearer(context)
        objects = await self._object_store(context)
        await self._version(request.functionId, request.functionVersionId, context)
        try:
            url = objects.large_response_upload_url(self._nca_id, request.requestId)
        except InvalidObjectName as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        _log.debug("large-response upload URL refreshed", extra={"request_id": request.requestId})
        return RefreshLargeUploadCredentialsResponse(largeResponseUrl=url)

    async def _object_store(self, context: _Context) -> ObjectStore:
        if self._objects is None:
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "no object store configured")
        return self._objects

    async def _version(
        self, function_id: str, function_version_id: str, context: _Context
    ) -> FunctionVersion:
        try:
            return self._registry.version(function_id, function_version_id)
        except (FunctionNotFound, FunctionVersionNotFound) as error:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(error))

    async def _provision(self, version: FunctionVersion, region: str, context: _Context) -> None:
        try:
            await self._queue.provision(version.function_version_id, region)
        except InvalidSubjectToken as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except (NatsError, TimeoutError, NatsUnavailable) as error:
            _log.error("queue provisioning failed", extra={"error": repr(error)})
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"JetStream unavailable: {error!r}")


async def _require_bearer(context: _Context) -> None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and parse_bearer(value):
            return
    await _abort(
        context, grpc.StatusCode.UNAUTHENTICATED, "metadata `authorization: Bearer <token>` missing"
    )
