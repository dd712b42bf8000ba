"""The presigned-URL object store over a real nats-server and a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import resource
import socket
import time
import tracemalloc
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web
from nats.js import JetStreamContext
from nats.js.api import StorageType

from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.errors import InvalidObjectName, InvalidSignature
from nvcf_platform.objects.object_routes import ObjectEndpoints
from nvcf_platform.objects.objects import OBJECTS_PREFIX, Bucket, ObjectStore
from nvcf_platform.objects.presign import URL_LIFETIME_SECONDS, UrlSigner

pytestmark = pytest.mark.nats

NCA_ID = "test-nca"
REQUEST_ID = "3f0c9a52-6f8e-4f3e-9a43-0f2b8f5d6c11"
SECRET = b"0123456789abcdef0123456789abcdef"


@dataclass
class Objects:
    """A running object store: the store, its HTTP base URL and a client session."""

    store: ObjectStore
    base_url: str
    session: aiohttp.ClientSession
    js: JetStreamContext


StartObjects = Callable[..., Awaitable[Objects]]


@pytest.fixture
async def start_objects(nats_server: EmbeddedNatsServer) -> AsyncIterator[StartObjects]:
    """Factory: `await start_objects(**ObjectStore options)` -> the store served on a free port."""
    async with contextlib.AsyncExitStack() as stack:
        nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
        stack.push_async_callback(nc.close)
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def start(**options: Any) -> Objects:
            listener = socket.create_server(("127.0.0.1", 0))
            stack.callback(listener.close)
            base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            options.setdefault("storage", StorageType.MEMORY)
            store = ObjectStore(nc, signer=UrlSigner(SECRET), base_url=base_url, **options)
            await store.provision()
            app = web.Application()
            ObjectEndpoints(store).register(app.router)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.SockSite(runner, listener).start()
            return Objects(store, base_url, session, nc.jetstream())

        yield start


@pytest.fixture
async def objects(start_objects: StartObjects) -> Objects:
    return await start_objects()


def with_query(url: str, **changes: str | None) -> str:
    """`url` with query parameters replaced (None removes one)."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def put(objects: Objects, url: str, body: Any, **headers: str) -> tuple[int, bytes]:
    async with objects.session.put(url, data=body, headers=headers) as response:
        return response.status, await response.read()


async def chunk_subjects(objects: Objects) -> dict[str, int]:
    """Messages per chunk subject in the results bucket's stream."""
    info = await objects.js.stream_info("OBJ_nvcf_results", subjects_filter="$O.nvcf_results.C.>")
    return dict(info.state.subjects or {})


async def get(objects: Objects, url: str) -> tuple[int, dict[str, str], bytes]:
    async with objects.session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


# --- URL signing ---------------------------------------------------------------------------------


def test_signer_accepts_its_own_url_until_it_expires() -> None:
    signer = UrlSigner(SECRET)
    url = signer.presign("PUT", "http://h:1/", "/p/a", lifetime=60, now=1000)
    assert url.startswith("http://h:1/p/a?expires=1060&signature=")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    signer.verify("PUT", "/p/a", query, now=1060)
    with pytest.raises(InvalidSignature, match="expired"):
        signer.verify("PUT", "/p/a", query, now=1061)


@pytest.mark.parametrize(
    ("method", "path", "changes"),
    [
        ("GET", "/p/a", {}),
        ("PUT", "/p/b", {}),
        ("PUT", "/p/a", {"expires": "1061"}),
        ("PUT", "/p/a", {"signature": "0" * 64}),
        ("PUT", "/p/a", {"signature": None}),
        ("PUT", "/p/a", {"expires": "soon"}),
    ],
    ids=["method", "key", "expires", "signature", "no-signature", "bad-expires"],
)
def test_signer_rejects_any_change(method: str, path: str, changes: dict[str, str | None]) -> None:
    signer = UrlSigner(SECRET)
    url = with_query(signer.presign("PUT", "http://h", "/p/a", lifetime=60, now=1000), **changes)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    with pytest.raises(InvalidSignature):
        signer.verify(method, path, query, now=1000)


def test_signer_of_another_secret_rejects() -> None:
    url = UrlSigner(SECRET).presign("GET", "http://h", "/p", now=1000)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    with pytest.raises(InvalidSignature):
        UrlSigner(b"another secret, 32 bytes long!!!").verify("GET", "/p", query, now=1000)
    with pytest.raises(ValueError, match="16 bytes"):
        UrlSigner(b"short")


