"""A lean HTTP/1.1 client for the two calls every request makes: the call to the inference
container and the POST attach of its response.

aiohttp's client costs 80-100 µs of CPU per exchange on the machine of docs/performance.md
(request and payload objects, tracing hooks, timeouts, its connector); these calls need none of
that. `LeanHttpClient.request` writes a request whose body is in memory in one send on a
kept-alive connection and reads the whole answer, keeping at most `limit` bytes of its body (the
POST attach). `LeanHttpClient.open` sends a body in memory or streamed (by length or in chunks,
full duplex: the answer may arrive while the body is still being sent) and returns the answer
once its head is in, its body streamed with flow control (`lean_response.LeanResponse`: the
container call).

Headers go out as given, after Host and before the body's framing: the caller removes hop-by-hop
ones. Its scope, on purpose: no proxy, no redirects (returned, not followed), no cookies, no
decompression, no timeout (cancellation ends a call), no retry. Connections are kept per origin
(scheme, host, port); an idle one is dropped after `idle_seconds` or once the server closed it,
and at most `max_idle` wait per origin. Errors are `LeanHttpError`s that say what failed:
`LeanConnectError` (nothing sent), `LeanResetError`, `LeanClosedError`, `LeanAnswerError`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from nvcf_sidecar.protocol import H1Error, Header
from nvcf_sidecar.protocol.h1 import encode_request_head
from nvcf_sidecar.worker.lean_framing import (
    AnswerFramer,
    LeanAnswerError,
    LeanClosedError,
    LeanConnectError,
    LeanHttpError,
    LeanResetError,
)
from nvcf_sidecar.worker.lean_response import LeanResponse

__all__ = [
    "LeanAnswer",
    "LeanAnswerError",
    "LeanClosedError",
    "LeanConnectError",
    "LeanHttpClient",
    "LeanHttpError",
    "LeanResetError",
    "LeanResponse",
]

_MAX_ORIGINS: Final = 64
# Methods whose request carries no Content-Length without a body (`_length`).
_NO_BODY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class LeanAnswer:
    """An answer read to its end."""

    status: int
    reason: str
    headers: list[Header]
    body: bytes
    """The first `limit` bytes of its body (the rest was read and dropped)."""


@dataclass(frozen=True, slots=True)
class _Origin:
    key: tuple[str, str, int]
    host: str
    port: int
    host_header: str
    tls: bool
    target: str


class _Collector:
    """Keeps the first `limit` bytes of a body."""

    __slots__ = ("body", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.body = bytearray()

    def __call__(self, data: bytes) -> None:
        room = self.limit - len(self.body)
        if room > 0:
            self.body += data[:room]


class _Connection(asyncio.Protocol):
    """One kept-alive connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._framer: AnswerFramer | None = None
        self._head: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        framer = self._framer
        if framer is None:  # nobody asked: a server out of step, so the connection is dropped
            self.close()
            return
        try:
            framer.feed(data)
        except LeanHttpError as error:
            self.fail(error)
            return
        if framer.head is not None:
            _settle(self._head, None)
        if framer.finished():
            _settle(self._done, None)

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._ended(exc)
        _settle(self._drained, None)  # a writer waiting to write learns of the loss next

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        _settle(self._drained, None)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is full; LeanResetError once it is lost."""
        if self._paused and not self.lost:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None
        if self.lost:
            raise LeanResetError("the connection closed while the request body was sent")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def begin(self, framer: AnswerFramer) -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        """Start an exchange framed by `framer`; returns the futures of its head and its end."""
        if self.transport is None or self.lost:
            raise LeanResetError("the connection is closed")
        loop = asyncio.get_running_loop()
        self._framer = framer
        self._head = head = loop.create_future()
        self._done = done = loop.create_future()
        return head, done

    def end(self) -> None:
        """The exchange is over (or abandoned): bytes that arrive now are out of step."""
        self._framer = self._head = self._done = None

    def fail(self, error: LeanHttpError) -> None:
        """End the exchange with `error` and drop the connection."""
        _settle(self._head, error)
        _settle(self._done, error)
        self.close()

    def _ended(self, cause: Exception | None) -> None:
        framer = self._framer
        if framer is None or framer.finished():
            return
        try:
            framer.feed_eof()
        except LeanClosedError as closed:
            error: LeanHttpError = closed
            if cause is not None:
                error = LeanResetError(f"{closed}: {type(cause).__name__}: {cause}")
            self.fail(error)
            return
        _settle(self._head, None)
        _settle(self._done, None)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


def _settle(future: asyncio.Future[None] | None, error: BaseException | None) -> None:
    if future is not None and not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved here: a head nobody awaits any more is not logged


class LeanHttpClient:
    """HTTP/1.1 exchanges on kept-alive connections; `close()` when done."""

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_idle: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._idle_seconds = idle_seconds
        self._max_idle = max_idle
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[Header],
        body: bytes = b"",
        *,
        limit: int = 65536,
    ) -> LeanAnswer:
        """One exchange with `url` (http or https), read to its end; raises LeanHttpError."""
        origin, data = self._head(method, url, headers, _length(method, body))
        if body:
            data += body
        connection = self._take(origin.key) or await self._connect(origin)
        collector = _Collector(limit)
        framer = AnswerFramer(method, collector)
        try:
            _, done = connection.begin(framer)
            connection.write(data)
            await done
        except BaseException:
            connection.close()
            raise
        finally:
            connection.end()
        self._release(origin.key, connection, framer.reusable)
        head = framer.head
        assert head is not None  # done implies a head
        return LeanAnswer(head.status, head.reason, head.headers, bytes(collector.body))

    async def open(
        self,
        method: str,
        url: str,
        headers: Iterable[Header],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        body_length: int | None = None,
    ) -> LeanResponse:
        """Send a request and return its answer once the head is in; the body streams.

        A streamed `body` is sent with `body_length` as its Content-Length, or chunked without
        one, while the answer is read; one that raises aborts the call (the connection is
        dropped). Raises LeanHttpError when no head arrives; cancellation drops the connection.
        Close the response (or read it to the end) to give its connection back.
        """
        stream: AsyncIterable[bytes] | None = None
        if body is None or isinstance(body, bytes):
            framing = _length(method, body or b"")
        else:
            stream = body
            if body_length is not None:
                framing = ("Content-Length", str(body_length))
            else:
                framing = ("Transfer-Encoding", "chunked")
        chunked = stream is not None and body_length is None
        origin, data = self._head(method, url, headers, framing)
        if isinstance(body, bytes):
            data += body
        connection = self._take(origin.key) or await self._connect(origin)
        response = LeanResponse(connection.transport, lambda: connection.close())
        framer = AnswerFramer(method, response.feed)
        writer: asyncio.Task[None] | None = None
        try:
            head, done = connection.begin(framer)
            connection.write(data)
            if stream is not None:
                writer = asyncio.create_task(_send_body(connection, stream, chunked))
            await head
        except BaseException:
            if writer is not None:
                writer.cancel()
            connection.close()
            connection.end()
            raise
        assert framer.head is not None
        response.start(framer.head, framer.mode)

        def finished(future: asyncio.Future[None]) -> None:
            connection.end()
            error = None if future.cancelled() else future.exception()
            sent = writer is None or (writer.done() and not writer.cancelled())
            if writer is not None and not writer.done():
                writer.cancel()  # the answer ended first: the rest of the body is not wanted
            response.end(error)
            self._release(origin.key, connection, error is None and sent and framer.reusable)

        done.add_done_callback(finished)
        return response

    async def close(self) -> None:
        """Close every idle connection; a call in flight closes its own when it ends."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _head(
        self, method: str, url: str, headers: Iterable[Header], framing: Header | None
    ) -> tuple[_Origin, bytes]:
        """`url`'s origin and the request's head: Host, `headers` as given, then `framing`."""
        origin = self._origin(url)
        lines: list[Header] = [("Host", origin.host_header), *headers]
        if framing is not None:
            lines.append(framing)
        try:
            return origin, encode_request_head(method, origin.target, lines, strip=False)
        except H1Error as error:
            raise LeanHttpError(f"cannot send the request: {error}") from error

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is not None:
            return origin
        if self._closed:
            raise LeanHttpError("the client is closed")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise LeanHttpError(f"cannot call {url!r}: not an http:// or https:// URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as error:
            raise LeanHttpError(f"cannot call {url!r}: {error}") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        origin = _Origin(
            key=(scheme, parts.hostname, port),
            host=parts.hostname,
            port=port,
            host_header=parts.netloc.rpartition("@")[2],
            tls=scheme == "https",
            target=target,
        )
        if len(self._origins) >= _MAX_ORIGINS:
            self._origins.clear()
        self._origins[url] = origin
        return origin

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        if self._closed:
            raise LeanHttpError("the client is closed")
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if (
                connection.lost
                or transport is None
                or transport.is_closing()
                or now - connection.idle_since > self._idle_seconds
            ):
                connection.close()
                continue
            return connection
        return None

    def _release(self, key: tuple[str, str, int], connection: _Connection, reusable: bool) -> None:
        """Keep `connection` for the next exchange when it can carry one, else close it."""
        idle = self._idle.setdefault(key, [])
        if not reusable or connection.lost or self._closed or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(self, origin: _Origin) -> _Connection:
        context: ssl.SSLContext | None = None
        if origin.tls:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection,
                origin.host,
                origin.port,
                ssl=context,
                server_hostname=origin.host if context is not None else None,
            )
        except OSError as error:
            raise LeanConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {type(error).__name__}: {error}"
            ) from error
        return connection


def _length(method: str, body: bytes) -> Header | None:
    """The Content-Length of a body in memory; none for an empty one of GET, HEAD, OPTIONS or
    TRACE (aiohttp's rule, kept so the container sees what it saw before)."""
    if body or method not in _NO_BODY_METHODS:
        return ("Content-Length", str(len(body)))
    return None


async def _send_body(connection: _Connection, body: AsyncIterable[bytes], chunked: bool) -> None:
    """Write a streamed request body as it comes (the answer is read meanwhile); a body that
    raises drops the connection, which ends the exchange with an error."""
    try:
        async for chunk in body:
            if not chunk:
                continue
            await connection.drain()
            connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            await connection.drain()
            connection.write(b"0\r\n\r\n")
    except LeanHttpError:
        pass  # the connection is gone: the answer's side reports it
    except Exception as error:
        connection.fail(LeanHttpError(f"the request body failed: {type(error).__name__}: {error}"))
