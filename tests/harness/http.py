"""Blocking HTTP calls to loopback servers, with header names sent exactly as given;
`serve_app`, an aiohttp application served on a free loopback port for async tests; and
`serve_raw`, a server whose handler reads and writes the bytes itself.

For readiness polling and simple checks; tests of async code use their own async clients.
`urllib` is avoided on purpose: it rewrites `NVCF-REQID` as `Nvcf-reqid` and honours proxies.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["HttpResponse", "RawHandler", "http_request", "serve_app", "serve_raw"]

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 at a free port for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_raw(handle: RawHandler) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve each connection with `handle` (which reads and writes the bytes itself) on
    127.0.0.1 at a free port; yields the base URL and the client ports of the connections
    accepted. A connection is closed when `handle` returns; a peer gone mid-read ends it."""
    ports: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ports.append(writer.get_extra_info("peername")[1])
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", ports
    finally:
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class HttpResponse:
    """A complete HTTP response; error statuses are returned, not raised."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """Send one request over a fresh connection and return the whole response (any status).

    `json_body` is encoded as JSON with `Content-Type: application/json`. Connection errors and
    timeouts raise `OSError`.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"http_request needs an http:// URL, not {url!r}")
    all_headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request(method, target, body=body, headers=all_headers)
        response = connection.getresponse()
        return HttpResponse(response.status, response.headers, response.read())
    finally:
        connection.close()
