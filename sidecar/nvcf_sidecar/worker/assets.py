"""Input assets: the work item's presigned GETs fetched into `<BASE_ASSET_DIR>/<reqid>` (§5.2 step 3).

Downloads run in parallel and stream to disk; a file appears under its asset id only once complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp

from nvcf_sidecar.protocol import URL_FRESHNESS_SECONDS, WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.directories import create_request_directory
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_worker.headers import is_safe_component

__all__ = [
    "DEFAULT_PARALLEL_DOWNLOADS",
    "PARTIAL_SUFFIX",
    "AssetDownloadFailed",
    "download_assets",
]

PARTIAL_SUFFIX: Final = ".partial"
"""An asset is written to `<assetId>.partial` and renamed to `<assetId>` once complete."""

DEFAULT_PARALLEL_DOWNLOADS: Final = 8
"""Downloads of one request running at once (NVIDIA starts them all; a bound keeps sockets sane)."""

_FILE_MODE: Final = 0o644
"""Readable by the container whatever its user and the sidecar's umask."""
_WRITE_BYTES: Final = 1024 * 1024
"""Received bytes are handed to the disk in batches of about this size (memory per download)."""
_ERROR_BODY_BYTES: Final = 512
"""How much of a refusal's body (an S3 error document, say) is quoted in the error."""
# Exclusive create: a stale `.partial` (even a symlink a container planted on an earlier delivery)
# is unlinked first, and the new file is never opened through a link.
_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL

_T = TypeVar("_T")


class AssetDownloadFailed(WorkerError):
    """An input asset could not be downloaded; `asset_id` says which (None: the directory itself).

    `status` is the object store's HTTP status when it refused the download, else None.
    """

    def __init__(self, asset_id: str | None, reason: str, *, status: int | None = None) -> None:
        self.asset_id = asset_id
        self.reason = reason
        self.status = status
        what = "the asset directory" if asset_id is None else f"input asset {asset_id!r}"
        super().__init__(f"{what}: {reason}")


async def download_assets(
    session: aiohttp.ClientSession,
    request: WorkerInvokeFunctionRequest,
    asset_dir: Path,
    *,
    metrics: WorkerMetrics,
    log: logging.LoggerAdapter[Any],
    parallel: int = DEFAULT_PARALLEL_DOWNLOADS,
) -> list[Path]:
    """Download every `inputAssetReference` of `request` to `<asset_dir>/<assetId>`.

    Returns the files, one per distinct asset id in the order the work item lists them (a
    repeated id is downloaded once, from its first reference). Without assets nothing happens:
    `[]`, and `asset_dir` is not created. Otherwise `asset_dir` is created with mode 0777
    (whatever the umask; a missing base directory too), and up to `parallel` downloads run at
    once, each streamed to `<assetId>.partial` and renamed when complete, so the container never
    sees half a file. `session` must not decompress (the sidecar's transfer session does not),
    so the bytes stored are the bytes the object store sent.

    Raises `AssetDownloadFailed` for an asset id that is not a single safe path component (or
    ends in `.partial`), an answer other than 200, a connection error, a body shorter than its
    Content-Length, or a disk error; the other downloads are then stopped and every `.partial`
    file removed. Completed files and the directory stay: the caller removes the directory
    (`directories.remove_request_directory`). Presigned URLs are used as given, even when the request is older than
    their 30 minutes of validity (NVIDIA refreshes them over a gRPC stream the protocol here
    does not have); an expired URL fails with the store's 403.
    """
    assets = _distinct_assets(request, metrics)
    if not assets:
        return []
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, not {parallel}")
    _warn_if_stale(request, log)
    try:
        create_request_directory(asset_dir)
    except OSError as error:
        raise AssetDownloadFailed(None, f"cannot create {asset_dir}: {error}") from error
    log.info("downloading input assets", extra={"assets": len(assets), "asset_dir": str(asset_dir)})
    started = time.monotonic()
    limit = asyncio.Semaphore(parallel)
    files = [asset_dir / asset_id for asset_id in assets]
    try:
        async with asyncio.TaskGroup() as group:
            for (asset_id, url), target in zip(assets.items(), files, strict=True):
                group.create_task(
                    _download_limited(limit, session, asset_id, url, target, metrics, log)
                )
    except ExceptionGroup as failures:
        raise _first_failure(failures) from None
    log.info(
        "input assets downloaded",
        extra={"assets": len(files), "seconds": round(time.monotonic() - started, 3)},
    )
    return files


def _distinct_assets(
    request: WorkerInvokeFunctionRequest, metrics: WorkerMetrics
) -> dict[str, str]:
    """Asset id -> URL, first reference of each id, in order; raises on an unusable id."""
    assets: dict[str, str] = {}
    for reference in request.inputAssetReference:
        asset_id = reference.assetId
        reason = None
        if not is_safe_component(asset_id):
            reason = (
                "the id must be a single path component of letters, digits, '.', '_' or '-' "
                "(at most 128 characters, not starting with '.')"
            )
        elif asset_id.endswith(PARTIAL_SUFFIX):
            reason = f"the id must not end in {PARTIAL_SUFFIX!r} (kept for incomplete downloads)"
        elif not reference.reference:
            reason = "the work item has no download URL for it"
        if reason is not None:
            metrics.asset_downloads.labels("failure").inc()
            raise AssetDownloadFailed(asset_id, reason)
        assets.setdefault(asset_id, reference.reference)
    return assets


