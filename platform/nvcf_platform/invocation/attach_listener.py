"""The lean attach listener: the worker-facing attach routes on an HTTP/1.1 listener of their
own (`--attach-port`), an asyncio protocol instead of aiohttp's server.

This module is the HTTP/1.1 side: request heads parsed as they arrive (`protocol/h1.py`),
bodies framed by Content-Length or chunks (`protocol/chunked.py`), keep-alive, requests on a
connection answered one at a time (pipelined ones wait their turn), answers written as prepared
bytes. What each route does is `attach_routes.py`'s. Only workers call it (work items name it in
their `targetURI`), so it takes what an HTTP/1.1 client sends there and nothing more: no upgrades,
no `HEAD`, heads within the attach limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any, Final, cast

from nvcf_platform.invocation.attach_routes import AttachRoutes, header
from nvcf_platform.invocation.tokens import AttachTokens
from nvcf_sidecar.protocol import PROBLEM_CONTENT_TYPE, H1Error, RequestHead, invocation_problem
from nvcf_sidecar.protocol.chunked import ChunkedDecoder
from nvcf_sidecar.protocol.errors import MalformedChunk
from nvcf_sidecar.protocol.h1 import RequestHeadParser, content_length
from nvcf_sidecar.protocol.reasons import reason_phrase
from nvcf_sidecar.worker.lean_response import LeanResponse

__all__ = ["DISCARD_LIMIT", "KEEP_ALIVE_TIMEOUT", "AttachListener", "Connection"]

KEEP_ALIVE_TIMEOUT: Final = 75.0
"""An idle connection (no request, or a head not finished) is closed after this (aiohttp's)."""
DISCARD_LIMIT: Final = 1024 * 1024
"""The largest declared body read and dropped after an answer that did not need it (a 401, a
404 ...) to keep the connection; a larger one closes it."""

_log = logging.getLogger(__name__)


class AttachListener:
    """Serves the attach routes on a listening socket, over the token table the pexec handlers
    mint into. `start` it on a bound socket; `stop` closes it, giving exchanges in progress a
    grace period."""

    def __init__(self, tokens: AttachTokens) -> None:
        self._routes = AttachRoutes(tokens)
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._date = (0, b"")

    @property
    def port(self) -> int:
        """The bound port (0 before `start`)."""
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket) -> None:
        """Accept connections on `sock` (bound and listening)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self._routes, self._connections, self.date_header), sock=sock
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, give the busy ones up to `grace` s to finish
        their exchange, then drop whatever is left."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while True:
            for connection in list(self._connections):
                if not connection.busy:
                    connection.close()
            if not self._connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def date_header(self) -> bytes:
        """`Date: ...\\r\\n`, formatted once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, b"Date: %b\r\n" % formatdate(now, usegmt=True).encode("ascii"))
        return self._date[1]