async def test_large_response_urls_sign_one_method_on_the_results_key(objects: Objects) -> None:
    before = time.time()
    upload = objects.store.large_response_upload_url(NCA_ID, REQUEST_ID.upper())
    download = objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
    for url in (upload, download):
        parts = urllib.parse.urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == objects.base_url
        assert parts.path == f"{OBJECTS_PREFIX}results/{NCA_ID}/{REQUEST_ID}"
        expires = int(dict(urllib.parse.parse_qsl(parts.query))["expires"])
        assert before + URL_LIFETIME_SECONDS - 1 <= expires <= time.time() + URL_LIFETIME_SECONDS
    assert upload != download
    with pytest.raises(InvalidObjectName):
        objects.store.large_response_upload_url(NCA_ID, "not-a-uuid")
    with pytest.raises(InvalidObjectName):
        objects.store.large_response_download_url("../etc", REQUEST_ID)


# --- presigned routes ----------------------------------------------------------------------------


async def test_large_response_put_then_get_keeps_bytes_and_content_type(objects: Objects) -> None:
    store = objects.store
    status, _ = await put(
        objects,
        store.large_response_upload_url(NCA_ID, REQUEST_ID),
        b"fake-zip",
        **{"Content-Type": "application/zip"},
    )
    assert status == 200
    status, headers, body = await get(
        objects, store.large_response_download_url(NCA_ID, REQUEST_ID)
    )
    assert (status, body) == (200, b"fake-zip")
    assert headers["Content-Type"] == "application/zip"
    assert headers["Content-Length"] == "8"
    async with objects.session.head(store.large_response_download_url(NCA_ID, REQUEST_ID)) as head:
        assert head.status == 200
        assert head.headers["Content-Length"] == "8"
        assert await head.read() == b""


async def test_second_put_replaces_the_object(objects: Objects) -> None:
    url = objects.store.large_response_upload_url(NCA_ID, REQUEST_ID)
    assert (await put(objects, url, b"first" * 100_000))[0] == 200
    assert (await put(objects, url, b"second", **{"Content-Type": "text/plain"}))[0] == 200
    _, headers, body = await get(
        objects, objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
    )
    assert (headers["Content-Type"], body) == ("text/plain", b"second")


async def test_empty_object_round_trips(objects: Objects) -> None:
    assert (await put(objects, objects.store.large_response_upload_url(NCA_ID, REQUEST_ID), b""))[
        0
    ] == 200
    status, headers, body = await get(
        objects, objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
    )
    assert (status, headers["Content-Length"], body) == (200, "0", b"")
    assert headers["Content-Type"] == "application/octet-stream"


async def test_missing_object_is_404(objects: Objects) -> None:
    status, headers, body = await get(
        objects, objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
    )
    assert status == 404
    assert headers["Content-Type"] == "application/problem+json"
    assert b'"status":404' in body


async def test_bad_signatures_are_403_problems(objects: Objects) -> None:
    store = objects.store
    upload = store.large_response_upload_url(NCA_ID, REQUEST_ID)
    assert (await put(objects, upload, b"zip"))[0] == 200
    download = store.large_response_download_url(NCA_ID, REQUEST_ID)
    other_request = store.large_response_download_url(
        NCA_ID, "b3a1d1f2-0000-4000-8000-000000000000"
    )
    expired = store.signer.presign(
        "GET",
        objects.base_url,
        f"{OBJECTS_PREFIX}results/{NCA_ID}/{REQUEST_ID}",
        now=time.time() - URL_LIFETIME_SECONDS - 1,
    )
    signature = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(download).query))["signature"]
    flipped = ("1" if signature[0] == "0" else "0") + signature[1:]
    bad_gets = [
        with_query(download, signature=flipped),
        with_query(download, expires=str(int(time.time()) + 7200)),
        with_query(download, signature=None),
        download.split("?")[0],
        upload,  # a PUT signature does not read
        expired,
        # another request's signature does not open this object
        download.split("?")[0] + "?" + urllib.parse.urlsplit(other_request).query,
        download.replace(f"/results/{NCA_ID}/", f"/assets/{NCA_ID}/"),
    ]
    for url in bad_gets:
        status, headers, body = await get(objects, url)
        assert status == 403, url
        assert headers["Content-Type"] == "application/problem+json"
        assert b'"status":403' in body
    # A GET signature does not write, and the object is unchanged.
    assert (await put(objects, download, b"overwritten"))[0] == 403
    assert (await put(objects, with_query(upload, signature=flipped), b"overwritten"))[0] == 403
    assert (await get(objects, download))[2] == b"zip"


