"""The dial-back tunnel of a stateful (gRPC) session (reference nvcf-grpc-sessions §3, §4).

The worker opens a TCP connection to the proxy URI of the work item (port 80 when it names none;
no TLS, even for `https://`, as NVIDIA's worker), sends `CONNECT <path> HTTP/1.1` with the
item's one-use token and the request id, and reads one response head: 200 makes the socket the
tunnel (bytes already read past the head are its first bytes), 401 and 403 are final, anything
else is tried again. Over the tunnel the proxy speaks HTTP/2 (h2c) as a client; the worker
relays those bytes to a fresh connection to the container and back, which is what NVIDIA's
worker does stream by stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from nvcf_sidecar.worker.errors import WorkerError

__all__ = [
    "DIAL_TIMEOUT_SECONDS",
    "ProxyEndpoint",
    "Tunnel",
    "TunnelError",
    "TunnelRefused",
    "dial_back",
    "open_tunnel",
    "splice",
]

DIAL_TIMEOUT_SECONDS: Final = 3.0
"""NVIDIA's worker: the TCP dial to the proxy."""
HEAD_TIMEOUT_SECONDS: Final = 8.5
"""How long the proxy may take to answer the CONNECT."""
CONTAINER_DIAL_SECONDS: Final = 1.0
"""NVIDIA's worker: the dial to the container, per tunnel."""
RETRIES: Final = 5
"""Tries after the first, every connection config in order each time (NVIDIA's worker)."""
FIRST_BACKOFF_SECONDS: Final = 0.01
_HEAD_LIMIT: Final = 64 * 1024
_CHUNK: Final = 64 * 1024


class TunnelError(WorkerError):
    """No tunnel: the proxy could not be reached or refused every try."""


class TunnelRefused(TunnelError):
    """The proxy answered the CONNECT with something other than 200."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the proxy answered {status} {reason}".rstrip())
        self.status = status

    @property
    def final(self) -> bool:
        """401 and 403: the token is wrong or spent; trying again cannot help."""
        return self.status in (401, 403)


@dataclass(frozen=True)
class ProxyEndpoint:
    """One HTTP/1 connection config of a work item: where to dial back, with which token."""

    uri: str
    token: str


@dataclass
class Tunnel:
    """An established tunnel: the proxy's socket, after its 200."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


def _target(uri: str) -> tuple[str, int, str, str]:
    """(host, port, request target, Host header) of a proxy URI."""
    parts = urlsplit(uri if "://" in uri else f"http://{uri}")
    if not parts.hostname:
        raise TunnelError(f"proxy URI {uri!r} names no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise TunnelError(f"proxy URI {uri!r} has a bad port") from None
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return parts.hostname, port, parts.path or "/", host_header


async def dial_back(endpoint: ProxyEndpoint, request_id: str) -> Tunnel:
    """One CONNECT to the proxy; the tunnel on 200, TunnelRefused or TunnelError otherwise."""
    host, port, target, host_header = _target(endpoint.uri)
    try:
        async with asyncio.timeout(DIAL_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
    except (OSError, TimeoutError) as error:
        raise TunnelError(f"cannot reach the proxy at {host}:{port}: {error!r}") from None
    try:
        head = (
            f"CONNECT {target} HTTP/1.1\r\n"
            f"Host: {host_header}\r\n"
            "User-Agent: nvcf-sidecar\r\n"
            f"Authorization: Bearer {endpoint.token}\r\n"
            f"X-Request-Id: {request_id}\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        writer.write(head.encode("latin-1"))
        async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
        writer.close()
        raise TunnelError(f"the proxy at {host}:{port} gave no answer head: {error!r}") from None
    except BaseException:
        writer.close()
        raise
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        writer.close()
        raise TunnelError(f"the proxy answered {status_line[:100]!r}, not an HTTP/1.x status")
    status = int(fields[1])
    if status != 200:
        writer.close()
        raise TunnelRefused(status, fields[2] if len(fields) > 2 else "")
    return Tunnel(reader, writer)


async def open_tunnel(
    endpoints: Sequence[ProxyEndpoint], request_id: str, log: logging.LoggerAdapter[Any]
) -> Tunnel:
    """Dial back through each endpoint in order, up to `RETRIES` more rounds with doubling
    pauses; a 401 or 403 ends the tries at once."""
    if not endpoints:
        raise TunnelError("no HTTP/1 connection config in the work item")
    pause = FIRST_BACKOFF_SECONDS
    last: TunnelError | None = None
    for attempt in range(RETRIES + 1):
        for endpoint in endpoints:
            try:
                return await dial_back(endpoint, request_id)
            except TunnelRefused as error:
                if error.final:
                    raise
                last = error
            except TunnelError as error:
                last = error
            log.debug("dial-back failed", extra={"attempt": attempt + 1, "error": str(last)})
        if attempt < RETRIES:
            await asyncio.sleep(pause)
            pause *= 2
    assert last is not None
    raise last


async def splice(
    tunnel: Tunnel, container: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> tuple[int, int]:
    """Relay bytes both ways until either side closes, then close both; (bytes to the
    container, bytes back to the proxy)."""
    counts = [0, 0]

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, index: int) -> None:
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            counts[index] += len(chunk)
            await sink.drain()

    container_reader, container_writer = container
    pumps = [
        asyncio.create_task(pump(tunnel.reader, container_writer, 0)),
        asyncio.create_task(pump(container_reader, tunnel.writer, 1)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        for writer in (container_writer, tunnel.writer):
            writer.close()
        for task in pumps:
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await task
        for writer in (container_writer, tunnel.writer):
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
    return counts[0], counts[1]
