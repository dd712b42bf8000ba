"""Large responses: the response body and output files as one zip, PUT to a presigned URL (§8).

`LargeResponseShipper.ship` spools the body to disk, streams the zip into one HTTP PUT with a
known Content-Length (retried, the URL refreshed when stale or refused), and returns the
download URL the request answers with a 302. The files on disk and the zip over them are
`archive.py`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import aiohttp

from nvcf_sidecar.protocol import URL_FRESHNESS_SECONDS, WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.api_client import ExponentialBackoff
from nvcf_sidecar.worker.archive import Archive, Chunks, LargeResponseFailed, next_batch
from nvcf_sidecar.worker.artifacts import Artifact
from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = [
    "RESPONSE_ENTRY_SUFFIX",
    "STALL_TIMEOUT_SECONDS",
    "ZIP_CONTENT_TYPE",
    "LargeResponseFailed",  # defined in archive.py, which raises it too and cannot import us
    "LargeResponseShipper",
    "UploadUrls",
]

ZIP_CONTENT_TYPE: Final = "application/zip"
RESPONSE_ENTRY_SUFFIX: Final = ".response"
"""The body is the zip's first entry, `<reqid>.response`."""
STALL_TIMEOUT_SECONDS: Final = 300.0
"""An upload attempt that moves no byte (or waits for its answer) this long has failed."""

_SPOOL_WRITE_BYTES: Final = 1024 * 1024
_ERROR_BODY_LIMIT: Final = 1024

_T = TypeVar("_T")


class UploadUrls(Protocol):
    """The two API calls a large response needs (`WorkerApiClient` implements both)."""

    async def refresh_large_upload_url(self, request_id: str) -> str:
        """RefreshLargeUploadCredentials: a fresh presigned PUT URL."""
        ...

    async def large_response_download_url(self, request_id: str, nca_id: str) -> str:
        """RequestLargeResponseDownloadCredentials: the URL the caller is redirected to."""
        ...


@dataclass(frozen=True)
class _Attempt:
    """How one PUT ended."""

    status: int | None
    detail: str

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class LargeResponseShipper:
    """Ships large responses: spool, zip, PUT with retries, download URL (one per sidecar).

    Memory stays bounded whatever the sizes: the body is spooled to a temporary file (in
    `spool_dir`, else tempfile's default directory) and the zip is read from disk in 1 MiB
    batches by one worker thread per shipment. Up to `max_attempts` PUTs are made, waiting
    `initial_backoff` seconds (x1.5, +-50 % jitter) between them; an attempt that moves nothing
    for `stall_timeout` seconds fails.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: UploadUrls,
        metrics: WorkerMetrics,
        *,
        spool_dir: Path | None = None,
        max_attempts: int = 4,
        initial_backoff: float = 0.1,
        stall_timeout: float = STALL_TIMEOUT_SECONDS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts}: at least one attempt is needed")
        self._session = session
        self._urls = urls
        self._metrics = metrics
        self._spool_dir = spool_dir
        self._max_attempts = max_attempts
        self._initial_backoff = initial_backoff
        self._stall_timeout = stall_timeout

    async def ship(
        self,
        request: WorkerInvokeFunctionRequest,
        body: AsyncIterable[bytes],
        artifacts: Sequence[Artifact],
        *,
        log: logging.LoggerAdapter[Any],
    ) -> str:
        """Upload `<reqid>.response` (= `body`) and `artifacts` as a zip; return the download URL.

        The download URL is requested from the API while the upload runs. Raises
        `LargeResponseFailed` (logged, counted) when the body breaks off, the spool fails, an
        output file changes while it is read, the upload fails after all attempts, or an API call
        fails. The spool file is removed in every outcome, cancellation included.
        """
        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                download = group.create_task(self._download_url(request))
                zip_bytes = await self._upload(request, body, artifacts, log)
        except* LargeResponseFailed as failures:
            failure = _first_failure(failures)
            self._metrics.large_responses.labels("failed").inc()
            log.error("large response not shipped: %s", failure)
            raise failure from failure.__cause__
        self._metrics.large_responses.labels("uploaded").inc()
        log.info(
            "large response uploaded",
            extra={
                "zip_bytes": zip_bytes,
                "artifacts": len(artifacts),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return download.result()

    async def _download_url(self, request: WorkerInvokeFunctionRequest) -> str:
        call = self._urls.large_response_download_url(request.requestId, request.ncaId)
        return await _ask_api("download URL", "RequestLargeResponseDownloadCredentials", call)

    async def _refresh(
        self, request: WorkerInvokeFunctionRequest, why: str, log: logging.LoggerAdapter[Any]
    ) -> str:
        log.info("refreshing the large-response upload URL: %s", why)
        call = self._urls.refresh_large_upload_url(request.requestId)
        return await _ask_api(f"fresh upload URL ({why})", "RefreshLargeUploadCredentials", call)

    async def _upload(
        self,
        request: WorkerInvokeFunctionRequest,
        body: AsyncIterable[bytes],
        artifacts: Sequence[Artifact],
        log: logging.LoggerAdapter[Any],
    ) -> int:
        """Spool, check the files, PUT with retries; return the zip's size."""
        body_name = f"{request.requestId}{RESPONSE_ENTRY_SUFFIX}"
        archive = Archive(body_name, self._spool_dir, log, self._metrics)
        io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvcf-large-response")
        try:
            await self._spool(body, archive, io)
            await _in_thread(io, archive.check, artifacts)
            url = request.largeResponseUrl
            stale = _stale_url(request, time.time())
            if stale is not None:
                url = await self._refresh(request, stale, log)
            return await self._put_with_retries(request, url, archive, io, log)
        finally:
            # Queued behind any read still running in the thread, and shielded: even a second
            # cancellation cannot stop the spool file from being removed.
            try:
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(io, archive.remove))
            finally:
                io.shutdown(wait=False)

    async def _spool(
        self, body: AsyncIterable[bytes], archive: Archive, io: ThreadPoolExecutor
    ) -> None:
        pending: list[bytes] = []
        pending_bytes = received = 0
        chunks = aiter(body)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception as error:
                raise LargeResponseFailed(
                    f"the container's response body broke off after {received} bytes: "
                    f"{type(error).__name__}: {error}"
                ) from error
            received += len(chunk)
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= _SPOOL_WRITE_BYTES:
                await _in_thread(io, archive.append, pending)
                pending, pending_bytes = [], 0
        if pending:
            await _in_thread(io, archive.append, pending)

    async def _put_with_retries(
        self,
        request: WorkerInvokeFunctionRequest,
        url: str,
        archive: Archive,
        io: ThreadPoolExecutor,
        log: logging.LoggerAdapter[Any],
    ) -> int:
        backoff = ExponentialBackoff(initial=self._initial_backoff)
        attempt = _Attempt(None, "not tried")
        for number in range(1, self._max_attempts + 1):
            chunks, length = await _in_thread(io, archive.open_zip)
            try:
                attempt = await self._put(url, chunks, length, io)
            finally:
                await _in_thread(io, archive.close_zip)
            if attempt.succeeded:
                self._metrics.large_response_bytes.inc(length)
                return length
            log.warning(
                "large response upload failed: %s",
                attempt.detail,
                extra={"attempt": number, "max_attempts": self._max_attempts},
            )
            if number == self._max_attempts:
                break
            if attempt.status == 400:  # how S3 refuses an expired presigned URL
                url = await self._refresh(request, "the object store answered 400", log)
            await asyncio.sleep(backoff.next_delay() or 0.0)
        raise LargeResponseFailed(
            f"upload of the {length}-byte zip failed after {self._max_attempts} attempts; "
            f"last: {attempt.detail}"
        )

    async def _put(self, url: str, chunks: Chunks, length: int, io: ThreadPoolExecutor) -> _Attempt:
        deadline = asyncio.timeout(self._stall_timeout)
        body = _ZipBody(chunks, io, length, deadline, self._stall_timeout)
        headers = {"Content-Type": ZIP_CONTENT_TYPE, "Content-Length": str(length)}
        try:
            async with deadline:
                try:
                    async with self._session.put(
                        url, data=body, headers=headers, allow_redirects=False
                    ) as response:
                        answer = await response.content.read(_ERROR_BODY_LIMIT)
                        text = answer.decode(errors="replace").strip()
                        detail = f"the object store answered {response.status}"
                        return _Attempt(response.status, f"{detail}: {text}" if text else detail)
                finally:
                    body.stop()
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            if body.error is not None:
                # The zip's source failed: a retry would fail the same way.
                raise body.error from body.error.__cause__
            if deadline.expired():
                return _Attempt(None, f"no progress for {self._stall_timeout:g} s")
            return _Attempt(None, f"{type(error).__name__}: {error}")


