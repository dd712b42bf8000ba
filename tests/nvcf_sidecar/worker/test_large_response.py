"""Shipping large responses: the zip's contents, the PUT and its retries, URL refreshes, spool
cleanup, and bounded memory for a body of hundreds of MB, against a real loopback HTTP sink."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import resource
import time
import tracemalloc
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
import grpc
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.protocol import URL_FRESHNESS_SECONDS, WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.api_client import ApiCallFailed
from nvcf_sidecar.worker.artifacts import Artifact, scan_artifacts
from nvcf_sidecar.worker.large import LargeResponseFailed, LargeResponseShipper
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.request import RequestLog

REQUEST_ID = "5b0c6f4e-1111-4222-8333-444455556666"
NCA_ID = "caller-nca"
WAIT = 20.0  # bound on every wait for the sink


@dataclass
class Upload:
    """One PUT as the sink received it (the body went to `file`, hashed on the way)."""

    target: str
    headers: CIMultiDictProxy[str]
    file: Path
    size: int
    sha256: str
    spool_files: list[str]
    """The spool directory's listing when the PUT arrived."""


@dataclass
class Sink:
    """A presigned-URL PUT endpoint on a loopback port: stores each upload on disk."""

    directory: Path
    spool_dir: Path | None = None
    statuses: list[int] = field(default_factory=list)
    """Status of each answer in turn (200 once used up)."""
    block_after: int | None = None
    """Stop reading a body after this many bytes until `release` is set."""
    answer: bool = True
    """False: read the body, then never answer (until `release`)."""
    refuse_unread: list[int] = field(default_factory=list)
    """Statuses to answer at once, without reading the body (as S3 does for a bad signature)."""
    uploads: list[Upload] = field(default_factory=list)
    """Complete uploads, in arrival order."""
    broken: int = 0
    """Uploads whose body broke off."""
    broke: asyncio.Event = field(default_factory=asyncio.Event)
    blocked: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Sink:
        app = web.Application(client_max_size=0)
        app.router.add_put("/{key:.*}", self._put)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release.set()
        await self._runner.cleanup()

    def url(self, key: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{key}?X-Amz-Signature=abc"

    async def _put(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_unread:
            self.uploads.append(Upload(request.path_qs, request.headers, Path(), 0, "", []))
            return web.Response(status=self.refuse_unread.pop(0), text="<Error/>")
        spool_files = sorted(os.listdir(self.spool_dir)) if self.spool_dir else []
        target = self.directory / f"upload-{len(self.uploads)}.zip"
        digest = hashlib.sha256()
        size = 0
        try:
            with target.open("wb") as file:
                async for chunk in request.content.iter_chunked(1 << 20):
                    file.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if self.block_after is not None and size >= self.block_after:
                        self.blocked.set()
                        await self.release.wait()
        except (ConnectionError, aiohttp.ClientPayloadError):
            self.broken += 1  # the sender broke the upload off
            self.broke.set()
            raise
        self.uploads.append(
            Upload(request.path_qs, request.headers, target, size, digest.hexdigest(), spool_files)
        )
        if not self.answer:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        text = "" if status < 300 else f"<Error><Code>Status{status}</Code></Error>"
        return web.Response(status=status, text=text)


class FakeUrls:
    """The two gRPC calls, as plain logic: fixed answers, recorded calls, optional failures."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.refreshes: list[str] = []
        self.downloads: list[tuple[str, str]] = []
        self.uploads_when_download_asked: int | None = None
        self.refresh_error: Exception | None = None
        self.download_error: Exception | None = None
        self.fail_download_when_blocked = False

    async def refresh_large_upload_url(self, request_id: str) -> str:
        self.refreshes.append(request_id)
        if self.refresh_error is not None:
            raise self.refresh_error
        return self._sink.url(f"refreshed-{len(self.refreshes)}")

    async def large_response_download_url(self, request_id: str, nca_id: str) -> str:
        self.downloads.append((request_id, nca_id))
        self.uploads_when_download_asked = len(self._sink.uploads)
        if self.fail_download_when_blocked:
            await asyncio.wait_for(self._sink.blocked.wait(), WAIT)
        if self.download_error is not None:
            raise self.download_error
        return f"https://results.example/{nca_id}/{request_id}?sig=xyz"


@pytest.fixture
def log() -> RequestLog:
    return RequestLog(logging.getLogger("test.large"), REQUEST_ID)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


@pytest.fixture
async def sink(tmp_path: Path, spool_dir: Path) -> AsyncIterator[Sink]:
    directory = tmp_path / "sink"
    directory.mkdir()
    async with Sink(directory, spool_dir) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    ) as client:
        yield client


def work_item(url: str, *, age: float = 5.0, with_time: bool = True) -> WorkerInvokeFunctionRequest:
    request = WorkerInvokeFunctionRequest(
        requestId=REQUEST_ID,
        ncaId=NCA_ID,
        largeResponseUrl=url,
        maxDirectResponseSizeBytes=5 * 1024 * 1024,
    )
    if with_time:
        request.requestTime.FromNanoseconds(int((time.time() - age) * 1e9))
    return request


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def pattern(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


def counted(metrics: WorkerMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def refused(metrics: WorkerMetrics, reason: str) -> float:
    return counted(metrics, "nvcf_worker_artifacts_refused_total", {"reason": reason})


def entries(upload: Upload) -> dict[str, bytes]:
    with zipfile.ZipFile(upload.file) as archive:
        assert archive.testzip() is None  # every CRC matches
        return {name: archive.read(name) for name in archive.namelist()}


def names(upload: Upload) -> list[str]:
    with zipfile.ZipFile(upload.file) as archive:
        return archive.namelist()


def shipper(
    session: aiohttp.ClientSession,
    urls: FakeUrls,
    metrics: WorkerMetrics,
    spool_dir: Path,
    *,
    max_attempts: int = 4,
    stall_timeout: float = 30.0,
) -> LargeResponseShipper:
    return LargeResponseShipper(
        session,
        urls,
        metrics,
        spool_dir=spool_dir,
        max_attempts=max_attempts,
        initial_backoff=0.01,
        stall_timeout=stall_timeout,
    )


def scan(directory: Path, log: RequestLog, metrics: WorkerMetrics) -> list[Artifact]:
    return scan_artifacts(directory, log=log, metrics=metrics)


async def test_a_body_only_response_ships_as_one_entry_and_returns_the_download_url(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    metrics = WorkerMetrics()
    urls = FakeUrls(sink)
    body = pattern(6 * 1024 * 1024 + 7)

    location = await shipper(session, urls, metrics, spool_dir).ship(
        work_item(sink.url("nca/req")), chunks(body), [], log=log
    )

    assert location == f"https://results.example/{NCA_ID}/{REQUEST_ID}?sig=xyz"
    assert urls.downloads == [(REQUEST_ID, NCA_ID)]
    assert urls.uploads_when_download_asked == 0  # asked while the upload was still to come
    assert urls.refreshes == []
    [upload] = sink.uploads
    assert upload.target == "/nca/req?X-Amz-Signature=abc"
    assert upload.headers["Content-Type"] == "application/zip"
    assert int(upload.headers["Content-Length"]) == upload.size == upload.file.stat().st_size
    assert "Transfer-Encoding" not in upload.headers
    assert "Authorization" not in upload.headers
    assert entries(upload) == {f"{REQUEST_ID}.response": body}
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "uploaded"}) == 1
    assert counted(metrics, "nvcf_worker_large_response_bytes_total") == upload.size
    assert len(upload.spool_files) == 1  # spooled while uploading
    assert os.listdir(spool_dir) == []  # and removed afterwards


async def test_artifacts_only_ship_after_an_empty_response_entry_in_sorted_order(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog, tmp_path: Path
) -> None:
    metrics = WorkerMetrics()
    out = tmp_path / REQUEST_ID
    files = {
        "z.bin": pattern(3000, 2),
        "a/b/c.txt": b"deep",
        "a/readme.md": b"# hi",
        "images/0.png": pattern(70_000, 3),
        "empty.dat": b"",
    }
    for relative, data in files.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(data)
    artifacts = await asyncio.to_thread(scan, out, log, metrics)

    await shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
        work_item(sink.url("k")), chunks(b""), artifacts, log=log
    )

    [upload] = sink.uploads
    assert names(upload) == [
        f"{REQUEST_ID}.response",
        "a/b/c.txt",
        "a/readme.md",
        "empty.dat",
        "images/0.png",
        "z.bin",
    ]
    assert entries(upload) == {f"{REQUEST_ID}.response": b"", **files}


async def test_body_and_artifacts_ship_while_unsafe_files_never_do(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog, tmp_path: Path
) -> None:
    metrics = WorkerMetrics()
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"TOP-SECRET-CONTENT")
    out = tmp_path / REQUEST_ID
    (out / "nested" / "deeper").mkdir(parents=True)
    (out / "empty-dir").mkdir()
    (out / "result.json").write_bytes(b'{"ok": true}')
    (out / "nested" / "deeper" / "tensor.bin").write_bytes(pattern(123_457, 4))
    (out / "progress").write_bytes(b'{"id": "x", "progress": 99}')
    (out / "video.mp4.partial").write_bytes(b"half written")
    (out / "link-to-secret").symlink_to(secret)
    (out / "link-to-dir").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(out / "pipe")
    artifacts = await asyncio.to_thread(scan, out, log, metrics)
    body = pattern(5 * 1024 * 1024 + 1, 5)

    await shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
        work_item(sink.url("k")), chunks(body), artifacts, log=log
    )

    [upload] = sink.uploads
    assert names(upload) == [f"{REQUEST_ID}.response", "nested/deeper/tensor.bin", "result.json"]
    contents = entries(upload)
    assert contents[f"{REQUEST_ID}.response"] == body
    assert contents["nested/deeper/tensor.bin"] == pattern(123_457, 4)
    assert b"TOP-SECRET-CONTENT" not in upload.file.read_bytes()
    assert (refused(metrics, "partial"), refused(metrics, "symlink")) == (1, 2)
    assert refused(metrics, "special") == 1


async def test_a_file_swapped_for_a_symlink_after_the_scan_is_left_out_not_followed(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog, tmp_path: Path
) -> None:
    metrics = WorkerMetrics()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET-CONTENT")
    out = tmp_path / REQUEST_ID
    out.mkdir()
    (out / "keep.txt").write_bytes(b"keep")
    (out / "swap.txt").write_bytes(b"innocent")
    artifacts = await asyncio.to_thread(scan, out, log, metrics)
    (out / "swap.txt").unlink()
    (out / "swap.txt").symlink_to(secret)

    await shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
        work_item(sink.url("k")), chunks(b"body"), artifacts, log=log
    )

    [upload] = sink.uploads
    assert names(upload) == [f"{REQUEST_ID}.response", "keep.txt"]
    assert b"TOP-SECRET-CONTENT" not in upload.file.read_bytes()
    assert refused(metrics, "symlink") == 1


async def test_an_output_file_that_changes_while_shipping_fails_instead_of_tearing(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog, tmp_path: Path
) -> None:
    metrics = WorkerMetrics()
    out = tmp_path / REQUEST_ID
    out.mkdir()
    (out / "grows.log").write_bytes(b"line 1\n")
    artifacts = await asyncio.to_thread(scan, out, log, metrics)
    sink.block_after = 1024 * 1024  # the body entry (48 MiB) is far from done when it blocks
    task = asyncio.create_task(
        shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
            work_item(sink.url("k")), chunks(pattern(48 * 1024 * 1024)), artifacts, log=log
        )
    )
    await asyncio.wait_for(sink.blocked.wait(), WAIT)
    with (out / "grows.log").open("ab") as file:
        file.write(b"line 2\n")
    sink.release.set()

    with pytest.raises(LargeResponseFailed, match=r"'grows\.log' changed while shipping"):
        await asyncio.wait_for(task, WAIT)
    await asyncio.wait_for(sink.broke.wait(), WAIT)  # it drains what was buffered first
    assert (sink.uploads, sink.broken) == ([], 1)  # the one attempt broke off, not retried
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "failed"}) == 1
    assert os.listdir(spool_dir) == []


async def test_a_500_is_retried_and_the_whole_zip_sent_again(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    metrics = WorkerMetrics()
    urls = FakeUrls(sink)
    sink.statuses = [500]
    body = pattern(2 * 1024 * 1024, 6)

    await shipper(session, urls, metrics, spool_dir).ship(
        work_item(sink.url("k")), chunks(body), [], log=log
    )

    first, second = sink.uploads
    assert first.target == second.target == "/k?X-Amz-Signature=abc"
    # The same entries at the same length. Not the same bytes: zipstream stamps each entry with
    # the time it is written, and a retry can fall in the next two-second step of a zip's clock.
    assert first.size == second.size
    assert entries(first) == entries(second) == {f"{REQUEST_ID}.response": body}
    assert urls.refreshes == []
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "uploaded"}) == 1


async def test_a_400_refreshes_the_url_and_the_next_attempt_uses_the_new_one(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    urls = FakeUrls(sink)
    sink.statuses = [400]

    await shipper(session, urls, WorkerMetrics(), spool_dir).ship(
        work_item(sink.url("expired")), chunks(b"x" * 1000), [], log=log
    )

    assert urls.refreshes == [REQUEST_ID]
    assert [upload.target for upload in sink.uploads] == [
        "/expired?X-Amz-Signature=abc",
        "/refreshed-1?X-Amz-Signature=abc",
    ]


async def test_a_400_answered_before_the_body_was_read_also_refreshes_the_url(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    urls = FakeUrls(sink)
    sink.refuse_unread = [400]
    body = pattern(16 * 1024 * 1024, 7)

    await asyncio.wait_for(
        shipper(session, urls, WorkerMetrics(), spool_dir).ship(
            work_item(sink.url("expired")), chunks(body), [], log=log
        ),
        WAIT,
    )

    assert urls.refreshes == [REQUEST_ID]
    assert [upload.target for upload in sink.uploads] == [
        "/expired?X-Amz-Signature=abc",
        "/refreshed-1?X-Amz-Signature=abc",
    ]
    assert entries(sink.uploads[1]) == {f"{REQUEST_ID}.response": body}


@pytest.mark.parametrize(
    ("url", "age", "with_time"),
    [
        ("", 5.0, True),
        ("old", URL_FRESHNESS_SECONDS + 60.0, True),
        ("timeless", 0.0, False),
    ],
    ids=["empty-url", "old-request-time", "no-request-time"],
)
async def test_an_unusable_url_is_refreshed_before_the_first_attempt(
    sink: Sink,
    session: aiohttp.ClientSession,
    spool_dir: Path,
    log: RequestLog,
    url: str,
    age: float,
    with_time: bool,
) -> None:
    urls = FakeUrls(sink)
    request = work_item(sink.url(url) if url else "", age=age, with_time=with_time)

    await shipper(session, urls, WorkerMetrics(), spool_dir).ship(
        request, chunks(b"y" * 100), [], log=log
    )

    assert urls.refreshes == [REQUEST_ID]
    assert [upload.target for upload in sink.uploads] == ["/refreshed-1?X-Amz-Signature=abc"]


async def test_a_fresh_url_is_used_as_is(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    urls = FakeUrls(sink)
    request = work_item(sink.url("fresh"), age=URL_FRESHNESS_SECONDS - 60.0)
    await shipper(session, urls, WorkerMetrics(), spool_dir).ship(
        request, chunks(b"z"), [], log=log
    )
    assert urls.refreshes == []
    assert [upload.target for upload in sink.uploads] == ["/fresh?X-Amz-Signature=abc"]


async def test_exhausted_retries_fail_counted_and_leave_no_spool(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    metrics = WorkerMetrics()
    sink.statuses = [503] * 10

    with pytest.raises(LargeResponseFailed) as caught:
        await shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
            work_item(sink.url("k")), chunks(b"w" * 5000), [], log=log
        )

    assert "after 4 attempts" in str(caught.value)
    assert "answered 503: <Error><Code>Status503" in str(caught.value)
    assert len(sink.uploads) == 4  # the first try and 3 retries, like NVIDIA
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "failed"}) == 1
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "uploaded"}) == 0
    assert counted(metrics, "nvcf_worker_large_response_bytes_total") == 0
    assert os.listdir(spool_dir) == []


async def test_an_unreachable_store_fails_with_the_connection_error(
    session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog, tmp_path: Path
) -> None:
    async with Sink(tmp_path) as sink:
        urls = FakeUrls(sink)
    dead = f"http://{LOOPBACK}:{free_port()}/k"

    with pytest.raises(LargeResponseFailed, match=r"after 2 attempts.*Connect"):
        await shipper(session, urls, WorkerMetrics(), spool_dir, max_attempts=2).ship(
            work_item(dead), chunks(b"v"), [], log=log
        )
    assert os.listdir(spool_dir) == []


async def test_an_upload_without_progress_fails_after_the_stall_timeout(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    sink.answer = False

    with pytest.raises(LargeResponseFailed, match=r"after 2 attempts; last: no progress for 0.5 s"):
        await shipper(
            session, FakeUrls(sink), WorkerMetrics(), spool_dir, max_attempts=2, stall_timeout=0.5
        ).ship(work_item(sink.url("k")), chunks(b"u" * 100), [], log=log)
    assert len(sink.uploads) == 2


async def test_a_failed_download_url_fails_the_response_and_stops_the_upload(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    metrics = WorkerMetrics()
    urls = FakeUrls(sink)
    urls.download_error = ApiCallFailed(
        "RequestLargeResponseDownloadCredentials", grpc.StatusCode.UNAVAILABLE, "api down"
    )
    urls.fail_download_when_blocked = True
    sink.block_after = 1024 * 1024  # the upload hangs: only the API failure can end it

    with pytest.raises(LargeResponseFailed) as caught:
        await asyncio.wait_for(
            shipper(session, urls, metrics, spool_dir).ship(
                work_item(sink.url("k")), chunks(pattern(4 * 1024 * 1024)), [], log=log
            ),
            WAIT,
        )

    assert "RequestLargeResponseDownloadCredentials" in str(caught.value)
    assert "api down" in str(caught.value)
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "failed"}) == 1
    assert os.listdir(spool_dir) == []


async def test_a_failed_refresh_fails_the_response(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    urls = FakeUrls(sink)
    urls.refresh_error = ApiCallFailed(
        "RefreshLargeUploadCredentials", grpc.StatusCode.NOT_FOUND, "no such request"
    )
    with pytest.raises(
        LargeResponseFailed, match=r"RefreshLargeUploadCredentials.*no such request"
    ):
        await shipper(session, urls, WorkerMetrics(), spool_dir).ship(
            work_item(""), chunks(b"t"), [], log=log
        )
    assert sink.uploads == []
    assert os.listdir(spool_dir) == []


async def test_a_body_that_breaks_off_fails_before_any_upload(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    metrics = WorkerMetrics()

    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * 3000
        raise aiohttp.ClientPayloadError("Response payload is not completed")

    with pytest.raises(LargeResponseFailed, match="broke off after 3000 bytes"):
        await shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
            work_item(sink.url("k")), broken(), [], log=log
        )
    assert sink.uploads == []
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "failed"}) == 1
    assert os.listdir(spool_dir) == []


async def test_cancelling_a_shipment_removes_the_spool_file(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog
) -> None:
    metrics = WorkerMetrics()
    sink.block_after = 1024 * 1024
    task = asyncio.create_task(
        shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
            work_item(sink.url("k")), chunks(pattern(8 * 1024 * 1024)), [], log=log
        )
    )
    await asyncio.wait_for(sink.blocked.wait(), WAIT)
    assert len(os.listdir(spool_dir)) == 1  # the upload is under way from the spool

    task.cancel()
    await asyncio.wait({task}, timeout=WAIT)

    assert task.cancelled()
    assert os.listdir(spool_dir) == []
    assert counted(metrics, "nvcf_worker_large_responses_total", {"result": "failed"}) == 0


async def lazy_body(total: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """`total` bytes in 1 MiB chunks, each one different, hashed as they are produced."""
    block = os.urandom(1024 * 1024)
    sent = index = 0
    while sent < total:
        size = min(len(block), total - sent)
        chunk = (index.to_bytes(8, "big") + block[8:size])[:size]
        digest.update(chunk)
        yield chunk
        sent += size
        index += 1


def entry_sha256(path: Path, name: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive, archive.open(name) as entry:  # CRC checked at the end
        for block in iter(lambda: entry.read(1024 * 1024), b""):
            digest.update(block)
        return digest.hexdigest(), archive.getinfo(name).file_size


async def test_a_300_mb_body_arrives_byte_identical_with_bounded_memory(
    sink: Sink, session: aiohttp.ClientSession, spool_dir: Path, log: RequestLog, tmp_path: Path
) -> None:
    total = 300 * 1024 * 1024 + 12345
    out = tmp_path / REQUEST_ID
    out.mkdir()
    (out / "extra.bin").write_bytes(pattern(3 * 1024 * 1024, 9))
    metrics = WorkerMetrics()
    artifacts = await asyncio.to_thread(scan, out, log, metrics)
    sent = hashlib.sha256()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        await asyncio.wait_for(
            shipper(session, FakeUrls(sink), metrics, spool_dir).ship(
                work_item(sink.url("big")), lazy_body(total, sent), artifacts, log=log
            ),
            80,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before

    [upload] = sink.uploads
    assert int(upload.headers["Content-Length"]) == upload.size
    try:
        assert await asyncio.to_thread(entry_sha256, upload.file, f"{REQUEST_ID}.response") == (
            sent.hexdigest(),
            total,
        )
        assert await asyncio.to_thread(entry_sha256, upload.file, "extra.bin") == (
            hashlib.sha256(pattern(3 * 1024 * 1024, 9)).hexdigest(),
            3 * 1024 * 1024,
        )
    finally:
        upload.file.unlink()
    assert peak < 48 * 1024 * 1024, f"peak of traced allocations: {peak / 2**20:.1f} MiB"
    assert rss_growth < 100 * 1024 * 1024, f"peak RSS grew by {rss_growth / 2**20:.1f} MiB"
    assert counted(metrics, "nvcf_worker_large_response_bytes_total") == upload.size > total
    assert os.listdir(spool_dir) == []
