"""Objects written into the bucket while their bytes arrive: nats-py's format, failures, replacement.

A real nats-server; the store is driven through `ObjectStore.put_stream`, the routes' entry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType

from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.errors import ObjectNotFound, ObjectTooLarge
from nvcf_platform.objects.object_writer import ObjectWriter
from nvcf_platform.objects.objects import CHUNK_BYTES, Bucket, ObjectStore
from nvcf_platform.objects.presign import UrlSigner

pytestmark = pytest.mark.nats

NAME = "test-nca/3f0c9a52-6f8e-4f3e-9a43-0f2b8f5d6c11"
RESULTS = "nvcf_results"
CHUNK = CHUNK_BYTES
WAIT = 10.0

OpenStore = Callable[..., Awaitable[ObjectStore]]


@pytest.fixture
async def nc(nats_server: EmbeddedNatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    yield client
    await client.close()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream(timeout=WAIT)


@pytest.fixture
def open_store(nc: Client) -> OpenStore:
    """Factory: `await open_store(**ObjectStore options)` -> a provisioned store (memory storage)."""

    async def open_(**options: Any) -> ObjectStore:
        options.setdefault("storage", StorageType.MEMORY)
        store = ObjectStore(nc, signer=UrlSigner(b"s" * 32), base_url="http://unused", **options)
        await store.provision()
        return store

    return open_


def data_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def pieces(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    """`data` in pieces that do not line up with the chunks."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def chunk_subjects(js: JetStreamContext, bucket: str = RESULTS) -> dict[str, int]:
    """Messages per chunk subject in the bucket's stream."""
    info = await js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.C.>")
    return dict(info.state.subjects or {})


