"""Single-use attach tokens and what they resolve to (reference §4).

A response token resolves to the pexec handler waiting for the worker's answer; a request token to
the rest of the caller's body. The first call that presents a token removes it from the table.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from nvcf_platform.errors import WorkerResponseFailed
from nvcf_sidecar.protocol import HANDLER_TIMEOUT_SECONDS, Header

__all__ = [
    "AttachTokens",
    "BodyIncomplete",
    "ChunkReader",
    "RequestBody",
    "ResponseSlot",
    "WorkerResponse",
    "random_uuid",
]

STREAM_IDLE_TIMEOUT: Final = float(HANDLER_TIMEOUT_SECONDS)
"""Longest silence tolerated on a streamed body (NVIDIA's whole-handler timeout, 3605 s)."""
CLOSE_TIMEOUT: Final = 5.0
"""How long closing a request body waits for the GET attach it stops to end."""

_log = logging.getLogger(__name__)


class ChunkReader(Protocol):
    """What a body stream offers (aiohttp's `StreamReader`): the next chunk, b"" at the end."""

    async def readany(self) -> bytes: ...


class BodyIncomplete(ConnectionError):
    """A body ended before the length its head declared."""

    def __init__(self, expected: int, received: int) -> None:
        self.expected = expected
        self.received = received
        super().__init__(f"body ended after {received} of {expected} bytes")


async def iter_body(
    reader: ChunkReader, first: bytes, length: int | None, idle_timeout: float
) -> AsyncIterator[bytes]:
    """`first`, then the reader's chunks: exactly `length` bytes when known, else up to its end.

    Raises `BodyIncomplete` when the stream ends short of `length`, TimeoutError after
    `idle_timeout` seconds without a chunk. Bytes beyond `length` are left unread.
    """
    remaining = length
    if first:
        if remaining is not None:
            first = first[:remaining]
            remaining -= len(first)
        yield first
    while remaining is None or remaining > 0:
        chunk = await asyncio.wait_for(reader.readany(), idle_timeout)
        if not chunk:
            if remaining is not None:
                raise BodyIncomplete(length or 0, (length or 0) - remaining)
            return
        if remaining is not None:
            if len(chunk) > remaining:
                chunk = chunk[:remaining]
            remaining -= len(chunk)
        yield chunk


@dataclass(slots=True, eq=False)
class WorkerResponse:
    """A worker's response as parsed from its POST attach, handed to the waiting pexec handler.

    The POST attach stays open until `finished` is set: the caller-facing body was sent in full,
    failed, or the caller left.
    """

    status: int
    reason: str
    headers: list[Header]
    content_length: int | None
    """Body length from the inner head, else from the outer Content-Length; None: read to the end."""
    first_chunk: bytes
    reader: ChunkReader
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by `finish`; the POST attach (aiohttp's server) waits for it."""
    on_finish: Callable[[], None] | None = None
    """Called once by `finish` (the lean attach listener's way to answer without a task)."""

    def finish(self) -> None:
        """The caller-facing side is done with the body (sent, failed or dropped)."""
        if self.finished.is_set():
            return
        self.finished.set()
        if self.on_finish is not None:
            self.on_finish()

    def body(self, idle_timeout: float = STREAM_IDLE_TIMEOUT) -> AsyncIterator[bytes]:
        """The body chunks as they arrive from the worker (see `iter_body`)."""
        return iter_body(self.reader, self.first_chunk, self.content_length, idle_timeout)


class ResponseSlot:
    """The pexec side of a response token: where the worker's response is delivered."""

    __slots__ = ("_future", "request_id", "token")

    def __init__(self, request_id: str, token: str) -> None:
        self.request_id = request_id
        self.token = token
        self._future: asyncio.Future[WorkerResponse] = asyncio.get_running_loop().create_future()

    async def wait(self) -> WorkerResponse:
        """The worker's response, or `WorkerResponseFailed` when its POST attach was unreadable.

        Bound it with `asyncio.timeout`: cancelling the wait closes the slot, so a late
        delivery fails.
        """
        return await self._future

    def deliver(self, response: WorkerResponse) -> bool:
        """Hand the response to the waiter; False when the waiter is gone."""
        if self._future.done():
            return False
        self._future.set_result(response)
        return True

    def fail(self, detail: str) -> bool:
        """Tell the waiter the worker's response was unreadable; False when the waiter is gone."""
        if self._future.done():
            return False
        self._future.set_exception(WorkerResponseFailed(self.request_id, detail))
        return True

    def interrupt(self, error: Exception) -> bool:
        """Make the waiter raise `error` (the platform gives it up); False when it is gone."""
        if self._future.done():
            return False
        self._future.set_exception(error)
        return True

    def abandon(self) -> None:
        """Close the slot for good; a response already delivered but not relayed is released."""
        if not self._future.done():
            self._future.cancel()
        elif not self._future.cancelled() and self._future.exception() is None:
            self._future.result().finish()


class RequestBody:
    """The rest of a caller's body after the inline part, streamed by exactly one GET attach."""

    __slots__ = ("_done", "_streamer", "length", "reader", "request_id")

    def __init__(self, request_id: str, reader: ChunkReader, length: int | None) -> None:
        self.request_id = request_id
        self.reader = reader
        self.length = length
        """Bytes left when the caller declared a Content-Length, else None (chunked)."""
        self._streamer: asyncio.Task[object] | None = None
        self._done = asyncio.Event()

    def chunks(self, idle_timeout: float = STREAM_IDLE_TIMEOUT) -> AsyncIterator[bytes]:
        """The remaining body as it arrives from the caller, bound to the calling task.

        `close()` cancels that task if it is still streaming.
        """
        self._streamer = asyncio.current_task()
        return iter_body(self.reader, b"", self.length, idle_timeout)

    def finish(self) -> None:
        """Mark the GET attach as over (called by it in every outcome)."""
        self._done.set()

    async def close(self) -> None:
        """Stop a GET attach still streaming this body and wait (bounded) for it to end.

        The caller's body belongs to the caller's request; it must not be read once that
        request's handler returns.
        """
        streamer = self._streamer
        if streamer is None or self._done.is_set():
            return
        streamer.cancel()
        try:
            await asyncio.wait_for(self._done.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            _log.warning("GET attach did not stop in time", extra={"request_id": self.request_id})


def random_uuid() -> str:
    """A random (version 4) UUID in its canonical text, as `str(uuid.uuid4())` gives it from
    the same 16 bytes of `os.urandom`, without the `UUID` object's int round trip."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class AttachTokens:
    """The IS's in-memory table of attach bearer tokens (random UUIDv4 strings, single use)."""

    __slots__ = ("_requests", "_responses")

    def __init__(self) -> None:
        self._responses: dict[str, ResponseSlot] = {}
        self._requests: dict[str, RequestBody] = {}

    def __len__(self) -> int:
        return len(self._responses) + len(self._requests)

    def mint_response(self, request_id: str) -> ResponseSlot:
        """A new response token and the slot its POST attach delivers to."""
        slot = ResponseSlot(request_id, random_uuid())
        self._responses[slot.token] = slot
        return slot

    def mint_request(self, body: RequestBody) -> str:
        """A new request token that resolves to `body`."""
        token = random_uuid()
        self._requests[token] = body
        return token

    def claim_response(self, token: str) -> ResponseSlot | None:
        """The slot of a response token, removing it; None if unknown or already used."""
        return self._responses.pop(token, None)

    def interrupt_waiting(self, error: Exception) -> None:
        """Make every caller still waiting for a worker's response raise `error`."""
        for slot in list(self._responses.values()):
            slot.interrupt(error)

    def response_waiting(self, token: str) -> bool:
        """Whether a response token is unused and its caller still waits (nothing is claimed)."""
        return token in self._responses

    def claim_request(self, token: str) -> RequestBody | None:
        """The body of a request token, removing it; None if unknown or already used."""
        return self._requests.pop(token, None)

    def revoke(self, token: str | None) -> None:
        """Forget a token of either kind (no-op when already used)."""
        if token is not None:
            self._responses.pop(token, None)
            self._requests.pop(token, None)
