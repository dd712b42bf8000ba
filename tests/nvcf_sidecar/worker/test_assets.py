"""Input assets: parallel streamed downloads from a real HTTP server, files, modes, failures."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.protocol import WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.assets import (
    PARTIAL_SUFFIX,
    AssetDownloadFailed,
    download_assets,
)
from nvcf_sidecar.worker.directories import remove_request_directory
from nvcf_sidecar.worker.metrics import WorkerMetrics

HOLD_LIMIT = 10.0
"""Longest any handler of the asset server holds a response (every wait in a test is bounded)."""

LARGE_BYTES = 50 * 1024 * 1024


class AssetServer:
    """A presigned-URL stand-in: named objects, slow ones, a 404, and bodies that break off.

    `/objects/<name>` serves bytes; `/held/<name>` sends 10 bytes, then holds the rest until
    `release` is set; `/gated/<name>` holds the whole response until `release` is set, counting
    how many are held at once; `/missing` answers 404; `/broken` declares 1000 bytes, sends 100
    and drops the connection.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = 0
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.disconnected = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> AssetServer:
        app = web.Application()
        app.router.add_get("/objects/{name}", self._object)
        app.router.add_get("/held/{name}", self._held)
        app.router.add_get("/gated/{name}", self._gated)
        app.router.add_get("/missing", self._missing)
        app.router.add_get("/broken", self._broken)
        # Handler cancellation on: a held handler learns that the client went away.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, LOOPBACK, port).start()
        self.url = f"http://{LOOPBACK}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1

    async def _object(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(body=self.objects[request.match_info["name"]])

    async def _held(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        response = web.StreamResponse()
        response.content_length = 20
        await response.prepare(request)
        await response.write(b"first-part")
        try:
            await asyncio.wait_for(self.release.wait(), HOLD_LIMIT)
        except asyncio.CancelledError:
            self.disconnected.set()  # the client went away while we held the rest
            raise
        await response.write(b"-the-rest")
        await response.write_eof()
        return response

    async def _gated(self, request: web.Request) -> web.Response:
        self._hit(request)
        async with self.arrived:
            self.started += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrived.notify_all()
        try:
            await asyncio.wait_for(self.release.wait(), HOLD_LIMIT)
        finally:
            self.in_flight -= 1
        return web.Response(body=request.match_info["name"].encode() * 3)

    async def wait_in_flight(self, count: int) -> None:
        async with asyncio.timeout(HOLD_LIMIT):
            async with self.arrived:
                await self.arrived.wait_for(lambda: self.in_flight >= count)

    async def _missing(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(status=404, body=b"<Error><Code>NoSuchKey</Code></Error>")

    async def _broken(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        assert request.transport is not None
        request.transport.close()
        return response


@pytest.fixture
async def server() -> AsyncIterator[AssetServer]:
    async with AssetServer() as asset_server:
        yield asset_server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # Like the sidecar's transfer session: no decompression, no cookies.
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as client:
        yield client


@pytest.fixture
def log() -> logging.LoggerAdapter[Any]:
    return logging.LoggerAdapter(logging.getLogger("test_assets"), {"request_id": "test"})


@pytest.fixture
def umask_077() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def work_item(*assets: tuple[str, str]) -> WorkerInvokeFunctionRequest:
    request = WorkerInvokeFunctionRequest(requestId=str(uuid.uuid4()))
    for asset_id, url in assets:
        request.inputAssetReference.add(
            assetId=asset_id, reference=url, contentType="application/octet-stream"
        )
    return request


def downloads(metrics: WorkerMetrics, result: str) -> float:
    return float(metrics.asset_downloads.labels(result)._value.get())


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


async def test_assets_are_downloaded_in_parallel_to_files_named_by_asset_id(
    server: AssetServer,
    session: aiohttp.ClientSession,
    log: Any,
    tmp_path: Path,
    umask_077: None,
) -> None:
    large = random.Random(7).randbytes(LARGE_BYTES)
    server.objects = {"small": b"hello", "large": large, "empty": b""}
    request = work_item(
        ("a-small", f"{server.url}/objects/small"),
        ("b-slow", f"{server.url}/gated/one"),
        ("c-large", f"{server.url}/objects/large"),
        ("d-slow", f"{server.url}/gated/two"),
        ("e-empty", f"{server.url}/objects/empty"),
    )
    metrics = WorkerMetrics()
    asset_dir = tmp_path / "base" / request.requestId  # the base does not exist yet

    task = asyncio.create_task(
        download_assets(session, request, asset_dir, metrics=metrics, log=log)
    )
    # Both slow assets are requested before either is answered: they overlap, not queue.
    await server.wait_in_flight(2)
    server.release.set()
    files = await asyncio.wait_for(task, HOLD_LIMIT)

    assert files == [
        asset_dir / name for name in ("a-small", "b-slow", "c-large", "d-slow", "e-empty")
    ]
    assert leftovers(asset_dir) == ["a-small", "b-slow", "c-large", "d-slow", "e-empty"]
    assert (asset_dir / "a-small").read_bytes() == b"hello"
    assert (asset_dir / "b-slow").read_bytes() == b"oneoneone"
    assert (asset_dir / "d-slow").read_bytes() == b"twotwotwo"
    assert (asset_dir / "e-empty").read_bytes() == b""
    digest = hashlib.sha256((asset_dir / "c-large").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(large).hexdigest()
    assert server.max_in_flight == 2
    # Modes hold despite a restrictive umask: the container may run as any user.
    assert stat.S_IMODE(asset_dir.stat().st_mode) == 0o777
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert downloads(metrics, "success") == 5
    assert downloads(metrics, "failure") == 0
    assert metrics.asset_bytes._value.get() == 5 + 9 + LARGE_BYTES + 9 + 0


async def test_no_more_than_parallel_downloads_run_at_once(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    request = work_item(*((f"asset-{n}", f"{server.url}/gated/{n}") for n in range(6)))
    task = asyncio.create_task(
        download_assets(
            session, request, tmp_path / "a", metrics=WorkerMetrics(), log=log, parallel=3
        )
    )
    await server.wait_in_flight(3)
    await asyncio.sleep(0.3)  # room for a fourth to arrive if the bound did not hold
    assert server.started == 3
    server.release.set()
    files = await asyncio.wait_for(task, HOLD_LIMIT)
    assert len(files) == 6
    assert server.max_in_flight == 3
    assert server.started == 6


async def test_no_assets_means_no_directory_and_no_request(
    session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    metrics = WorkerMetrics()
    files = await download_assets(session, work_item(), tmp_path / "rq", metrics=metrics, log=log)
    assert files == []
    assert not (tmp_path / "rq").exists()
    assert downloads(metrics, "success") == downloads(metrics, "failure") == 0


async def test_a_repeated_asset_id_is_downloaded_once(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    server.objects = {"x": b"first", "y": b"second"}
    request = work_item(
        ("dup", f"{server.url}/objects/x"),
        ("other", f"{server.url}/objects/y"),
        ("dup", f"{server.url}/objects/y"),
    )
    metrics = WorkerMetrics()
    files = await download_assets(session, request, tmp_path / "rq", metrics=metrics, log=log)
    assert files == [tmp_path / "rq" / "dup", tmp_path / "rq" / "other"]
    assert (tmp_path / "rq" / "dup").read_bytes() == b"first"  # the first reference wins
    assert server.hits == {"/objects/x": 1, "/objects/y": 1}
    assert downloads(metrics, "success") == 2


@pytest.mark.parametrize(
    "asset_id", ["../escape", "a/b", ".hidden", "", "x" * 129, "spaced id", "data.partial"]
)
async def test_an_unusable_asset_id_is_refused_before_anything_is_fetched(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path, asset_id: str
) -> None:
    server.objects = {"x": b"data"}
    request = work_item(("fine", f"{server.url}/objects/x"), (asset_id, f"{server.url}/objects/x"))
    metrics = WorkerMetrics()
    with pytest.raises(AssetDownloadFailed) as raised:
        await download_assets(session, request, tmp_path / "rq", metrics=metrics, log=log)
    assert raised.value.asset_id == asset_id
    assert repr(asset_id) in str(raised.value)
    assert not (tmp_path / "rq").exists()
    assert server.hits == {}
    assert downloads(metrics, "failure") == 1


async def test_a_missing_url_is_refused(
    session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    with pytest.raises(AssetDownloadFailed, match="no download URL"):
        await download_assets(
            session, work_item(("a", "")), tmp_path / "rq", metrics=WorkerMetrics(), log=log
        )


async def test_a_refused_download_fails_all_and_leaves_no_partial_file(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    request = work_item(
        ("held", f"{server.url}/held/h"),
        ("gone", f"{server.url}/missing"),
    )
    metrics = WorkerMetrics()
    asset_dir = tmp_path / "rq"
    with pytest.raises(AssetDownloadFailed) as raised:
        await asyncio.wait_for(
            download_assets(session, request, asset_dir, metrics=metrics, log=log), HOLD_LIMIT
        )
    error = raised.value
    assert error.asset_id == "gone"
    assert error.status == 404
    assert "404" in str(error)
    assert "NoSuchKey" in str(error)
    # The held download was stopped (its connection closed), not waited for.
    assert not server.release.is_set()
    await asyncio.wait_for(server.disconnected.wait(), HOLD_LIMIT)
    assert leftovers(asset_dir) == []
    assert downloads(metrics, "failure") == 1
    assert downloads(metrics, "success") == 0


async def test_a_body_that_breaks_off_fails_and_leaves_no_partial_file(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    server.objects = {"ok": b"complete"}
    request = work_item(("fine", f"{server.url}/objects/ok"), ("cut", f"{server.url}/broken"))
    with pytest.raises(AssetDownloadFailed) as raised:
        await download_assets(session, request, tmp_path / "rq", metrics=WorkerMetrics(), log=log)
    assert raised.value.asset_id == "cut"
    assert raised.value.status is None
    assert not any(name.endswith(PARTIAL_SUFFIX) for name in leftovers(tmp_path / "rq"))
    assert not (tmp_path / "rq" / "cut").exists()


async def test_a_connection_error_fails_with_the_asset_named(
    session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    request = work_item(("nowhere", f"http://{LOOPBACK}:{free_port()}/x"))
    with pytest.raises(AssetDownloadFailed, match="'nowhere'") as raised:
        await download_assets(session, request, tmp_path / "rq", metrics=WorkerMetrics(), log=log)
    assert "ClientConnectorError" in str(raised.value)
    assert leftovers(tmp_path / "rq") == []


async def test_a_directory_that_cannot_be_created_fails_without_an_asset_named(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    (tmp_path / "base").write_text("a file where the base directory should be")
    request = work_item(("a", f"{server.url}/objects/a"))
    with pytest.raises(AssetDownloadFailed, match="asset directory") as raised:
        await download_assets(
            session, request, tmp_path / "base" / "rq", metrics=WorkerMetrics(), log=log
        )
    assert raised.value.asset_id is None
    assert server.hits == {}


async def test_a_disk_error_fails_the_download(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    server.objects = {"a": b"data"}
    asset_dir = tmp_path / "rq"
    (asset_dir / f"a{PARTIAL_SUFFIX}").mkdir(parents=True)  # nothing can be written there
    with pytest.raises(AssetDownloadFailed, match="cannot write") as raised:
        await download_assets(
            session,
            work_item(("a", f"{server.url}/objects/a")),
            asset_dir,
            metrics=WorkerMetrics(),
            log=log,
        )
    assert raised.value.asset_id == "a"
    assert not (asset_dir / "a").exists()


async def test_planted_links_are_replaced_never_followed(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    # An earlier delivery's container could have left links in the directory (it is 0777).
    server.objects = {"a": b"asset", "b": b"other"}
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    asset_dir = tmp_path / "rq"
    asset_dir.mkdir()
    (asset_dir / f"a{PARTIAL_SUFFIX}").symlink_to(outside)
    (asset_dir / "b").symlink_to(outside)
    files = await download_assets(
        session,
        work_item(("a", f"{server.url}/objects/a"), ("b", f"{server.url}/objects/b")),
        asset_dir,
        metrics=WorkerMetrics(),
        log=log,
    )
    assert outside.read_bytes() == b"untouched"
    for path, content in zip(files, (b"asset", b"other"), strict=True):
        assert not path.is_symlink()
        assert path.read_bytes() == content
    assert leftovers(asset_dir) == ["a", "b"]


async def test_cancelling_the_downloads_removes_partial_files(
    server: AssetServer, session: aiohttp.ClientSession, log: Any, tmp_path: Path
) -> None:
    asset_dir = tmp_path / "rq"
    task = asyncio.create_task(
        download_assets(
            session,
            work_item(("held", f"{server.url}/held/h")),
            asset_dir,
            metrics=WorkerMetrics(),
            log=log,
        )
    )
    partial = asset_dir / f"held{PARTIAL_SUFFIX}"
    async with asyncio.timeout(HOLD_LIMIT):
        # The file system offers no event to await; poll until the first bytes are on disk.
        while not partial.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(asset_dir) == []


def test_remove_asset_dir_removes_the_tree_and_tolerates_a_missing_one(
    tmp_path: Path, log: Any
) -> None:
    asset_dir = tmp_path / "rq"
    (asset_dir / "sub").mkdir(parents=True)
    (asset_dir / "sub" / "f").write_bytes(b"x")
    remove_request_directory(asset_dir, log)
    assert not asset_dir.exists()
    remove_request_directory(asset_dir, log)  # already gone: no error