async def test_put_over_the_limit_is_413_and_stores_nothing(
    start_objects: StartObjects,
) -> None:
    objects = await start_objects(max_object_bytes=1024 * 1024)
    upload = objects.store.large_response_upload_url(NCA_ID, REQUEST_ID)
    status, body = await put(objects, upload, b"x" * (1024 * 1024 + 1))  # declared length
    assert status == 413
    assert b'"status":413' in body

    async def chunked() -> AsyncIterator[bytes]:  # no length: found out while storing
        for _ in range(4):
            yield b"y" * (300 * 1024)

    assert (await put(objects, upload, chunked()))[0] == 413
    download = objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
    assert (await get(objects, download))[0] == 404
    assert await chunk_subjects(objects) == {}  # the chunks stored before the limit are purged
    assert (await put(objects, upload, b"x" * (1024 * 1024)))[0] == 200  # at the limit


async def test_a_body_that_breaks_off_is_dropped_and_the_older_object_stays(
    objects: Objects, caplog: pytest.LogCaptureFixture
) -> None:
    upload = objects.store.large_response_upload_url(NCA_ID, REQUEST_ID)
    assert (await put(objects, upload, b"older" * 100_000))[0] == 200
    kept = await chunk_subjects(objects)
    # A client that declares 4 MiB, sends 1.5 MiB (six chunks' worth) and hangs up.
    url = urllib.parse.urlsplit(upload)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
    writer.write(f"{head}Content-Length: {4 * 1024 * 1024}\r\n\r\n".encode())
    writer.write(b"n" * (1536 * 1024))
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader
    async with asyncio.timeout(10):
        # The handler runs in this process but answers nobody: its log line is the only sign.
        while "object upload broke off" not in caplog.text:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert await chunk_subjects(objects) == kept
    download = objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
    assert (await get(objects, download))[2] == b"older" * 100_000


async def test_buckets_have_their_ttls_and_provisioning_is_idempotent(
    objects: Objects, nats_server: EmbeddedNatsServer
) -> None:
    await objects.store.provision()
    nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        assets = await js.stream_info("OBJ_nvcf_assets")
        results = await js.stream_info("OBJ_nvcf_results")
    finally:
        await nc.close()
    assert assets.config.max_age == 24 * 3600
    assert results.config.max_age == 3600
    assert assets.config.storage == StorageType.MEMORY


async def test_200_mb_round_trip_is_byte_identical_with_bounded_memory(
    start_objects: StartObjects,
) -> None:
    objects = await start_objects(storage=StorageType.FILE)
    size, block = 200 * 1024 * 1024, 1024 * 1024
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        rng = random.Random(20240501)
        for _ in range(size // block):
            data = rng.randbytes(block)
            sent.update(data)
            yield data

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        upload = objects.store.large_response_upload_url(NCA_ID, REQUEST_ID)
        assert (await put(objects, upload, body(), **{"Content-Type": "application/zip"}))[0] == 200
        received, length = hashlib.sha256(), 0
        download = objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
        async with objects.session.get(download) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(size)
            assert response.headers["Content-Type"] == "application/zip"
            async for chunk in response.content.iter_chunked(block):
                received.update(chunk)
                length += len(chunk)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert length == size
    assert received.hexdigest() == sent.hexdigest()
    assert traced_peak < 32 * 1024 * 1024, traced_peak
    assert rss_growth < 64 * 1024 * 1024, rss_growth


async def test_bucket_names_are_configurable(start_objects: StartObjects) -> None:
    objects = await start_objects(
        bucket_names={Bucket.ASSETS: "a_assets", Bucket.RESULTS: "a_results"}
    )
    url = objects.store.large_response_upload_url(NCA_ID, REQUEST_ID)
    assert (await put(objects, url, b"data"))[0] == 200
    stored = await objects.store.stat(Bucket.RESULTS, f"{NCA_ID}/{REQUEST_ID}")
    assert (stored.size, stored.pending) == (4, False)


@pytest.mark.parametrize("size", [100, 600 * 1024], ids=["one-chunk", "three-chunks"])
async def test_a_corrupted_object_never_downloads_whole(
    objects: Objects, nats_server: EmbeddedNatsServer, size: int
) -> None:
    upload = objects.store.large_response_upload_url(NCA_ID, REQUEST_ID)
    assert (await put(objects, upload, b"z" * size))[0] == 200
    # Rewrite the object's meta record with another digest, as a damaged store would hold it.
    name = f"{NCA_ID}/{REQUEST_ID}"
    nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await (await js.object_store("nvcf_results")).get_info(name)
        info.digest = (
            "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(b"other").digest()).decode()
        )
        meta_subject = "$O.nvcf_results.M." + base64.urlsafe_b64encode(name.encode()).decode()
        await js.publish(
            meta_subject, json.dumps(info.as_dict()).encode(), headers={"Nats-Rollup": "sub"}
        )
    finally:
        await nc.close()
    download = objects.store.large_response_download_url(NCA_ID, REQUEST_ID)
    async with objects.session.get(download) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
