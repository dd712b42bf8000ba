"""The sidecar's small GET server (health probes, metrics), spoken to byte for byte on loopback."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from nvcf_sidecar.protocol import MAX_HEAD_BYTES, ResponseHead
from nvcf_sidecar.protocol.h1 import parse_response_head
from nvcf_sidecar.worker import get_server
from nvcf_sidecar.worker.get_server import GetServer, Reply

ROUTES = {
    "/v1/health/ready": lambda: Reply(503, "application/json", b'{"status":"not ready"}'),
    "/metrics": lambda: Reply(200, "text/plain", b"up 1\n"),
}


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = GetServer(ROUTES, "127.0.0.1", 0)
    bound = await server.start()
    yield bound
    await server.close()


async def exchange(port: int, *requests: bytes) -> tuple[list[ResponseHead], bool]:
    """Send `requests` one after another on one connection; the answers, and whether the server
    closed the connection afterwards."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            head = parse_response_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
            length = head.content_length() or 0
            body = (
                await reader.readexactly(length) if length and b"HEAD" not in request[:4] else b""
            )
            answers.append(ResponseHead(head.status, head.reason, head.headers, body))
        closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
    except TimeoutError:
        closed = False
    finally:
        writer.close()
    return answers, closed


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: x", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def test_routes_answer_with_their_status_type_and_length_on_one_kept_connection(
    port: int,
) -> None:
    answers, closed = await exchange(
        port, get("/v1/health/ready"), get("/metrics?x=1"), get("/metrics", method="HEAD")
    )
    ready, metrics, head = answers
    assert (ready.status, ready.body) == (503, b'{"status":"not ready"}')
    assert ("Content-Type", "application/json") in ready.headers
    assert (metrics.status, metrics.body) == (200, b"up 1\n")
    assert (head.status, head.content_length(), head.body) == (200, 5, b"")
    assert not closed  # HTTP/1.1: kept alive


@pytest.mark.parametrize(
    ("request_bytes", "status", "extra"),
    [
        (get("/nowhere"), 404, None),
        (get("/metrics", method="POST"), 405, ("Allow", "GET, HEAD")),
    ],
    ids=["unknown-path", "other-method"],
)
async def test_unknown_paths_and_other_methods_are_refused_and_the_connection_kept(
    port: int, request_bytes: bytes, status: int, extra: tuple[str, str] | None
) -> None:
    answers, closed = await exchange(port, request_bytes, get("/metrics"))
    assert [answer.status for answer in answers] == [status, 200]
    if extra is not None:
        assert extra in answers[0].headers
    assert not closed


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/metrics", "Connection: close"),
        get("/metrics", version="1.0"),
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_client_that_does_not_keep_alive_gets_its_answer_then_the_close(
    port: int, request_bytes: bytes
) -> None:
    answers, closed = await exchange(port, request_bytes)
    assert answers[0].status == 200
    assert ("Connection", "close") in answers[0].headers
    assert closed


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (get("/metrics", f"Content-Length: {get_server.MAX_BODY_BYTES + 1}"), 413),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
    ],
    ids=["no-version", "bad-header", "bad-length", "body-too-large", "head-too-large"],
)
async def test_a_bad_request_gets_its_error_and_the_connection_closed(
    port: int, request_bytes: bytes, status: int
) -> None:
    answers, closed = await exchange(port, request_bytes)
    assert answers[0].status == status
    assert closed


async def test_a_small_body_on_a_get_is_read_past(port: int) -> None:
    answers, _ = await exchange(
        port, get("/metrics", "Content-Length: 3") + b"abc", get("/metrics")
    )
    assert [answer.status for answer in answers] == [200, 200]


async def test_an_idle_connection_is_closed(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_server, "IDLE_SECONDS", 0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(1), 5) == b""
    finally:
        writer.close()


async def test_close_ends_open_connections_and_stops_listening() -> None:
    server = GetServer(ROUTES, "127.0.0.1", 0)
    bound = await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", bound)
    await asyncio.wait_for(server.close(), 5)
    assert await asyncio.wait_for(reader.read(1), 5) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", bound)


async def test_close_logs_no_error_for_the_connections_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Closing while clients are connected is a normal stop, not an "Exception in callback"."""
    server = GetServer(ROUTES, "127.0.0.1", 0)
    bound = await server.start()
    connections = [await asyncio.open_connection("127.0.0.1", bound) for _ in range(3)]
    await asyncio.sleep(0.05)  # each connection's handler is waiting for a request head
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(server.close(), 5)
        await asyncio.sleep(0.05)  # the streams' done-callbacks run
    assert [record.getMessage() for record in caplog.records] == []
    for reader, writer in connections:
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        writer.close()


def test_the_sidecar_never_loads_aiohttps_web_server() -> None:
    # The point of this server: `nvcf-sidecar run` stays 2 MiB lighter (docs/performance.md).
    code = (
        "import sys, nvcf_sidecar.cli, nvcf_sidecar.worker.main, nvcf_sidecar.worker.sidecar; "
        "print(sorted(m for m in sys.modules if m.startswith('aiohttp.web')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
