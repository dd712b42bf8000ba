"""Writing a function's answer to stdout: pretty JSON, raw bytes, event streams as they arrive,
and the body file of an unpacked large response.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Final

import aiohttp
import orjson

from nvcf_sidecar.client.display import InvokeDisplay
from nvcf_sidecar.client.errors import LocalFileError
from nvcf_sidecar.protocol import EVENT_STREAM

__all__ = ["PRETTY_LIMIT_BYTES", "TEXT_LIMIT_BYTES", "read_up_to", "show_body_file", "write_answer"]

PRETTY_LIMIT_BYTES: Final = 16 * 1024 * 1024
"""JSON bodies up to this size are re-indented; larger ones are copied as they are."""
TEXT_LIMIT_BYTES: Final = 64 * 1024
"""A large response's body file that is not JSON is printed when it is text up to this size."""
_CHUNK_BYTES: Final = 256 * 1024


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _pretty(data: bytes) -> bytes | None:
    try:
        return orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2) + b"\n"
    except orjson.JSONDecodeError:
        return None


async def read_up_to(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body's first bytes, at least `limit` of them unless it ends first; True when it did."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
    return b"".join(chunks), True


async def write_answer(response: aiohttp.ClientResponse, stdout: BinaryIO, *, raw: bool) -> int:
    """Copy a final answer's body to `stdout`; returns the bytes received.

    Event streams (and every body when `raw`) are written chunk by chunk as they arrive and
    flushed each time; JSON up to `PRETTY_LIMIT_BYTES` is re-indented; the rest is copied.
    """
    streaming = raw or response.content_type == EVENT_STREAM
    received = 0
    try:
        if not streaming and _is_json(response.content_type):
            head, complete = await read_up_to(response, PRETTY_LIMIT_BYTES)
            received = len(head)
            pretty = _pretty(head) if complete else None
            stdout.write(head if pretty is None else pretty)
        chunks = (
            response.content.iter_any()
            if streaming
            else response.content.iter_chunked(_CHUNK_BYTES)
        )
        async for chunk in chunks:
            received += len(chunk)
            stdout.write(chunk)
            if streaming:
                stdout.flush()
        stdout.flush()
    except aiohttp.ClientError:
        raise
    except OSError as error:
        raise LocalFileError(f"cannot write the answer to stdout: {error}") from error
    return received


def show_body_file(path: Path, stdout: BinaryIO, display: InvokeDisplay) -> None:
    """Print a large response's body file: pretty JSON, else text up to `TEXT_LIMIT_BYTES`, else
    only its size (on stderr)."""
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= PRETTY_LIMIT_BYTES else None
        shown = None if data is None else _pretty(data)
        if shown is None and data is not None and size <= TEXT_LIMIT_BYTES:
            try:
                data.decode("utf-8")
                shown = data
            except UnicodeDecodeError:
                shown = None
        if shown is None:
            display.say(f"{path.name}: {size} bytes, not shown ({path})")
            return
        stdout.write(shown)
        stdout.flush()
    except OSError as error:
        raise LocalFileError(f"cannot show {path}: {error}") from error