class Connection(asyncio.Protocol):
    """One worker connection: heads parsed as they arrive, one exchange at a time.

    An exchange starts when a head is in (`AttachRoutes.serve`) and ends when its answer was
    written in full (`write_answer`, or `finish_exchange` after a streamed one).
    """

    def __init__(
        self,
        routes: AttachRoutes,
        registry: set[Connection],
        date_header: Callable[[], bytes],
    ) -> None:
        self._routes = routes
        self._registry = registry
        self._date_header = date_header
        self._transport: asyncio.Transport | None = None
        self._parser = RequestHeadParser(transfer_encoding=True)
        self.busy = False
        """An exchange is in progress (its answer not written in full)."""
        self.keep_alive = True
        self._backlog = b""  # bytes of the next request, kept while the current one runs
        # The request body being framed: its stream (None: dropped), and its framing.
        self._body: LeanResponse | None = None
        self._remaining = 0
        self._chunks: ChunkedDecoder | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self.lost = False

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._registry.add(self)
        self._start_idle()

    def data_received(self, data: bytes) -> None:
        if self._framing:
            self._frame_body(data)
        elif self.busy:
            # The next request came before this one was answered: it waits its turn.
            self._backlog += data
            if self._transport is not None:
                self._transport.pause_reading()
        else:
            self._take_head(data)

    def eof_received(self) -> bool:
        if self._framing:
            self._body_ended(ConnectionResetError("the worker closed the connection mid-body"))
            return False
        self.keep_alive = False
        return self.busy  # keep the transport open for the answer in progress

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._registry.discard(self)
        self._cancel_idle()
        if self._body is not None:
            self._body_ended(ConnectionResetError(f"the worker's connection broke: {exc!r}"))
        self.resume_writing()  # a writer waiting in `drain` wakes up and finds it lost

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the routes ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection (a body that cannot be completed must not look whole)."""
        if self._transport is not None:
            self._transport.abort()

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.lost:
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self.lost:
            raise ConnectionResetError("the worker's connection is gone")
        waiter = self._writable
        if waiter is not None and not waiter.done():
            await waiter
            if self.lost:
                raise ConnectionResetError("the worker's connection is gone")

    def start_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run the rest of the exchange in a task (it ends with an answer or an abort)."""
        self._task = asyncio.get_running_loop().create_task(coroutine)

    def read_body(self, head: RequestHead, length: int | None) -> LeanResponse:
        """The request's body as a stream, framed as it arrives (`length`: None = chunked);
        reading from the socket pauses while much of it waits unread."""
        body = LeanResponse(self._transport, self._body_dropped)
        self._body = body
        self._start_framing(length)
        if not self._framing:
            self._body_ended(None)
        elif head.body:
            self._frame_body(head.body)
        return body

    def skip_body(self, head: RequestHead, length: int | None) -> None:
        """A body not read: its bytes are framed and dropped as they come, so the connection
        can carry the next request (one declaring over `DISCARD_LIMIT` bytes closes instead)."""
        if length is not None and length > DISCARD_LIMIT:
            self.keep_alive = False
            return
        self._start_framing(length)
        if head.body and self._framing:
            self._frame_body(head.body)

    def answer(self, status: int, content_type: bytes, body: bytes, extra: bytes = b"") -> None:
        """Write a whole answer with this body; `extra`: more header lines."""
        start = b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n%b" % (
            status,
            reason_phrase(status).encode(),
            content_type,
            len(body),
            extra,
        )
        self.write_answer(start, body)

    def answer_problem(self, status: int, detail: str | None = None, extra: bytes = b"") -> None:
        """The invocation service's problem+json answer."""
        body = invocation_problem(status, detail)
        self.answer(status, PROBLEM_CONTENT_TYPE.encode(), body, extra)

    def write_answer(self, start: bytes, body: bytes) -> None:
        """Write a whole answer (`start`: its status line and headers, no blank line)."""
        self.write(b"%b%b%b\r\n%b" % (start, self._date_header(), self.closing_header(), body))
        self.finish_exchange()

    def closing_header(self) -> bytes:
        """`Connection: close` when the connection ends after this answer, else nothing."""
        return b"" if self.keep_alive else b"Connection: close\r\n"

    def date_header(self) -> bytes:
        """`Date: ...\r\n`."""
        return self._date_header()

    def finish_exchange(self) -> None:
        """The answer is written: take the next request, or close."""
        self.busy = False
        self._task = None
        if not self.keep_alive or self.lost:
            self.close()
            return
        self._start_idle()
        if self._framing:
            # The body is still arriving (its reader stopped early): it is framed and dropped,
            # and must all come within the keep-alive timeout.
            if self._body is not None:
                self._body.close()
            return
        if self._backlog:
            backlog, self._backlog = self._backlog, b""
            if self._transport is not None:
                self._transport.resume_reading()
            self._take_head(backlog)

    # -- heads ------------------------------------------------------------------------------------

    def _take_head(self, data: bytes) -> None:
        try:
            head = self._parser.feed(data)
        except H1Error as error:
            self.keep_alive = False
            self.busy = True
            self.answer_problem(400, error.detail)
            return
        if head is None:
            return
        self._cancel_idle()
        self._parser = RequestHeadParser(transfer_encoding=True)
        self.busy = True
        self.keep_alive = _keeps_alive(head)
        try:
            length = _body_length(head)
        except H1Error as error:  # the body cannot be framed
            self.keep_alive = False
            self.answer_problem(400, error.detail)
            return
        if length == 0 and head.body:
            # No body: what came after the head is the next request's (pipelined).
            self._backlog = head.body + self._backlog
            head = dataclasses.replace(head, body=b"")
        self._routes.serve(self, head, length)

    def _start_idle(self) -> None:
        self._cancel_idle()
        self._idle = asyncio.get_running_loop().call_later(KEEP_ALIVE_TIMEOUT, self.close)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    # -- bodies -----------------------------------------------------------------------------------

    @property
    def _framing(self) -> bool:
        return self._chunks is not None or self._remaining > 0

    def _start_framing(self, length: int | None) -> None:
        if length is None:
            self._chunks = ChunkedDecoder(self._body_data)
        else:
            self._remaining = length

    def _frame_body(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is not None:
            try:
                chunks.feed(data)
            except MalformedChunk as error:
                _log.warning("bad chunked body on the attach listener", extra={"error": str(error)})
                self._chunks = None
                self._body_ended(ConnectionResetError(f"malformed chunked body: {error}"))
                self.abort()
                return
            if chunks.done:
                self._chunks = None
                self._body_ended(None)
                if chunks.leftover:
                    self._after_body(chunks.leftover)
            return
        remaining = self._remaining
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            self._body_data(data)
            return
        self._remaining = 0
        self._body_data(data[:remaining])
        self._body_ended(None)
        if len(data) > remaining:
            self._after_body(data[remaining:])

    def _body_data(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def _body_ended(self, error: BaseException | None) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.end(error)
        if error is None and not self.busy and not self.lost:
            self.finish_exchange()  # a body dropped after the answer has now all arrived

    def _body_dropped(self) -> None:
        """The reader stopped before the body's end: the rest is framed and dropped."""
        self._body = None
        if self._transport is not None and not self.lost:
            self._transport.resume_reading()  # in case the unread bytes had paused it

    def _after_body(self, data: bytes) -> None:
        if self.busy:
            self._backlog += data
        else:
            self._take_head(data)


def _body_length(head: RequestHead) -> int | None:
    """A request body's declared length (0 when none is declared), None when it is chunked;
    H1Error when it cannot be framed (RFC 9112 §6.3)."""
    codings = [
        coding.strip(" \t").lower()
        for name, value in head.headers
        if name.lower() == "transfer-encoding"
        for coding in value.split(",")
        if coding.strip(" \t")
    ]
    if codings:
        if codings[-1] != "chunked":
            raise MalformedChunk(f"Transfer-Encoding {', '.join(codings)} is not chunked")
        return None
    return content_length(head.headers) or 0


def _keeps_alive(head: RequestHead) -> bool:
    connection = (header(head, "connection") or "").lower()
    if head.minor_version == 0:
        return "keep-alive" in connection
    return "close" not in connection
