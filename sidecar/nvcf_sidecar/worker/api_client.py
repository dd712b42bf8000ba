"""Client of the NVCF API's `nvcf.Worker` gRPC service: ConnectOnce, token refresh, provisioning.

`WorkerApiClient` holds the current worker token (the bearer of every call and the payload of the
NATS auth token), caches it in `<SHARED_CONFIG_DIR>/nvcf-worker-token.json` like NVIDIA's worker,
and refreshes it in the background (`keep_connected`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import grpc
import grpc.aio
import orjson

from nvcf_sidecar.protocol import (
    LargeResponseDownloadCredentialsRequest,
    ProvisionWorkerRequest,
    RefreshLargeUploadCredentialsRequest,
    WorkerConnect,
    WorkerStub,
    bearer,
)
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.errors import WorkerError

if TYPE_CHECKING:
    from nvcf_sidecar.protocol.gen.nvcf_pb2_grpc import WorkerAsyncStub

__all__ = [
    "CALL_TIMEOUT_SECONDS",
    "CONNECT_RETRY_SECONDS",
    "TOKEN_CACHE_NAME",
    "ApiCallFailed",
    "ApiError",
    "ConnectRejected",
    "ConnectionLost",
    "ExponentialBackoff",
    "WorkerApiClient",
    "WorkerConnection",
    "refresh_delay",
]

logger = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS: Final = 20.0
"""Deadline of every call (grpc-go has none by default; NVIDIA's worker sets 20 s)."""
CONNECT_RETRY_SECONDS: Final = 300.0
"""How long start-up keeps retrying ConnectOnce before giving up."""
TOKEN_CACHE_NAME: Final = "nvcf-worker-token.json"
_REFRESH_MIN_SECONDS: Final = 20 * 60.0
_REFRESH_MAX_SECONDS: Final = 30 * 60.0
_REFRESH_LIFE_FRACTION: Final = 0.9
_MAX_MESSAGE_BYTES: Final = 10 * 1024 * 1024


class ApiError(WorkerError):
    """Base class of errors talking to the NVCF API."""


class ApiCallFailed(ApiError):
    """A gRPC call failed; `code` is the gRPC status code."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"nvcf.Worker/{method} failed: {code.name}: {details}")


class ConnectRejected(ApiError):
    """ConnectOnce answered, but with no region or an already expired token."""


class ConnectionLost(ApiError):
    """The worker token expired and no ConnectOnce succeeded in time to replace it."""


@dataclass(frozen=True)
class WorkerConnection:
    """What one successful ConnectOnce told the worker."""

    region: str
    """The primary region: its queue must be served."""
    other_regions: tuple[str, ...]
    """Secondary regions, served best effort."""
    token: str
    expiration: datetime | None
    """When `token` expires (UTC); None when the API sent no expiration."""

    @property
    def regions(self) -> tuple[str, ...]:
        """The primary region first, then the others (without duplicates)."""
        others = tuple(region for region in dict.fromkeys(self.other_regions) if region)
        return (self.region, *(region for region in others if region != self.region))


class ExponentialBackoff:
    """Delays of NVIDIA's default backoff: 0.5 s, x1.5, +-50 % jitter, capped; `max_elapsed`
    bounds the total (None: forever). `next_delay()` returns None once the budget is spent."""

    def __init__(
        self,
        *,
        initial: float = 0.5,
        multiplier: float = 1.5,
        max_interval: float = 60.0,
        max_elapsed: float | None = None,
    ) -> None:
        self._initial = initial
        self._multiplier = multiplier
        self._max_interval = max_interval
        self._max_elapsed = max_elapsed
        self.reset()

    def reset(self) -> None:
        """Start again from the initial delay and a fresh elapsed-time budget."""
        self._interval = self._initial
        self._started = time.monotonic()

    def next_delay(self) -> float | None:
        """The next delay in seconds, or None when waiting it would exceed `max_elapsed`."""
        delay = self._interval * random.uniform(0.5, 1.5)
        self._interval = min(self._max_interval, self._interval * self._multiplier)
        if self._max_elapsed is not None:
            remaining = self._max_elapsed - (time.monotonic() - self._started)
            if remaining <= 0:
                return None
            delay = min(delay, remaining)
        return delay


def refresh_delay(expiration: datetime | None, now: datetime) -> float:
    """Seconds until the next ConnectOnce: 20-30 min, sooner at 90 % of the token's remaining life."""
    delay = random.uniform(_REFRESH_MIN_SECONDS, _REFRESH_MAX_SECONDS)
    if expiration is not None:
        remaining = (expiration - now).total_seconds()
        delay = min(delay, max(0.0, remaining * _REFRESH_LIFE_FRACTION))
    return delay


def _grpc_target(url: str) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from `http://host[:port]` or `https://host[:port]`."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    if not parts.hostname:
        raise ValueError(f"NVCF_FQDN_GRPC={url!r}: no host")
    port = parts.port or (443 if tls else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", tls


class WorkerApiClient:
    """The worker's client of `nvcf.Worker`; open it with `async with`.

    The bearer starts as a cached, unexpired token from the shared config directory, else
    `NVCF_WORKER_TOKEN`; every successful `connect_once` replaces it.
    """

    def __init__(self, config: WorkerConfig, *, call_timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self._config = config
        self._call_timeout = call_timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: WorkerAsyncStub | None = None
        self._connection: WorkerConnection | None = None
        self._cache_path = config.shared_config_dir / TOKEN_CACHE_NAME
        self._token = self._load_cached_token() or config.worker_token
        self._token_expiration: datetime | None = None

    @property
    def token(self) -> str:
        """The current worker token (bearer for the API, payload of the NATS auth token)."""
        return self._token

    @property
    def connection(self) -> WorkerConnection | None:
        """The last successful ConnectOnce answer, if any."""
        return self._connection

    async def __aenter__(self) -> WorkerApiClient:
        target, tls = _grpc_target(self._config.grpc_url)
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
        if tls:
            self._channel = grpc.aio.secure_channel(
                target, grpc.ssl_channel_credentials(), options=options
            )
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = WorkerStub(self._channel)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", bearer(self._token)),)

    def _require_stub(self) -> WorkerAsyncStub:
        if self._stub is None:
            raise RuntimeError("WorkerApiClient is not open; use `async with`")
        return self._stub

    async def connect_once(self) -> WorkerConnection:
        """Call ConnectOnce once; on success adopt (and cache) the new token.

        Raises ApiCallFailed for a failed call and ConnectRejected for an unusable answer.
        """
        stub = self._require_stub()
        request = WorkerConnect(
            instanceId=self._config.instance_id,
            functionId=self._config.function_id,
            functionVersionId=self._config.function_version_id,
        )
        try:
            response = await stub.ConnectOnce(
                request, metadata=self._metadata(), timeout=self._call_timeout
            )
        except grpc.aio.AioRpcError as error:
            raise ApiCallFailed("ConnectOnce", error.code(), error.details() or "") from None
        if not response.connectedRegion:
            raise ConnectRejected("ConnectOnce answered without a connected region")
        if not response.nvcfWorkerToken:
            raise ConnectRejected("ConnectOnce answered without a worker token")
        expiration = (
            response.expiration.ToDatetime(tzinfo=UTC) if response.HasField("expiration") else None
        )
        if expiration is not None and expiration <= datetime.now(UTC):
            raise ConnectRejected(
                f"ConnectOnce answered with a token that expired at {expiration.isoformat()}"
            )
        connection = WorkerConnection(
            region=response.connectedRegion,
            other_regions=tuple(response.otherRegions),
            token=response.nvcfWorkerToken,
            expiration=expiration,
        )
        self._connection = connection
        self._token = connection.token
        self._token_expiration = expiration
        self._cache_token(connection)
        logger.info(
            "connected to NVCF",
            extra={
                "region": connection.region,
                "other_regions": list(connection.other_regions),
                "token_expiration": expiration.isoformat() if expiration else None,
            },
        )
        return connection

    async def connect(self, *, max_elapsed: float = CONNECT_RETRY_SECONDS) -> WorkerConnection:
        """ConnectOnce, retried with exponential backoff for up to `max_elapsed` seconds.

        Raises the last ApiError when the budget is spent.
        """
        backoff = ExponentialBackoff(max_elapsed=max_elapsed)
        while True:
            try:
                return await self.connect_once()
            except ApiError as error:
                delay = backoff.next_delay()
                if delay is None:
                    raise
                logger.warning(
                    "ConnectOnce failed; retrying",
                    extra={"error": str(error), "retry_in_seconds": round(delay, 3)},
                )
                await asyncio.sleep(delay)

    async def provision_regional_worker(self, region: str) -> None:
        """Ask the API to create the queue stream and durable consumer of `region`."""
        stub = self._require_stub()
        request = ProvisionWorkerRequest(
            instanceId=self._config.instance_id,
            functionId=self._config.function_id,
            functionVersionId=self._config.function_version_id,
            regionToProvision=region,
        )
        try:
            await stub.ProvisionRegionalWorker(
                request, metadata=self._metadata(), timeout=self._call_timeout
            )
        except grpc.aio.AioRpcError as error:
            raise ApiCallFailed(
                "ProvisionRegionalWorker", error.code(), error.details() or ""
            ) from None
        logger.info("provisioned regional worker", extra={"region": region})

    async def large_response_download_url(self, request_id: str, nca_id: str) -> str:
        """RequestLargeResponseDownloadCredentials: the URL the caller's 302 points to (§8).

        `nca_id` is the caller's (the work item's `ncaId`). Raises ApiCallFailed, or
        ConnectRejected for an answer without a URL.
        """
        stub = self._require_stub()
        request = LargeResponseDownloadCredentialsRequest(
            functionId=self._config.function_id,
            functionVersionId=self._config.function_version_id,
            requestId=request_id,
            ncaId=nca_id,
        )
        try:
            response = await stub.RequestLargeResponseDownloadCredentials(
                request, metadata=self._metadata(), timeout=self._call_timeout
            )
        except grpc.aio.AioRpcError as error:
            raise ApiCallFailed(
                "RequestLargeResponseDownloadCredentials", error.code(), error.details() or ""
            ) from None
        if not response.largeResponseDownloadUrl:
            raise ConnectRejected("RequestLargeResponseDownloadCredentials answered without a URL")
        return response.largeResponseDownloadUrl

    async def refresh_large_upload_url(self, request_id: str) -> str:
        """RefreshLargeUploadCredentials: a fresh presigned PUT URL for a large response (§8).

        Used when the work item's `largeResponseUrl` is empty, older than 30 min, or was refused
        with 400. Raises ApiCallFailed, or ConnectRejected for an answer without a URL.
        """
        stub = self._require_stub()
        request = RefreshLargeUploadCredentialsRequest(
            requestId=request_id,
            functionId=self._config.function_id,
            functionVersionId=self._config.function_version_id,
        )
        try:
            response = await stub.RefreshLargeUploadCredentials(
                request, metadata=self._metadata(), timeout=self._call_timeout
            )
        except grpc.aio.AioRpcError as error:
            raise ApiCallFailed(
                "RefreshLargeUploadCredentials", error.code(), error.details() or ""
            ) from None
        if not response.largeResponseUrl:
            raise ConnectRejected("RefreshLargeUploadCredentials answered without a URL")
        return response.largeResponseUrl

    async def keep_connected(
        self, on_connected: Callable[[WorkerConnection], None] | None = None
    ) -> None:
        """Refresh the token forever: ConnectOnce every 20-30 min (sooner for short-lived tokens).

        A failed refresh is retried until the current token expires; then ConnectionLost is
        raised, because neither NATS nor the API will accept the worker any more. Each success
        is reported to `on_connected` (the regions may have changed).
        """
        while True:
            now = datetime.now(UTC)
            await asyncio.sleep(refresh_delay(self._token_expiration, now))
            expiration = self._token_expiration
            budget = (
                (expiration - datetime.now(UTC)).total_seconds()
                if expiration is not None
                else CONNECT_RETRY_SECONDS
            )
            try:
                connection = await self.connect(max_elapsed=max(budget, 1.0))
            except ApiError as error:
                raise ConnectionLost(
                    f"could not refresh the worker token before it expired: {error}"
                ) from error
            if on_connected is not None:
                on_connected(connection)

    # --- token cache (same file and JSON shape as NVIDIA's: an oauth2 token) ---------------------

    def _load_cached_token(self) -> str | None:
        try:
            document = orjson.loads(self._cache_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as error:
            logger.warning(
                "cached worker token unreadable; using NVCF_WORKER_TOKEN",
                extra={"path": str(self._cache_path), "error": str(error)},
            )
            return None
        token = document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            return None
        expiry = document.get("expiry")
        if isinstance(expiry, str) and expiry and not expiry.startswith("0001-01-01"):
            try:
                expires = datetime.fromisoformat(expiry)
            except ValueError:
                return None
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            # Ours improves on NVIDIA's: an expired cached token would only be refused.
            if expires - timedelta(seconds=10) <= datetime.now(UTC):
                return None
        logger.info("using the cached worker token", extra={"path": str(self._cache_path)})
        return token

    def _cache_token(self, connection: WorkerConnection) -> None:
        document: dict[str, str] = {"access_token": connection.token}
        if connection.expiration is not None:
            document["expiry"] = connection.expiration.isoformat().replace("+00:00", "Z")
        path: Path = self._cache_path
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(orjson.dumps(document))
            os.replace(temporary, path)
        except OSError as error:
            logger.warning(
                "could not cache the worker token",
                extra={"path": str(path), "error": str(error)},
            )
            temporary.unlink(missing_ok=True)
