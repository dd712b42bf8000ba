"""Writing one object into a NATS Object Store bucket while its bytes arrive, with bounded memory.

Owns the bucket's write format, the one nats-py's `ObjectStore.put` writes and `get` reads: chunks
on `$O.<bucket>.C.<nuid>`, then one meta record rolling up `$O.<bucket>.M.<base64url(name)>`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterable
from datetime import UTC, datetime
from typing import Final, Self

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import Header, ObjectInfo, ObjectMetaOptions
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from nats.js.kv import MSG_ROLLUP_SUBJECT
from nats.nuid import NUID

from nvcf_platform.errors import ObjectTooLarge

__all__ = ["ACK_WINDOW", "DIGEST_PREFIX", "ObjectWriter"]

ACK_WINDOW: Final = 16
"""Chunks of one upload published but not yet acknowledged by JetStream, at most."""
DIGEST_PREFIX: Final = "SHA-256="
"""How the meta record's `digest` starts; the base64url SHA-256 of the bytes follows."""

_log = logging.getLogger(__name__)


class ObjectWriter:
    """Writes objects into one bucket (stream `OBJ_<bucket>`) in the layout nats-py reads.

    Chunks are published as soon as they fill, with at most `window` acknowledgements
    outstanding, so the bucket write overlaps the upload and the bytes held stay about
    `window x chunk_bytes` whatever the object size. The meta record, which makes the object
    visible, is written only once every chunk is acknowledged; a replaced object's chunks are
    purged after it. An upload that fails or is cancelled part-way has its chunks purged and
    writes no meta record: the object stays absent, or keeps its previous version.
    """

    def __init__(
        self,
        nc: Client,
        bucket: str,
        *,
        chunk_bytes: int,
        timeout: float,
        window: int = ACK_WINDOW,
    ) -> None:
        if chunk_bytes < 1 or window < 1:
            raise ValueError(f"chunk_bytes {chunk_bytes} and window {window} must be positive")
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._bucket = bucket
        self._stream = f"OBJ_{bucket}"
        self._chunk_bytes = chunk_bytes
        self._timeout = timeout
        self._window = window
        self._nuid = NUID()

    async def write(
        self,
        name: str,
        data: AsyncIterable[bytes],
        *,
        headers: dict[str, list[str]],
        description: str | None,
        max_bytes: int,
    ) -> ObjectInfo:
        """Store the bytes of `data` as `name`; the object's new meta record.

        Raises `ObjectTooLarge` once more than `max_bytes` arrived, and passes on what reading
        `data` or NATS raises (`TimeoutError` for an acknowledgement overdue by `timeout`);
        nothing is stored then.
        """
        nuid = self._nuid.next().decode()
        subject = f"$O.{self._bucket}.C.{nuid}"
        async with _ChunkPublisher(
            self._nc, self._js, self._stream, subject, self._window, self._timeout
        ) as chunks:
            try:
                size, count, digest = await self._publish_chunks(data, chunks, max_bytes)
                info = ObjectInfo(
                    name=name,
                    bucket=self._bucket,
                    nuid=nuid,
                    size=size,
                    mtime=datetime.now(UTC).isoformat(),
                    chunks=count,
                    digest=DIGEST_PREFIX + base64.urlsafe_b64encode(digest).decode(),
                    description=description,
                    headers=headers,
                    options=ObjectMetaOptions(max_chunk_size=self._chunk_bytes),
                )
                previous = await self._current(name)
                await self._js.publish(
                    self._meta_subject(name),
                    orjson.dumps(info.as_dict()),
                    headers={Header.ROLLUP: MSG_ROLLUP_SUBJECT},
                )
            except BaseException:
                await chunks.discard()
                raise
        if previous is not None and not previous.deleted and previous.nuid != nuid:
            await _purge(self._js, self._stream, f"$O.{self._bucket}.C.{previous.nuid}")
        return info

    async def _publish_chunks(
        self, data: AsyncIterable[bytes], chunks: _ChunkPublisher, max_bytes: int
    ) -> tuple[int, int, bytes]:
        """Cut `data` into chunks and publish them; (size, chunk count, SHA-256)."""
        digest, size, count = hashlib.sha256(), 0, 0
        buffer, limit = bytearray(), self._chunk_bytes
        async for piece in data:
            size += len(piece)
            if size > max_bytes:
                raise ObjectTooLarge(max_bytes)
            buffer += piece
            while len(buffer) >= limit:
                with memoryview(buffer) as view:
                    payload = bytes(view[:limit])
                del buffer[:limit]
                digest.update(payload)
                await chunks.publish(payload)
                count += 1
        if buffer:
            payload = bytes(buffer)
            digest.update(payload)
            await chunks.publish(payload)
            count += 1
        await chunks.settle()
        return size, count, digest.digest()

    async def _current(self, name: str) -> ObjectInfo | None:
        """The meta record `name` has now (a delete marker included), None when it has none."""
        try:
            message = await self._js.get_last_msg(self._stream, self._meta_subject(name))
        except NotFoundError:
            return None
        try:
            info: ObjectInfo = ObjectInfo.from_response(orjson.loads(message.data or b""))
        except (ValueError, TypeError, KeyError) as error:
            # Its chunks cannot be found, so none can be purged; the new record replaces it.
            _log.warning(
                "unreadable object meta record replaced",
                extra={"bucket": self._bucket, "object": name, "error": repr(error)},
            )
            return None
        return info

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self._bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


