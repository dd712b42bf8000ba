"""The little of HTTP/2 (RFC 9113) the gRPC proxy reads and writes itself: frames on an asyncio
stream, the first request's header block, and the answers it gives without a worker.

The proxy does not terminate the callers' HTTP/2: once a session's tunnel is open it hands the
caller's bytes to the container as they came. Before that it reads frames only up to the first
HEADERS (to learn the function and the caller's token), and answers refusals itself.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import hpack

__all__ = [
    "EMPTY_SETTINGS",
    "PREFACE",
    "Frame",
    "H2Error",
    "goaway",
    "grpc_refusal",
    "header_fragment",
    "header_frames",
    "header_table_size",
    "is_settings_ack",
    "read_frame",
    "read_request_headers",
]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA: Final = 0x0
HEADERS: Final = 0x1
SETTINGS: Final = 0x4
GOAWAY: Final = 0x7
CONTINUATION: Final = 0x9
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY: Final = 0x20
_HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = 16_384
"""The default SETTINGS_MAX_FRAME_SIZE: what a peer may send before it hears ours."""
MAX_HEADER_BLOCK: Final = 256 * 1024
EMPTY_SETTINGS: Final = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""A SETTINGS frame with no parameter: the server's preface, all defaults."""


class H2Error(Exception):
    """The caller's bytes are not the HTTP/2 this proxy can read."""


@dataclass(frozen=True)
class Frame:
    """One frame: its type, flags, stream id, payload, and its bytes as they came."""

    kind: int
    flags: int
    stream_id: int
    payload: bytes
    raw: bytes


async def read_frame(reader: asyncio.StreamReader, *, limit: int = MAX_FRAME) -> Frame:
    """The next frame; H2Error for one over `limit` bytes, IncompleteReadError at EOF."""
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    if length > limit:
        raise H2Error(f"a frame of {length} bytes, over the maximum of {limit}")
    payload = await reader.readexactly(length) if length else b""
    stream_id = _HEADER.unpack(head[5:9])[0] & 0x7FFF_FFFF
    return Frame(head[3], head[4], stream_id, payload, head + payload)


def header_fragment(frame: Frame) -> bytes:
    """A HEADERS frame's header block fragment, padding and priority removed."""
    data = frame.payload
    pad = 0
    if frame.flags & PADDED:
        if not data:
            raise H2Error("a padded HEADERS frame without its pad length")
        pad, data = data[0], data[1:]
    if frame.flags & PRIORITY:
        data = data[5:]
    if pad > len(data):
        raise H2Error("HEADERS padding longer than the frame")
    return data[: len(data) - pad]


async def read_request_headers(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], list[Frame]]:
    """After the caller's preface: the first request's stream id and headers (names lower
    case), and every frame read on the way, in order (the caller's SETTINGS, WINDOW_UPDATEs,
    the HEADERS and CONTINUATIONs). H2Error for anything else before them."""
    preface = await reader.readexactly(len(PREFACE))
    if preface != PREFACE:
        raise H2Error("not an HTTP/2 connection preface (h2c with prior knowledge only)")
    frames: list[Frame] = []
    block = bytearray()
    stream_id = 0
    while True:
        frame = await read_frame(reader)
        frames.append(frame)
        if stream_id == 0 and frame.kind != HEADERS:
            if frame.kind not in (SETTINGS, 0x8, 0x6, 0x2):  # settings, window, ping, priority
                raise H2Error(f"frame type {frame.kind} before the first request's HEADERS")
            continue
        if stream_id == 0:
            stream_id = frame.stream_id
            block += header_fragment(frame)
        elif frame.kind == CONTINUATION and frame.stream_id == stream_id:
            block += frame.payload
        else:
            raise H2Error("the first request's header block is interrupted")
        if len(block) > MAX_HEADER_BLOCK:
            raise H2Error("the first request's header block is too large")
        if frame.flags & END_HEADERS:
            break
    try:
        decoded = hpack.Decoder().decode(bytes(block), raw=True)
    except hpack.HPACKError as error:
        raise H2Error(f"the first request's header block cannot be decoded: {error}") from None
    headers: dict[str, str] = {}
    for name, value in decoded:
        key = bytes(name).decode("latin-1").lower()
        headers.setdefault(key, bytes(value).decode("latin-1"))
    return stream_id, headers, frames


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + _HEADER.pack(stream_id) + payload
    )


def grpc_refusal(stream_id: int, *, grpc: bool, code: int, http_status: int, message: str) -> bytes:
    """The answer to a refused first request, as NVIDIA's proxy writes it: for a gRPC caller
    (`content-type: application/grpc`) HTTP 200 with `grpc-status` and `grpc-message` in one
    HEADERS frame ending the stream; for others the HTTP status and the message as text."""
    encoder = hpack.Encoder()
    if grpc:
        fields: Sequence[tuple[str, str]] = (
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", str(code)),
            ("grpc-message", message),
        )
        block = encoder.encode(fields)
        return _frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
    body = message.encode()
    fields = (
        (":status", str(http_status)),
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
    )
    head = _frame(HEADERS, END_HEADERS, stream_id, encoder.encode(fields))
    return head + _frame(DATA, END_STREAM, stream_id, body)


def goaway(last_stream_id: int, code: int = 0) -> bytes:
    """A GOAWAY: no stream after `last_stream_id` will be served (`code` 0: no error)."""
    return _frame(GOAWAY, 0, 0, _HEADER.pack(last_stream_id) + _HEADER.pack(code))


def is_settings_ack(frame: Frame) -> bool:
    return frame.kind == SETTINGS and bool(frame.flags & ACK)


def header_frames(stream_id: int, block: bytes, *, end_stream: bool) -> bytes:
    """A header block as HEADERS (and CONTINUATION frames beyond the default frame size)."""
    chunks = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    out = bytearray()
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        flags = END_HEADERS if last else 0
        if index == 0:
            out += _frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream_id, chunk)
        else:
            out += _frame(CONTINUATION, flags, stream_id, chunk)
    return bytes(out)


def header_table_size(frames: Sequence[Frame]) -> int:
    """SETTINGS_HEADER_TABLE_SIZE of the last SETTINGS among `frames` that sets it (4096)."""
    size = 4096
    for frame in frames:
        if frame.kind != SETTINGS or frame.flags & ACK:
            continue
        for offset in range(0, len(frame.payload) - 5, 6):
            if int.from_bytes(frame.payload[offset : offset + 2], "big") == 0x1:
                size = int.from_bytes(frame.payload[offset + 2 : offset + 6], "big")
    return size