async def stored_chunks(js: JetStreamContext, count: int) -> None:
    """Return once the bucket holds `count` chunks (bounded)."""
    async with asyncio.timeout(WAIT):
        # The stream's state has no event to await: nats-server is another process.
        while sum((await chunk_subjects(js)).values()) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def nats_py_get(js: JetStreamContext, name: str = NAME, bucket: str = RESULTS) -> bytes:
    result = await (await js.object_store(bucket)).get(name)
    return result.data or b""


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * 1024 * 1024 + 7],
    ids=["empty", "one", "chunk-1", "chunk", "chunk+1", "3MiB+7"],
)
async def test_a_streamed_object_is_what_nats_py_reads(
    open_store: OpenStore, js: JetStreamContext, size: int
) -> None:
    store, data = await open_store(), data_of(size)
    stored = await store.put_stream(
        Bucket.RESULTS, NAME, pieces(data), content_type="application/zip"
    )
    chunks = -(-size // CHUNK)
    digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    assert (stored.size, stored.chunks, stored.digest) == (size, chunks, digest)
    result = await (await js.object_store(RESULTS)).get(NAME)
    assert result.data == data
    info = result.info
    assert (info.size, info.chunks, info.digest, info.nuid) == (size, chunks, digest, stored.nuid)
    assert info.headers == {"Content-Type": ["application/zip"]}
    assert info.options is not None
    assert info.options.max_chunk_size == CHUNK
    assert info.mtime
    assert not info.deleted
    assert b"".join([piece async for piece in store.read(stored)]) == data
    expected = {f"$O.{RESULTS}.C.{stored.nuid}": chunks} if chunks else {}
    assert await chunk_subjects(js) == expected


async def test_replacing_an_object_purges_the_old_chunks_and_meta(
    open_store: OpenStore, js: JetStreamContext
) -> None:
    store = await open_store()
    first = await store.put_stream(
        Bucket.RESULTS, NAME, pieces(data_of(3 * CHUNK)), content_type="a/b"
    )
    second = await store.put_stream(Bucket.RESULTS, NAME, pieces(b"second"), content_type="c/d")
    assert first.nuid != second.nuid
    assert await chunk_subjects(js) == {f"$O.{RESULTS}.C.{second.nuid}": 1}
    meta = await js.stream_info(f"OBJ_{RESULTS}", subjects_filter=f"$O.{RESULTS}.M.>")
    assert meta.state.subjects == {
        f"$O.{RESULTS}.M.{base64.urlsafe_b64encode(NAME.encode()).decode()}": 1
    }
    assert await nats_py_get(js) == b"second"
    assert (await store.stat(Bucket.RESULTS, NAME)).content_type == "c/d"


async def test_chunks_reach_the_bucket_while_the_body_still_arrives(
    open_store: OpenStore, js: JetStreamContext
) -> None:
    store, release = await open_store(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * (8 * CHUNK)
        await release.wait()
        yield b"b" * 10

    upload = asyncio.create_task(
        store.put_stream(Bucket.RESULTS, NAME, body(), content_type="application/zip")
    )
    try:
        await stored_chunks(js, 8)
        with pytest.raises(ObjectNotFound):  # not visible before its last byte
            await store.stat(Bucket.RESULTS, NAME)
    finally:
        release.set()
    async with asyncio.timeout(WAIT):
        stored = await upload
    assert (stored.size, stored.chunks) == (8 * CHUNK + 10, 9)
    assert await nats_py_get(js) == b"a" * (8 * CHUNK) + b"b" * 10


@pytest.mark.parametrize("older", [True, False], ids=["replace", "new"])
async def test_a_body_that_breaks_off_stores_nothing(
    open_store: OpenStore, js: JetStreamContext, older: bool
) -> None:
    store = await open_store()
    expected: dict[str, int] = {}
    if older:
        kept = await store.put_stream(
            Bucket.RESULTS, NAME, pieces(b"old" * 1000), content_type="a/b"
        )
        expected = {f"$O.{RESULTS}.C.{kept.nuid}": 1}

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * (5 * CHUNK + 10)
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await store.put_stream(Bucket.RESULTS, NAME, body(), content_type="a/b")
    assert await chunk_subjects(js) == expected
    if older:
        assert await nats_py_get(js) == b"old" * 1000
    else:
        with pytest.raises(ObjectNotFound):
            await store.stat(Bucket.RESULTS, NAME)


async def test_over_the_limit_mid_stream_stores_nothing(
    open_store: OpenStore, js: JetStreamContext
) -> None:
    store = await open_store(max_object_bytes=4 * CHUNK)
    kept = await store.put_stream(Bucket.RESULTS, NAME, pieces(b"old"), content_type="a/b")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b"y" * CHUNK

    with pytest.raises(ObjectTooLarge):
        await store.put_stream(Bucket.RESULTS, NAME, body(), content_type="a/b")
    assert await chunk_subjects(js) == {f"$O.{RESULTS}.C.{kept.nuid}": 1}
    assert await nats_py_get(js) == b"old"
    at_limit = await store.put_stream(
        Bucket.RESULTS, NAME, pieces(b"z" * 4 * CHUNK), content_type="a/b"
    )
    assert at_limit.size == 4 * CHUNK


async def test_a_nats_failure_mid_way_stores_nothing_and_frees_the_space(
    open_store: OpenStore, js: JetStreamContext
) -> None:
    # A bucket JetStream refuses to grow past 1 MiB: the 5th chunk of a 2 MiB upload fails.
    config = ObjectStoreConfig(storage=StorageType.MEMORY, max_bytes=1024 * 1024)
    await js.create_object_store("small_results", config=config)
    store = await open_store(bucket_names={Bucket.RESULTS: "small_results"})
    kept = await store.put_stream(Bucket.RESULTS, NAME, pieces(b"k" * CHUNK), content_type="a/b")
    with pytest.raises(NatsError):
        await store.put_stream(Bucket.RESULTS, NAME, pieces(data_of(8 * CHUNK)), content_type="a/b")
    assert await chunk_subjects(js, "small_results") == {f"$O.small_results.C.{kept.nuid}": 1}
    assert await nats_py_get(js, bucket="small_results") == b"k" * CHUNK
    # The failed upload's chunks were purged, so the space is there again.
    data = data_of(2 * CHUNK)
    await store.put_stream(Bucket.RESULTS, NAME, pieces(data), content_type="a/b")
    assert await nats_py_get(js, bucket="small_results") == data


async def test_a_cancelled_upload_purges_its_chunks(
    open_store: OpenStore, js: JetStreamContext
) -> None:
    store = await open_store()

    async def body() -> AsyncIterator[bytes]:
        yield b"c" * (3 * CHUNK)
        await asyncio.Event().wait()  # the rest never comes
        yield b""

    upload = asyncio.create_task(store.put_stream(Bucket.RESULTS, NAME, body(), content_type="a/b"))
    try:
        await stored_chunks(js, 3)
    finally:
        upload.cancel()
    async with asyncio.timeout(WAIT):
        with pytest.raises(asyncio.CancelledError):
            await upload
    assert await chunk_subjects(js) == {}
    with pytest.raises(ObjectNotFound):
        await store.stat(Bucket.RESULTS, NAME)


async def test_the_writer_keeps_at_most_a_window_of_chunks_unacknowledged(
    nc: Client, js: JetStreamContext, open_store: OpenStore
) -> None:
    await open_store()  # the buckets
    writer = ObjectWriter(nc, RESULTS, chunk_bytes=1024, timeout=WAIT, window=3)
    most = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal most
        for _ in range(40):
            # Messages out (chunks) minus messages in (acks) on the writer's connection.
            most = max(most, nc.stats["out_msgs"] - nc.stats["in_msgs"] - start)
            yield b"w" * 1024

    start = nc.stats["out_msgs"] - nc.stats["in_msgs"]
    info = await writer.write(NAME, body(), headers={}, description=None, max_bytes=1 << 20)
    assert (info.size, info.chunks) == (40 * 1024, 40)
    assert 2 <= most <= 3  # pipelined, and bounded by the window
    assert await nats_py_get(js) == b"w" * 40 * 1024
    with pytest.raises(ValueError, match="positive"):
        ObjectWriter(nc, RESULTS, chunk_bytes=1024, timeout=WAIT, window=0)
