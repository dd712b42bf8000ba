"""A small HTTP/1.1 server for the sidecar's own GET endpoints: health probes and metrics.

aiohttp's web server would be the only reason the sidecar loads `aiohttp.web`, 2 MiB of its idle
memory, for three routes that a kubelet probe or a Prometheus scraper reads. This one answers
GET and HEAD on fixed paths from synchronous handlers, keeps connections alive (HTTP/1.1) until
the client closes them or stays idle `IDLE_SECONDS`, and holds every request to the attach
protocol's head rules (`protocol.parse_request_head`: at most `MAX_HEAD_BYTES` and
`MAX_HEAD_HEADERS`). A malformed request gets 400 and its connection closed; an unknown path
404; another method 405 with `Allow: GET, HEAD`; a request body over `MAX_BODY_BYTES` 413.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from nvcf_sidecar.protocol import MAX_HEAD_BYTES, H1Error, encode_response_head
from nvcf_sidecar.protocol.h1 import parse_request_head

__all__ = ["IDLE_SECONDS", "MAX_BODY_BYTES", "GetServer", "Reply"]

IDLE_SECONDS: Final = 75.0
"""A kept-alive connection with no new request for this long is closed (aiohttp's default)."""
MAX_BODY_BYTES: Final = 65536
"""A GET may carry a body; one larger than this is refused (413) rather than read."""
_TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a route answers."""

    status: int
    content_type: str
    body: bytes


class GetServer:
    """Serves `routes` (path -> handler) on `host`:`port`; `start()`, then `close()`."""

    def __init__(self, routes: Mapping[str, Callable[[], Reply]], host: str, port: int) -> None:
        self._routes = dict(routes)
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> int:
        """Listen; returns the bound port (the chosen one when `port` was 0)."""
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_HEAD_BYTES
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._closing = True
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stayed silent: nothing to answer
        except asyncio.CancelledError:
            if not self._closing or task is None:
                raise
            # `close()` ended the connection: end normally, or Python 3.11's stream callback
            # logs the cancelled task as an "Exception in callback" at every sidecar stop.
            task.uncancel()
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is to be closed."""
        try:
            async with asyncio.timeout(IDLE_SECONDS):
                raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if error.partial:
                await _send(writer, Reply(400, _TEXT, b"400: Bad Request"), keep_alive=False)
            return False
        except asyncio.LimitOverrunError:
            await _send(writer, Reply(431, _TEXT, b"431: Request Header Fields Too Large"))
            return False
        try:
            head = parse_request_head(raw)
            length = head.content_length() or 0
        except H1Error as error:
            await _send(writer, Reply(400, _TEXT, f"400: {error}".encode()))
            return False
        if length > MAX_BODY_BYTES:
            await _send(writer, Reply(413, _TEXT, b"413: Request Entity Too Large"))
            return False
        if length:
            async with asyncio.timeout(IDLE_SECONDS):
                await reader.readexactly(length)
        keep_alive = _keeps_alive(raw, head.headers)
        route = self._routes.get(head.target.split("?", 1)[0])
        if route is None:
            reply, extra = Reply(404, _TEXT, b"404: Not Found"), []
        elif head.method not in ("GET", "HEAD"):
            reply, extra = Reply(405, _TEXT, b"405: Method Not Allowed"), [("Allow", "GET, HEAD")]
        else:
            reply, extra = route(), []
        await _send(writer, reply, extra, body=head.method != "HEAD", keep_alive=keep_alive)
        return keep_alive


def _keeps_alive(raw: bytes, headers: list[tuple[str, str]]) -> bool:
    tokens = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    if raw[: raw.find(b"\r\n")].endswith(b"HTTP/1.0"):
        return "keep-alive" in tokens
    return "close" not in tokens


async def _send(
    writer: asyncio.StreamWriter,
    reply: Reply,
    extra: list[tuple[str, str]] | None = None,
    *,
    body: bool = True,
    keep_alive: bool = False,
) -> None:
    headers = [("Content-Type", reply.content_type), *(extra or [])]
    head = encode_response_head(reply.status, headers, content_length=len(reply.body))
    if not keep_alive:  # encode_response_head drops hop-by-hop headers; this one is ours to say
        head = head[:-2] + b"Connection: close\r\n\r\n"
    writer.write(head + reply.body if body else head)
    await writer.drain()