class _ZipBody:
    """The zip as an async iterable of chunks for aiohttp; remembers why its source failed."""

    def __init__(
        self,
        chunks: Chunks,
        io: ThreadPoolExecutor,
        length: int,
        deadline: asyncio.Timeout,
        stall_timeout: float,
    ) -> None:
        self._chunks = chunks
        self._io = io
        self._length = length
        self._deadline = deadline
        self._stall_timeout = stall_timeout
        self._active = True
        self.error: LargeResponseFailed | None = None

    def stop(self) -> None:
        """The attempt is over: stop moving its deadline."""
        self._active = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            while batch := await _in_thread(self._io, next_batch, self._chunks):
                for chunk in batch:
                    yield chunk
                    sent += len(chunk)
                    if self._active:
                        self._deadline.reschedule(loop.time() + self._stall_timeout)
            if sent != self._length:
                raise LargeResponseFailed(f"the zip has {sent} bytes, {self._length} announced")
        except LargeResponseFailed as error:
            self.error = error
            raise


async def _in_thread(io: ThreadPoolExecutor, function: Callable[..., _T], *args: Any) -> _T:
    """Run `function(*args)` in the shipment's worker thread (jobs run in submission order)."""
    return await asyncio.get_running_loop().run_in_executor(io, functools.partial(function, *args))


def _stale_url(request: WorkerInvokeFunctionRequest, now: float) -> str | None:
    """Why the work item's upload URL must be refreshed before use, or None if it may be used.

    Like NVIDIA's worker: empty, or the work item is older than URL_FRESHNESS_SECONDS (a
    missing requestTime counts as old).
    """
    if not request.largeResponseUrl:
        return "the work item has no upload URL"
    if not request.HasField("requestTime"):
        return "the work item has no requestTime"
    age = now - (request.requestTime.seconds + request.requestTime.nanos / 1e9)
    if age > URL_FRESHNESS_SECONDS:
        return f"the work item is {age:.0f} s old (more than {URL_FRESHNESS_SECONDS} s)"
    return None


async def _ask_api(what: str, method: str, call: Awaitable[str]) -> str:
    """The URL an API call answers; LargeResponseFailed if it fails or answers none."""
    try:
        url = await call
    except Exception as error:
        raise LargeResponseFailed(f"no {what}: {method} failed: {error}") from error
    if not url:
        raise LargeResponseFailed(f"no {what}: {method} answered an empty URL")
    return url


def _first_failure(group: BaseExceptionGroup[LargeResponseFailed]) -> LargeResponseFailed:
    first = group.exceptions[0]
    return first if isinstance(first, LargeResponseFailed) else _first_failure(first)
