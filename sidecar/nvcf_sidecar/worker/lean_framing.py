"""Framing one HTTP/1.1 answer from the bytes a connection receives: its head, then its body by
Content-Length, by chunks or to the close (RFC 9112 §6.3), interim answers skipped.

The lean client's connections (`lean_http.py`) feed every byte they read into an
`AnswerFramer`, which hands the body's bytes to a callback as they are framed and says when the
answer has ended and whether the connection may carry another exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from nvcf_sidecar.protocol import H1Error, ResponseHead, ResponseHeadParser
from nvcf_sidecar.protocol.chunked import ChunkedDecoder
from nvcf_sidecar.protocol.errors import MalformedChunk
from nvcf_sidecar.protocol.h1 import content_length
from nvcf_sidecar.worker.errors import WorkerError

__all__ = [
    "AnswerFramer",
    "BodySink",
    "LeanAnswerError",
    "LeanClosedError",
    "LeanConnectError",
    "LeanHttpError",
    "LeanResetError",
]

_BODYLESS_STATUSES: Final = frozenset({204, 304})

BodySink = Callable[[bytes], None]
"""Takes the next bytes of an answer's body, in order."""


class LeanHttpError(WorkerError, ConnectionError):
    """The exchange failed: no connection, a broken one, or an answer that is not HTTP/1.1."""


class LeanConnectError(LeanHttpError):
    """No connection could be made: nothing was sent."""


class LeanResetError(LeanHttpError):
    """The connection broke (reset, or a socket error) before the answer ended."""


class LeanClosedError(LeanHttpError):
    """The server closed the connection before the answer ended (no error on the socket)."""


class LeanAnswerError(LeanHttpError):
    """The server's bytes are not an HTTP/1.1 answer to the request."""


class AnswerFramer:
    """Frames one answer; `feed` it every byte the connection reads after the request."""

    __slots__ = (
        "_chunks",
        "_done",
        "_head_parser",
        "_keep_alive",
        "_method",
        "_mode",
        "_remaining",
        "_sink",
        "_version",
        "head",
        "reusable",
    )

    def __init__(self, method: str, sink: BodySink) -> None:
        self._method = method
        self._sink = sink
        self._head_parser = ResponseHeadParser(transfer_encoding=True)
        self._version = b""  # the first bytes of the status line, up to "HTTP/1.x"
        self._keep_alive = False
        self._mode = ""  # "length", "chunked" or "close", once the head is in
        self._remaining = 0
        self._chunks: ChunkedDecoder | None = None
        self.head: ResponseHead | None = None
        """The answer's head, once it is in (interim answers are not kept)."""
        self._done = False
        self.reusable = False
        """Once finished: whether the connection may carry the next exchange."""

    def finished(self) -> bool:
        """Whether the whole answer is in."""
        return self._done

    @property
    def mode(self) -> str:
        """How the body is framed: `length`, `chunked` or `close` (empty: none, or not known)."""
        return self._mode

    def feed(self, data: bytes) -> None:
        """Take the next bytes from the connection; raises LeanAnswerError when they are not an
        HTTP/1.1 answer."""
        if self._done:
            self.reusable = False  # bytes after the answer: the connection is out of step
            return
        if self.head is None:
            if len(self._version) < 8:  # the head may come a few bytes at a time
                self._version += data[: 8 - len(self._version)]
            try:
                head = self._head_parser.feed(data)
            except H1Error as error:
                raise LeanAnswerError(f"malformed answer: {error}") from error
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
            remaining = self._remaining
            if len(data) <= remaining:
                self._remaining = remaining - len(data)
                self._sink(data)
                if self._remaining == 0:
                    self._finish(clean=True)
            else:
                self._remaining = 0
                self._sink(data[:remaining])
                self._finish(clean=False)
        elif self._mode == "chunked":
            self._unchunk(data)
        else:
            self._sink(data)

    def feed_eof(self) -> None:
        """The server closed the connection: the end of a close-framed answer, else
        LeanClosedError."""
        if self._done:
            return
        if self.head is not None and self._mode == "close":
            self._finish(clean=True)
            return
        raise LeanClosedError("the server closed the connection before the answer ended")

    def _start(self, head: ResponseHead) -> bytes:
        """Take a parsed head; returns the body bytes that came with it."""
        if 100 <= head.status < 200:
            if head.status == 101:
                raise LeanAnswerError("the server switched protocols (101) unasked")
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
            if self._mode == "chunked":
                self._chunks = ChunkedDecoder(self._sink)
        else:
            try:
                declared = content_length(head.headers)
            except H1Error as error:
                raise LeanAnswerError(f"malformed answer: {error}") from error
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

    def _unchunk(self, data: bytes) -> None:
        decoder = self._chunks
        assert decoder is not None
        try:
            decoder.feed(data)
        except MalformedChunk as error:
            raise LeanAnswerError(f"malformed answer: {error}") from error
        if decoder.done:
            self._finish(clean=not decoder.leftover)
