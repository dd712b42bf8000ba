"""Decoding a chunked HTTP/1.1 body (RFC 9112 §7.1) from the bytes a connection receives.

Both ends of this project's lean HTTP/1.1 read chunked bodies: the sidecar's client its
container's streamed answers, the platform's attach listener a worker's streamed POST attach.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from nvcf_sidecar.protocol.errors import MalformedChunk

__all__ = ["MAX_CHUNK_LINE", "ChunkedDecoder"]

MAX_CHUNK_LINE: Final = 4096
"""A chunk-size line (with extensions) or a trailer line longer than this is malformed."""
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")


class ChunkedDecoder:
    """Takes a chunked body piece by piece and hands its data to `sink` as it is framed.

    Chunk extensions and trailers are read and dropped. Once `done`, `leftover` holds what
    arrived after the body's end (the next message's bytes on a kept-alive connection).
    """

    __slots__ = ("_pending", "_remaining", "_sink", "_state", "done", "leftover")

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._pending = bytearray()
        self._state = "size"  # "size", "data", "crlf" (after a chunk's data) or "trailer"
        self._remaining = 0
        self.done = False
        self.leftover = b""

    def feed(self, data: bytes) -> None:
        """Take the next bytes; raises MalformedChunk when they break the framing."""
        if self.done:
            self.leftover += data
            return
        pending = self._pending
        pending += data
        while pending:
            if self._state == "data":
                take = min(self._remaining, len(pending))
                chunk = bytes(pending[:take])
                del pending[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "crlf"
                self._sink(chunk)
                continue
            end = pending.find(b"\n")
            if end == -1:
                if len(pending) > MAX_CHUNK_LINE:
                    raise MalformedChunk("a chunk line too long")
                return
            line = bytes(pending[:end]).rstrip(b"\r")
            del pending[: end + 1]
            if self._state == "crlf":
                if line:
                    raise MalformedChunk("chunk data longer than its size")
                self._state = "size"
            elif self._state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not _CHUNK_SIZE.fullmatch(size):
                    raise MalformedChunk(f"chunk size {line[:40]!r}")
                self._remaining = int(size, 16)
                self._state = "data" if self._remaining else "trailer"
            elif not line:  # the blank line after the trailers ends the body
                self.done = True
                self.leftover = bytes(pending)
                pending.clear()
                return
