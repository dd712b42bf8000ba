"""A lean HTTP/1.1 client for the one call every request makes with a body already in memory:
the POST attach of its response.

aiohttp's client costs 80-100 µs of CPU per exchange on the machine of docs/performance.md
(request and payload objects, tracing hooks, timeouts, its connector); a POST whose whole body is
in memory needs none of that. `LeanHttpClient.request` writes the request in one send on a
kept-alive connection and reads the answer framed by its Content-Length or its chunks, keeping
at most `limit` bytes of the answer's body.

Its scope, on purpose: whole bodies only, no proxy, no redirects, no cookies, no decompression,
no timeout (cancellation ends a call, as with the aiohttp session it stands in for), no retry.
Streamed bodies and a `proxyURI` stay on aiohttp. Connections are kept per origin (scheme, host,
port); an idle one is dropped after `idle_seconds` or once the server closed it, and at most
`max_idle` wait per origin.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from nvcf_sidecar.protocol import H1Error, Header, ResponseHead, ResponseHeadParser
from nvcf_sidecar.protocol.h1 import content_length, encode_request_head
from nvcf_sidecar.worker.errors import WorkerError

__all__ = ["LeanAnswer", "LeanHttpClient", "LeanHttpError"]

_MAX_CHUNK_LINE: Final = 4096
"""A chunk-size line (with extensions) or a trailer line longer than this is malformed."""
_MAX_ORIGINS: Final = 64
_BODYLESS_STATUSES: Final = frozenset({204, 304})
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")


class LeanHttpError(WorkerError, ConnectionError):
    """The exchange failed: no connection, a broken one, or an answer that is not HTTP/1.1."""


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


class _Reader:
    """Frames one answer from the bytes that arrive after the request was written."""

    __slots__ = (
        "_body",
        "_chunk_state",
        "_done",
        "_head_parser",
        "_keep_alive",
        "_limit",
        "_method",
        "_mode",
        "_pending",
        "_remaining",
        "_version",
        "head",
        "reusable",
    )

    def __init__(self, method: str, limit: int) -> None:
        self._method = method
        self._limit = limit
        self._head_parser = ResponseHeadParser(transfer_encoding=True)
        self._version = b""  # the first bytes of the status line, up to "HTTP/1.x"
        self._keep_alive = False
        self._body = bytearray()
        self._mode = ""  # "length", "chunked" or "close", once the head is in
        self._remaining = 0
        self._pending = bytearray()  # chunked: bytes not framed yet
        self._chunk_state = "size"
        self.head: ResponseHead | None = None
        self._done = False
        self.reusable = False

    def finished(self) -> bool:
        """Whether the whole answer is in."""
        return self._done

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def feed(self, data: bytes) -> None:
        """Take the next bytes from the connection; raises LeanHttpError when they are not an
        HTTP/1.1 answer."""
        if self.finished():
            self.reusable = False  # bytes after the answer: the connection is out of step
            return
        if self.head is None:
            if len(self._version) < 8:  # the head may come a few bytes at a time
                self._version += data[: 8 - len(self._version)]
            try:
                head = self._head_parser.feed(data)
            except H1Error as error:
                raise LeanHttpError(f"malformed answer: {error}") from error
            if head is None:
                return
            data = self._start(head)
            if self.finished():
                if data:
                    self.reusable = False  # bytes after a bodyless answer: out of step
                return
            if not data:
                return
        if self._mode == "length":
            self._keep(data[: self._remaining])
            extra = len(data) > self._remaining
            self._remaining -= min(self._remaining, len(data))
            if self._remaining == 0:
                self._finish(clean=not extra)
        elif self._mode == "chunked":
            self._pending += data
            self._unchunk()
        else:
            self._keep(data)

    def feed_eof(self) -> None:
        """The server closed the connection: the end of a close-framed answer, else an error."""
        if self.finished():
            return
        if self.head is not None and self._mode == "close":
            self._finish(clean=True)
            return
        raise LeanHttpError("the server closed the connection before the answer ended")

    def _start(self, head: ResponseHead) -> bytes:
        """Take a parsed head; returns the body bytes that came with it."""
        if 100 <= head.status < 200:
            if head.status == 101:
                raise LeanHttpError("the server switched protocols (101) unasked")
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._head_parser = ResponseHeadParser(transfer_encoding=True)
            self._version = b""
            if head.body:
                self.feed(head.body)
            return b""
        self.head = head
        keep_alive = self._version != b"HTTP/1.0"
        codings: list[str] = []
        for name, value in head.headers:
            lowered = name.lower()
            if lowered == "connection" and "close" in value.lower():
                keep_alive = False
            elif lowered == "transfer-encoding":
                codings += [c.strip(" \t").lower() for c in value.split(",") if c.strip(" \t")]
        self._keep_alive = keep_alive
        if self._method == "HEAD" or head.status in _BODYLESS_STATUSES:
            self._finish(clean=True)
            return head.body
        if codings:
            # RFC 9112 §6.3: chunked last frames the body; any other coding reads to the close.
            self._mode = "chunked" if codings[-1] == "chunked" else "close"
        else:
            try:
                declared = content_length(head.headers)
            except H1Error as error:
                raise LeanHttpError(f"malformed answer: {error}") from error
            if declared is None:
                self._mode = "close"
            else:
                self._mode, self._remaining = "length", declared
                if declared == 0:
                    self._finish(clean=True)
        return head.body

    def _finish(self, *, clean: bool) -> None:
        """The answer ended; `clean`: nothing arrived after it."""
        self._done = True
        self.reusable = clean and self._keep_alive and self._mode != "close"

    def _keep(self, data: bytes | bytearray | memoryview) -> None:
        room = self._limit - len(self._body)
        if room > 0:
            self._body += data[:room]

    def _unchunk(self) -> None:
        pending = self._pending
        while pending:
            if self._chunk_state == "data":
                take = min(self._remaining, len(pending))
                self._keep(memoryview(pending)[:take])
                del pending[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = "crlf"
                continue
            end = pending.find(b"\n")
            if end == -1:
                if len(pending) > _MAX_CHUNK_LINE:
                    raise LeanHttpError("malformed answer: a chunk line too long")
                return
            line = bytes(pending[:end]).rstrip(b"\r")
            del pending[: end + 1]
            if self._chunk_state == "crlf":
                if line:
                    raise LeanHttpError("malformed answer: chunk data longer than its size")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not _CHUNK_SIZE.fullmatch(size):
                    raise LeanHttpError(f"malformed answer: chunk size {line[:40]!r}")
                self._remaining = int(size, 16)
                self._chunk_state = "data" if self._remaining else "trailer"
            elif not line:  # the blank line after the trailers ends the answer
                self._finish(clean=not pending)
                return


class _Connection(asyncio.Protocol):
    """One kept-alive connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._reader: _Reader | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:  # nobody asked: a server out of step, so the connection is dropped
            self.close()
            return
        try:
            reader.feed(data)
        except LeanHttpError as error:
            self._settle(error)
            return
        if reader.finished():
            self._settle(None)

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._ended(exc)

    def _ended(self, cause: Exception | None) -> None:
        reader = self._reader
        if reader is None or reader.finished():
            return
        try:
            reader.feed_eof()
        except LeanHttpError as error:
            if cause is not None:
                error = LeanHttpError(f"{error}: {type(cause).__name__}: {cause}")
            self._settle(error)
            return
        self._settle(None)

    def _settle(self, error: LeanHttpError | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def exchange(self, data: bytes, reader: _Reader) -> None:
        """Write `data` and wait until `reader` has the whole answer."""
        transport = self.transport
        if transport is None or self.lost:
            raise LeanHttpError("the connection is closed")
        self._reader = reader
        self._waiter = asyncio.get_running_loop().create_future()
        transport.write(data)
        try:
            await self._waiter
        finally:
            self._reader = self._waiter = None

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class LeanHttpClient:
    """Whole-body HTTP/1.1 exchanges on kept-alive connections; `close()` when done."""

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
        """One exchange with `url` (http or https); raises LeanHttpError when it fails."""
        if self._closed:
            raise LeanHttpError("the client is closed")
        origin = self._origin(url)
        framing: list[Header] = [("Host", origin.host_header), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            framing.append(("Content-Length", str(len(body))))
        try:
            data = encode_request_head(method, origin.target, framing)
        except H1Error as error:
            raise LeanHttpError(f"cannot send the request: {error}") from error
        if body:
            data += body
        connection = self._take(origin.key) or await self._connect(origin)
        reader = _Reader(method, limit)
        try:
            await connection.exchange(data, reader)
        except BaseException:
            connection.close()
            raise
        if reader.reusable and not connection.lost and not self._closed:
            self._give_back(origin.key, connection)
        else:
            connection.close()
        head = reader.head
        assert head is not None  # done implies a head
        return LeanAnswer(head.status, head.reason, head.headers, reader.body)

    async def close(self) -> None:
        """Close every idle connection; a call in flight closes its own when it ends."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is not None:
            return origin
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

    def _give_back(self, key: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
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
            raise LeanHttpError(
                f"cannot connect to {origin.host}:{origin.port}: {type(error).__name__}: {error}"
            ) from error
        return connection
