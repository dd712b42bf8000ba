"""The lean client's streamed exchange (`LeanHttpClient.open`), the container call: the same
bytes on the wire as aiohttp's client, bodies streamed both ways with flow control, and every
failure sorted the way the container gate and the problem details need, against real servers
on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from harness.http import RawHandler, serve_app, serve_raw
from nvcf_sidecar.protocol import INFERENCE_CONNECTION, WORKER_SERVICE
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.forward import (
    ContainerCall,
    ContainerCallError,
    ForwardedBody,
    container_failure_problem,
    open_container,
)
from nvcf_sidecar.worker.gate import dropped, refused
from nvcf_sidecar.worker.lean_http import (
    LeanAnswerError,
    LeanClosedError,
    LeanConnectError,
    LeanHttpClient,
    LeanHttpError,
    LeanResetError,
)
from nvcf_sidecar.worker.lean_response import HIGH_WATER
from nvcf_sidecar.worker.sessions import HttpSessions


@pytest.fixture
async def client() -> AsyncIterator[LeanHttpClient]:
    lean = LeanHttpClient(idle_seconds=15.0)
    yield lean
    await lean.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and its body, framed by Content-Length or chunks."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
    if b"transfer-encoding: chunked" not in lines:
        return head, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return head, body
        body += chunk[:-2]


async def chunks(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if pause:
            await asyncio.sleep(pause)
        yield part


# --- the wire -----------------------------------------------------------------------------------


def _call(method: str, body: str, url: str) -> ContainerCall:
    headers = [("NVCF-REQID", "r-1"), ("X-Custom", "a"), ("X-Custom", "b")]
    if body == "bytes":
        return ContainerCall(method, url, headers, b'{"a":1}', None)
    if body == "none":
        return ContainerCall(method, url, headers, None, None)
    declared = 7 if body == "stream-length" else None
    stream = ForwardedBody(b'{"a"', chunks(b":1}"), declared)
    return ContainerCall(method, url, headers, stream, declared)


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("POST", "bytes"),
        ("POST", "none"),
        ("GET", "none"),
        ("DELETE", "none"),
        ("PUT", "stream-length"),
        ("POST", "stream-chunked"),
    ],
)
async def test_both_clients_put_the_same_bytes_on_the_wire(method: str, body: str) -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    config = WorkerConfig.from_env(
        {
            "FUNCTION_ID": "11111111-1111-1111-1111-111111111111",
            "FUNCTION_VERSION_ID": "22222222-2222-2222-2222-222222222222",
            "NVCF_FQDN_GRPC": "http://127.0.0.1:9",
            "NVCF_CONTAINER_CLIENT": "aiohttp",
        }
    )
    async with serve_raw(handle) as (base, _), HttpSessions(config) as sessions:
        lean = LeanHttpClient(idle_seconds=15.0)
        try:
            assert not isinstance(sessions.container_client, LeanHttpClient)
            for client in (sessions.container_client, lean):
                response = await open_container(client, _call(method, body, f"{base}/v2/x?q=1"))
                assert (response.status, await response.read()) == (200, b"ok")
                response.close()
        finally:
            await lean.close()
    assert len(seen) == 2
    assert seen[0] == seen[1]
    assert seen[0][0].startswith(f"{method} /v2/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:".encode())


# --- streaming ----------------------------------------------------------------------------------


async def test_the_answer_streams_while_the_request_body_is_still_sent(
    client: LeanHttpClient,
) -> None:
    # The server answers at once and echoes each chunk as it arrives: a half-duplex client
    # would wait for ever on the head.
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_post("/echo", handle)
    feed: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def body() -> AsyncIterator[bytes]:
        while (part := await feed.get()) is not None:
            yield part

    async with serve_app(app) as base:
        response = await asyncio.wait_for(client.open("POST", f"{base}/echo", [], body()), 5)
        assert response.status == 200
        assert response.content_length is None
        received = b""
        for part in (b"one ", b"two ", b"three"):
            await feed.put(part)
            while not received.endswith(part):
                received += await asyncio.wait_for(response.content.read(100), 5)
        await feed.put(None)
        assert await asyncio.wait_for(response.read(), 5) == b""
        assert received == b"one two three"


async def test_a_large_answer_read_slowly_is_held_back_by_flow_control(
    client: LeanHttpClient,
) -> None:
    total = 16 * 1024 * 1024
    sent = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while sent[0] < total:
            writer.write(block)
            await writer.drain()
            sent[0] += len(block)

    async with serve_raw(handle) as (base, _):
        response = await client.open("GET", base + "/", [])
        assert response.content_length == total
        await asyncio.sleep(0.5)  # nothing read: the server must have been stopped far short
        assert sent[0] < total // 2
        buffered = response._buffered
        assert buffered <= HIGH_WATER + 65536 * 4
        received = 0
        async for chunk in response.content.iter_any():
            received += len(chunk)
        assert received == total


async def test_an_answer_read_to_its_end_gives_the_connection_back_and_a_closed_one_does_not(
    client: LeanHttpClient,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            await writer.drain()

    async with serve_raw(handle) as (base, ports):
        for _ in range(2):
            response = await client.open("POST", base + "/", [], b"x")
            assert await response.read() == b"hello world"
            response.close()
        assert len(ports) == 1
        response = await client.open("POST", base + "/", [], b"x")
        assert await response.content.read(3) == b"hel"
        response.close()  # mid-body: this connection cannot carry another exchange
        response = await client.open("POST", base + "/", [], b"x")
        assert await response.read() == b"hello world"
        assert len(ports) == 2


async def test_an_answer_that_ends_before_the_body_was_sent_drops_the_connection(
    client: LeanHttpClient,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")  # answers without reading the body
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"never"

    async with serve_raw(handle) as (base, ports):
        response = await client.open("POST", base + "/", [], slow(), body_length=10)
        assert (response.status, await response.read()) == (413, b"")
        release.set()
        response = await client.open("POST", base + "/", [], b"x")
        assert response.status == 413
        assert len(ports) == 2


async def test_a_body_source_that_fails_before_the_answer_ends_the_call(
    client: LeanHttpClient,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # never complete: the client gives up first

    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise RuntimeError("the GET attach broke")

    body = ForwardedBody(b"", broken(), None)
    async with serve_raw(handle) as (base, _):
        with pytest.raises(ContainerCallError) as caught:
            await asyncio.wait_for(
                open_container(client, ContainerCall("POST", base + "/", [], body, None)), 5
            )
    assert isinstance(body.error, RuntimeError)
    assert "the request body failed: RuntimeError: the GET attach broke" in str(caught.value)


# --- failures, sorted -----------------------------------------------------------------------------


async def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SMTP ready\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(1)


@pytest.mark.parametrize(
    ("handle", "kind", "source", "is_dropped"),
    [
        (_reset, LeanResetError, INFERENCE_CONNECTION, True),
        (_close, LeanClosedError, WORKER_SERVICE, True),
        (_garbage, LeanAnswerError, WORKER_SERVICE, False),
    ],
    ids=["reset", "closed", "malformed"],
)
async def test_a_failed_exchange_says_how_it_failed(
    client: LeanHttpClient,
    handle: RawHandler,
    kind: type[LeanHttpError],
    source: str,
    is_dropped: bool,
) -> None:
    async with serve_raw(handle) as (base, _):
        with pytest.raises(kind) as caught:
            await asyncio.wait_for(client.open("POST", base + "/", [], b"x"), 5)
    error = caught.value
    assert container_failure_problem(error)[0] == source
    assert dropped(error) is is_dropped
    assert not refused(error)


async def test_no_server_is_a_refusal_the_gate_holds(
    client: LeanHttpClient, unused_tcp_port: int
) -> None:
    with pytest.raises(LeanConnectError) as caught:
        await client.open("GET", f"http://127.0.0.1:{unused_tcp_port}/", [])
    assert refused(caught.value)
    assert not dropped(caught.value)
    assert container_failure_problem(caught.value)[0] == INFERENCE_CONNECTION


async def test_a_body_that_breaks_off_after_the_head_is_an_error_after_its_bytes(
    client: LeanHttpClient,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with serve_raw(handle) as (base, _):
        response = await client.open("GET", base + "/", [])
        assert await asyncio.wait_for(response.content.read(100), 5) == b"partial"
        with pytest.raises(LeanClosedError):
            await asyncio.wait_for(response.content.read(100), 5)
        with pytest.raises((aiohttp.ClientError, OSError)):  # what the relays catch
            await response.read()


async def test_a_connection_given_back_while_its_answer_waits_unread_still_reads(
    client: LeanHttpClient,
) -> None:
    # The answer's last bytes can arrive with the ones that pause reading: the exchange is over
    # and its connection goes back to the pool with reading paused, unless the end resumes it.
    size = HIGH_WATER + 1000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"y" * size)
            await writer.drain()

    async with serve_raw(handle) as (base, ports):
        first = await client.open("GET", base + "/", [])
        await asyncio.sleep(0.3)  # all of it arrives; nothing is read
        second = await asyncio.wait_for(client.open("GET", base + "/", []), 5)
        assert len(await asyncio.wait_for(second.read(), 5)) == size
        assert len(await asyncio.wait_for(first.read(), 5)) == size
        assert len(ports) == 1  # the second call took the first one's connection
