"""The bytes of one gRPC session between the caller and its worker's tunnel (reference
nvcf-grpc-sessions §3): the caller's HTTP/2 replayed and relayed as it came, the container's
header blocks re-encoded to carry `nvcf-reqid`, as NVIDIA's proxy adds it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

import hpack

from nvcf_platform.invocation.h2frames import (
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    Frame,
    H2Error,
    header_fragment,
    header_frames,
    header_table_size,
    is_settings_ack,
    read_frame,
)

__all__ = ["Tunnel", "join_session"]

_log = logging.getLogger(__name__)

_CHUNK: Final = 64 * 1024
_MAX_FRAME_ANY: Final = (1 << 24) - 1
"""The largest frame HTTP/2 allows: once the peers' SETTINGS are exchanged, frames may be
larger than the default 16 KiB."""
PUSH_PROMISE: Final = 0x5


@dataclass
class Tunnel:
    """A worker's tunnel, after the proxy's 200."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class _ResponseHeads:
    """The container's header blocks, re-encoded for the caller with `nvcf-reqid` on each
    stream's response head (and `Set-Cookie: nvcf-request-id=<reqid>` on the first), as
    NVIDIA's proxy adds them. One HPACK decoder follows the container's encoder, one encoder
    the caller's decoder; everything but header blocks passes as it came."""

    def __init__(self, request_id: str, table_size: int) -> None:
        self._request_id = request_id
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = table_size
        self._encoder = hpack.Encoder()
        if table_size != 4096:
            self._encoder.header_table_size = table_size
        self._answered: set[int] = set()
        self._cookie = False

    def transcode(self, stream_id: int, block: bytes) -> bytes:
        headers = [
            (bytes(name), bytes(value)) for name, value in self._decoder.decode(block, raw=True)
        ]
        if stream_id not in self._answered and any(n == b":status" for n, _ in headers):
            self._answered.add(stream_id)
            headers.append((b"nvcf-reqid", self._request_id.encode()))
            if not self._cookie:
                self._cookie = True
                headers.append((b"set-cookie", f"nvcf-request-id={self._request_id}".encode()))
        return bytes(self._encoder.encode(headers))


async def _relay_responses(
    tunnel: Tunnel, writer: asyncio.StreamWriter, heads: _ResponseHeads
) -> None:
    """The container's frames to the caller, header blocks re-encoded by `heads`."""
    while True:
        try:
            frame = await read_frame(tunnel.reader, limit=_MAX_FRAME_ANY)
        except asyncio.IncompleteReadError:
            return
        if frame.kind not in (HEADERS, PUSH_PROMISE):
            writer.write(frame.raw)
            await writer.drain()
            continue
        if frame.kind == PUSH_PROMISE:
            raise H2Error("the container sent a server push; the gRPC proxy relays none")
        block = bytearray(header_fragment(frame))
        last = frame
        while not last.flags & END_HEADERS:
            last = await read_frame(tunnel.reader, limit=_MAX_FRAME_ANY)
            if last.kind != CONTINUATION or last.stream_id != frame.stream_id:
                raise H2Error("a response header block is interrupted")
            block += last.payload
        encoded = heads.transcode(frame.stream_id, bytes(block))
        end_stream = bool(frame.flags & END_STREAM)
        writer.write(header_frames(frame.stream_id, encoded, end_stream=end_stream))
        await writer.drain()


async def join_session(
    frames: list[Frame],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tunnel: Tunnel,
    request_id: str,
) -> None:
    """Replay the caller's preface and frames into the tunnel, then relay both ways until
    either closes. The one SETTINGS ACK the caller sends for the proxy's own SETTINGS is not
    passed on (the container never sent those settings); the container's header blocks get
    `nvcf-reqid` (`_ResponseHeads`)."""
    kept = [frame for frame in frames if not is_settings_ack(frame)]
    ack_pending = len(kept) == len(frames)  # the caller's ACK is still to come
    tunnel.writer.write(PREFACE + b"".join(frame.raw for frame in kept))
    heads = _ResponseHeads(request_id, header_table_size(frames))

    async def upstream() -> None:
        nonlocal ack_pending
        while ack_pending:
            frame = await read_frame(reader, limit=_MAX_FRAME_ANY)
            if is_settings_ack(frame):
                ack_pending = False
            else:
                tunnel.writer.write(frame.raw)
                await tunnel.writer.drain()
        while chunk := await reader.read(_CHUNK):
            tunnel.writer.write(chunk)
            await tunnel.writer.drain()

    pumps = [
        asyncio.create_task(upstream()),
        asyncio.create_task(_relay_responses(tunnel, writer, heads)),
    ]
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(
                error, (asyncio.IncompleteReadError, ConnectionError, OSError)
            ):
                _log.warning(
                    "gRPC session relay failed",
                    extra={"request_id": request_id, "error": repr(error)},
                )
    finally:
        for task in pumps:
            task.cancel()
        tunnel.writer.close()
        writer.close()
        await asyncio.gather(*pumps, return_exceptions=True)