class _ChunkPublisher:
    """The chunks of one upload on their subject; their acks come to an inbox of the upload's own.

    Not nats-py's `publish_async`: in nats-py 2.16 a refused publish (say, the stream is full)
    never resolves its future, so the failure would surface only as a timeout. A full window
    waits until half of it is acknowledged, so the writer wakes once per few acks, not per ack.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        stream: str,
        subject: str,
        window: int,
        timeout: float,
    ) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._subject = subject
        self._window = window
        self._timeout = timeout
        self._inbox = nc.new_inbox()
        self._acks: Subscription | None = None
        self._sent = 0
        self._acked = 0
        self._wanted = 0
        self._acks_reached = asyncio.Event()
        self._refusal: NatsError | None = None

    async def __aenter__(self) -> Self:
        self._acks = await self._nc.subscribe(self._inbox, cb=self._on_ack)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._acks is not None and not self._nc.is_closed:
            with contextlib.suppress(NatsError):
                await self._acks.unsubscribe()

    async def publish(self, payload: bytes) -> None:
        """Publish one chunk once fewer than `window` are unacknowledged."""
        if self._sent - self._acked >= self._window:
            await self._await_acks(self._sent - self._window // 2)
        elif self._refusal is not None:
            raise self._refusal
        self._sent += 1  # counted first: a publish that fails half-way may still land
        await self._nc.publish(self._subject, payload, reply=self._inbox)

    async def settle(self) -> None:
        """Wait until every chunk is acknowledged; the first refusal or overdue ack is raised."""
        await self._await_acks(self._sent)

    async def discard(self) -> None:
        """Purge the chunks published so far; a failure is logged, not raised.

        Acks still due are waited for first (for at most the timeout), so no chunk in flight can
        land after the purge and stay behind until the bucket's TTL.
        """
        if not self._sent:
            return
        with contextlib.suppress(NatsError, TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self._await_acks(self._sent, refused=True)
        await _purge(self._js, self._stream, self._subject)

    async def _await_acks(self, wanted: int, *, refused: bool = False) -> None:
        """Until `wanted` chunks are acknowledged, each wait bounded by the timeout.

        A refusal is raised at once unless `refused` (the outcome is known, only acks count).
        """
        while self._acked < wanted and (refused or self._refusal is None):
            self._wanted = wanted
            self._acks_reached.clear()
            async with asyncio.timeout(self._timeout):
                await self._acks_reached.wait()
        if self._refusal is not None and not refused:
            raise self._refusal

    async def _on_ack(self, message: Msg) -> None:
        self._acked += 1
        if self._refusal is None:
            try:
                _check_ack(message)
            except NatsError as error:
                self._refusal = error
        if self._acked >= self._wanted or self._refusal is not None:
            self._acks_reached.set()


def _check_ack(message: Msg) -> None:
    """Raise what a JetStream publish reply that is not a plain ack says."""
    if message.headers and message.headers.get(Header.STATUS):  # no stream took the chunk
        raise NoStreamResponseError
    try:
        reply = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        raise APIError(description=f"unreadable publish ack {message.data[:200]!r}") from None
    if "error" in reply:
        try:
            refusal = APIError.from_error(reply["error"])  # nats-py 2.16 raises, not returns
        except APIError as raised:
            refusal = raised
        raise refusal


async def _purge(js: JetStreamContext, stream: str, subject: str) -> None:
    """Purge `subject`'s messages from `stream`; a failure is logged (the TTL removes them)."""
    try:
        await js.purge_stream(stream, subject=subject)
    except Exception as error:  # best effort: the caller's outcome stands either way
        _log.error(
            "object chunks not purged",
            extra={"stream": stream, "subject": subject, "error": repr(error)},
        )