def _warn_if_stale(request: WorkerInvokeFunctionRequest, log: logging.LoggerAdapter[Any]) -> None:
    if not request.HasField("requestTime"):
        return
    age = time.time() - request.requestTime.ToSeconds()
    if age > URL_FRESHNESS_SECONDS:
        log.warning(
            "the request is %d s old; its asset URLs may have expired (no refresh is possible)",
            int(age),
        )


def _first_failure(failures: ExceptionGroup[Exception]) -> Exception:
    """The first AssetDownloadFailed in `failures`; anything else is a bug and re-raised whole."""
    matched, rest = failures.split(AssetDownloadFailed)
    if rest is not None or matched is None:
        raise failures
    first = matched.exceptions[0]
    while isinstance(first, ExceptionGroup):
        first = first.exceptions[0]
    return first


async def _download_limited(
    limit: asyncio.Semaphore,
    session: aiohttp.ClientSession,
    asset_id: str,
    url: str,
    target: Path,
    metrics: WorkerMetrics,
    log: logging.LoggerAdapter[Any],
) -> None:
    async with limit:
        started = time.monotonic()
        try:
            size = await _download(session, asset_id, url, target)
        except AssetDownloadFailed as error:
            metrics.asset_downloads.labels("failure").inc()
            log.error("input asset download failed: %s", error, extra={"asset_id": asset_id})
            raise
    metrics.asset_downloads.labels("success").inc()
    metrics.asset_bytes.inc(size)
    log.debug(
        "input asset downloaded",
        extra={
            "asset_id": asset_id,
            "bytes": size,
            "seconds": round(time.monotonic() - started, 3),
        },
    )


async def _download(session: aiohttp.ClientSession, asset_id: str, url: str, target: Path) -> int:
    """Stream one asset to `<target>.partial`, then rename it to `target`; returns its size.

    Whatever stops it (failure or cancellation) removes the `.partial` file on the way out.
    """
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        size = await _fetch(session, asset_id, url, partial)
        try:
            await _in_thread(os.replace, partial, target)
        except OSError as error:
            raise AssetDownloadFailed(asset_id, f"cannot rename {partial}: {error}") from error
    except BaseException:
        _discard(partial)
        raise
    return size


async def _fetch(session: aiohttp.ClientSession, asset_id: str, url: str, partial: Path) -> int:
    """GET `url` into `partial`; every expected failure becomes AssetDownloadFailed."""
    try:
        async with session.get(url) as response:
            if response.status != 200:
                excerpt = await _error_excerpt(response)
                raise AssetDownloadFailed(
                    asset_id,
                    f"the object store answered {response.status}{excerpt}",
                    status=response.status,
                )
            size = await _save(response, partial)
            expected = response.content_length
            if expected is not None and size != expected and not session.auto_decompress:
                raise AssetDownloadFailed(
                    asset_id, f"got {size} bytes of the {expected} its Content-Length declared"
                )
            return size
    except (aiohttp.ClientError, TimeoutError) as error:
        raise AssetDownloadFailed(
            asset_id, f"download failed: {type(error).__name__}: {error}"
        ) from error
    except OSError as error:
        raise AssetDownloadFailed(asset_id, f"cannot write {partial}: {error}") from error


async def _save(response: aiohttp.ClientResponse, partial: Path) -> int:
    """Write the body to `partial` as it arrives and return its size.

    Received chunks are collected up to about 1 MiB (memory per download) and written in one
    trip to a thread, so a slow disk never stalls the event loop.
    """
    _discard(partial)
    fd = os.open(partial, _OPEN_FLAGS, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)  # the umask must not hide the file from the container
        size = 0
        batch: list[bytes] = []
        batched = 0
        async for chunk in response.content.iter_chunked(_WRITE_BYTES):
            batch.append(chunk)
            batched += len(chunk)
            if batched >= _WRITE_BYTES:
                await _in_thread(_write_all, fd, batch)
                size += batched
                batch, batched = [], 0
        if batch:
            await _in_thread(_write_all, fd, batch)
            size += batched
    finally:
        os.close(fd)
    return size


def _write_all(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


async def _in_thread(call: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking file call in a thread, keeping slow disks off the event loop.

    If the caller is cancelled meanwhile, the call is still waited for before the cancellation
    goes on, so a file descriptor is never closed under a write that is still running.
    """
    future = asyncio.get_running_loop().run_in_executor(None, call, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait({future})
            except asyncio.CancelledError:
                continue
        raise


async def _error_excerpt(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.content.read(_ERROR_BODY_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return f": {text}" if text else ""


def _discard(partial: Path) -> None:
    try:
        os.unlink(partial)
    except FileNotFoundError:
        pass
    except OSError:
        pass  # not a file we can remove (a directory?): creating or renaming over it reports it
