"""`LeanResponse`: an answer of the lean client (`lean_http.py`) whose body is read as it
arrives, with flow control: reading from the connection pauses while more than
`HIGH_WATER` bytes wait unread, and resumes below `LOW_WATER`.

It offers the part of aiohttp's `ClientResponse` the sidecar's relays use (`status`, `reason`,
`headers.items()`, `content_length`, `read()`, `content.read(n)`, `content.iter_any()`,
`close()`), so a container answer is relayed the same way whichever client fetched it. The
platform's lean attach listener streams a worker's POST body through one too, read as an
aiohttp `StreamReader` is (`readany()`, `read_nowait()`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, ItemsView, Iterator, Mapping
from typing import Final

from nvcf_sidecar.protocol import H1Error, Header, ResponseHead
from nvcf_sidecar.protocol.h1 import content_length
from nvcf_sidecar.worker.lean_framing import LeanHttpError

__all__ = ["HIGH_WATER", "LOW_WATER", "LeanHeaders", "LeanResponse"]

HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024


class LeanHeaders(Mapping[str, str]):
    """An answer's header lines in order, duplicates kept; looked up case-insensitively (the
    first value)."""

    __slots__ = ("_lines",)

    def __init__(self, lines: list[Header]) -> None:
        self._lines = lines

    def __getitem__(self, name: str) -> str:
        wanted = name.lower()
        for key, value in self._lines:
            if key.lower() == wanted:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def items(self) -> ItemsView[str, str]:
        return _Lines(self)

    @property
    def lines(self) -> list[Header]:
        return self._lines


class _Lines(ItemsView[str, str]):
    """Every header line, duplicates included (a Mapping's own view would look names up)."""

    _mapping: LeanHeaders

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._mapping.lines)

    def __len__(self) -> int:
        return len(self._mapping.lines)


class LeanResponse:
    """An answer whose head is in and whose body streams; the connection feeds it."""

    def __init__(self, transport: asyncio.Transport | None, drop: Callable[[], None]) -> None:
        self._transport = transport
        self._drop = drop
        self.status = 0
        self.reason: str | None = None
        self.headers = LeanHeaders([])
        self.content_length: int | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<LeanResponse {self.status} {self.reason!r}>"

    @property
    def content(self) -> LeanResponse:
        """The body as a stream (aiohttp's name for it): `read(n)`, `iter_any()`."""
        return self

    def start(self, head: ResponseHead, mode: str) -> None:
        """The head arrived; `mode` is the body's framing (`chunked`: no Content-Length)."""
        self.status = head.status
        self.reason = head.reason
        self.headers = LeanHeaders(head.headers)
        if mode != "chunked":  # a HEAD's or a 304's declared length is kept, as aiohttp does
            try:
                self.content_length = content_length(head.headers)
            except H1Error:
                self.content_length = None

    def feed(self, data: bytes) -> None:
        """The next body bytes (called by the connection, in order)."""
        if self._closed or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def end(self, error: BaseException | None) -> None:
        """The body ended, or broke off with `error`. The connection may carry another exchange
        from now on: reading resumes if this answer paused it, and is never touched again."""
        self._ended = True
        self._error = error
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        self._paused = False
        self._transport = None
        self._wake()

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of the body (all of it for -1), waiting for some; b"" at its end.
        Raises the LeanHttpError that broke it off once the bytes before it are read."""
        if n < 0:
            parts = [chunk async for chunk in self.iter_any()]
            return b"".join(parts)
        while not self._chunks:
            if self._ended:
                self._raise_error()
                return b""
            await self._wait()
        chunk = self._chunks.popleft()
        if len(chunk) > n:
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        self._taken(len(chunk))
        return chunk

    def read_nowait(self) -> bytes:
        """The body bytes there now, without waiting (b"" when none is)."""
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._taken(len(chunk))
        return chunk

    async def readany(self) -> bytes:
        """The body bytes there now, waiting for some (aiohttp's `readany`); b"" at its end."""
        return await self.read(HIGH_WATER)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, whatever is there at each step."""
        while True:
            while not self._chunks:
                if self._ended:
                    self._raise_error()
                    return
                await self._wait()
            if len(self._chunks) == 1:
                chunk = self._chunks.popleft()
            else:
                chunk = b"".join(self._chunks)
                self._chunks.clear()
            self._taken(len(chunk))
            yield chunk

    def close(self) -> None:
        """Stop reading: a body not read to its end drops the connection."""
        if self._closed:
            return
        self._closed = True
        self._chunks.clear()
        if not self._ended:
            self._drop()

    def _taken(self, size: int) -> None:
        self._buffered -= size
        if self._paused and self._buffered < LOW_WATER and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _raise_error(self) -> None:
        if self._error is not None:
            if isinstance(self._error, LeanHttpError):
                raise self._error
            raise LeanHttpError(f"the answer broke off: {self._error}") from self._error

    async def _wait(self) -> None:
        if self._closed:
            raise LeanHttpError("the response is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
