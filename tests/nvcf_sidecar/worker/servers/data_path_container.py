"""A stand-in inference container for the sidecar's data-path tests.

Usage: `data_path_container.py PORT RAW_PORT`. On PORT an aiohttp app (any method):
  /healthz            200
  /sse?n=&delay=      text/event-stream, n events `data: <i>\\n\\n`, `delay` seconds apart
  /big?size=          `size` bytes of a repeating pattern (exact Content-Length)
  /error              500 {"error": "model exploded"}
  /sleep?id=&seconds= holds the request; /state/<id> tells whether it started and whether the
                      client disconnected (seen as the handler being cancelled)
  /state/<id>         {"started": bool, "disconnected": bool}
  anything else       echo: method, raw target, raw header list, body length and sha256, the
                      first 64 KiB of the body (latin-1), and the NVCF-LARGE-OUTPUT-DIR's mode
On RAW_PORT a raw HTTP/1.1 server answers with exact bytes (aiohttp would add Date/Server):
  /fixed        `RAW_FIXED_RESPONSE`
  /die-length   Content-Length 100000, 1000 bytes sent, then the connection is closed
  /die-chunked  chunked, one 5-byte chunk sent, then the connection is closed

Tests load this file as a module too: `launch()` starts it as a process; the constants and
`pattern_bytes()` say what it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

RAW_FIXED_BODY = b'{"answer":42}'
RAW_FIXED_RESPONSE = (
    b"HTTP/1.1 201 Made It\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Trace-Id: abc123\r\n"
    b"Connection: keep-alive, X-Hop\r\n"
    b"X-Hop: secret\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n" + RAW_FIXED_BODY
)
PATTERN = bytes(range(256))
ECHO_BODY_PREFIX = 64 * 1024

_state: dict[str, dict[str, bool]] = {}


def pattern_bytes(size: int) -> bytes:
    """The body /big?size= answers with."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def sse(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("n", "100"))
    delay = float(request.query.get("delay", "0.01"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index in range(count):
        await response.write(f"data: {index}\n\n".encode())
        await asyncio.sleep(delay)
    await response.write_eof()
    return response


async def big(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=pattern_bytes(int(request.query["size"])))


async def error(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"error": "model exploded"}, status=500)


async def sleep(request: web.Request) -> web.Response:
    state = _state.setdefault(request.query["id"], {"started": False, "disconnected": False})
    state["started"] = True
    try:
        await asyncio.sleep(float(request.query.get("seconds", "60")))
    except asyncio.CancelledError:
        state["disconnected"] = True
        raise
    return web.Response(text="slept")


async def state(request: web.Request) -> web.Response:
    return web.json_response(
        _state.get(request.match_info["id"], {"started": False, "disconnected": False})
    )


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    output_dir = Path(request.headers.get("NVCF-LARGE-OUTPUT-DIR", "/nonexistent"))
    mode = output_dir.stat().st_mode & 0o777 if output_dir.is_dir() else None  # noqa: ASYNC240
    document: dict[str, Any] = {
        "method": request.method,
        "target": request.raw_path,
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers
        ],
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_prefix": body[:ECHO_BODY_PREFIX].decode("latin-1"),
        "large_output_dir_mode": mode,
    }
    return web.json_response(document)


async def serve_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                await reader.readexactly(int(value))
        if target == b"/fixed":
            writer.write(RAW_FIXED_RESPONSE)
        elif target == b"/die-length":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"x" * 1000
            )
        elif target == b"/die-chunked":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)  # let the bytes leave before the connection drops
    finally:
        writer.close()


async def main(port: int, raw_port: int) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/healthz", healthz)
    app.router.add_route("*", "/sse", sse)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/error", error)
    app.router.add_route("*", "/sleep", sleep)
    app.router.add_get("/state/{id}", state)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    # The raw server first: /healthz answering means both listen.
    raw = await asyncio.start_server(serve_raw, "127.0.0.1", raw_port)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with raw:
        await asyncio.Event().wait()


@dataclass(frozen=True)
class ContainerProcess:
    """A running container server: the aiohttp app on `port`, the raw server on `raw_port`."""

    port: int
    raw_port: int


@contextmanager
def launch(log_path: Path) -> Iterator[ContainerProcess]:
    """Run this server as a child process until the block ends; waits until it answers."""
    from harness.ports import free_ports  # the test harness, importable in tests only
    from harness.processes import ManagedProcess

    port, raw_port = free_ports(2)
    process = ManagedProcess(
        [sys.executable, __file__, str(port), str(raw_port)],
        log_path=log_path,
        name="data_path_container",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    process.start()
    try:
        process.wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield ContainerProcess(port, raw_port)
    finally:
        process.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
