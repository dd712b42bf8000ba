"""The lean HTTP/1.1 client of the POST attach: framing, keep-alive, and every broken answer,
against real servers on loopback (aiohttp's, and raw asyncio servers that answer byte for byte).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from harness.http import serve_app, serve_raw
from nvcf_sidecar.worker.lean_framing import AnswerFramer
from nvcf_sidecar.worker.lean_http import LeanHttpClient, LeanHttpError

Answerer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(answer: Answerer) -> AsyncIterator[tuple[str, list[int]]]:
    """A server that reads one request head per exchange and lets `answer` write the bytes;
    yields its URL and the client ports of the connections it accepted."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await answer(reader, writer)
            if writer.is_closing():
                return

    async with serve_raw(serve) as (base, ports):
        yield f"{base}/attach?x=1", ports


def writes(*chunks: bytes, close: bool = False) -> Answerer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)  # separate reads on the client's side
        if close:
            writer.close()

    return answer


@pytest.fixture
async def client() -> AsyncIterator[LeanHttpClient]:
    lean = LeanHttpClient(idle_seconds=300.0)
    yield lean
    await lean.close()


# --- against aiohttp's server --------------------------------------------------------------------


@asynccontextmanager
async def aiohttp_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with serve_app(app) as base:
        yield base


async def test_a_post_reaches_the_server_whole_and_the_connection_is_kept(
    client: LeanHttpClient,
) -> None:
    seen: list[tuple[str, str, str, bytes, int]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername")[1]  # type: ignore[union-attr]
        seen.append((request.method, request.path_qs, request.headers["Authorization"], body, peer))
        return web.Response(status=200, text="taken", headers={"X-Answer": "1"})

    async with aiohttp_server(handler) as base:
        for payload in (b"first", b"x" * 200_000):
            answer = await client.request(
                "POST", f"{base}/v2/attach?a=b", [("Authorization", "Bearer t")], payload
            )
            assert (answer.status, answer.reason, answer.body) == (200, "OK", b"taken")
            assert ("X-Answer", "1") in answer.headers
    assert [(m, p, a, b) for m, p, a, b, _ in seen] == [
        ("POST", "/v2/attach?a=b", "Bearer t", b"first"),
        ("POST", "/v2/attach?a=b", "Bearer t", b"x" * 200_000),
    ]
    assert seen[0][4] == seen[1][4]  # the same client port: one kept-alive connection


async def test_headers_go_out_as_given_between_host_and_the_framing(
    client: LeanHttpClient,
) -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    # The caller strips hop-by-hop headers (the container call's `container_headers` does): the
    # client writes what it is given, in order, duplicates kept.
    given = [("X-B", "1"), ("Keep-Alive", "timeout=5"), ("X-A", "2"), ("X-B", "3")]
    async with serve_raw(serve) as (base, _):
        answer = await client.request("DELETE", f"{base}/x", given, b"ok")
    assert answer.status == 200
    host = base.removeprefix("http://")
    assert heads == [
        f"DELETE /x HTTP/1.1\r\nHost: {host}\r\nX-B: 1\r\nKeep-Alive: timeout=5\r\n"
        "X-A: 2\r\nX-B: 3\r\nContent-Length: 2\r\n\r\n".encode()
    ]


async def test_a_chunked_answer_is_read_whole_and_a_long_one_kept_to_the_limit(
    client: LeanHttpClient,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=410)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"gone ", b"for ", b"good"):
            await response.write(part)
        await response.write_eof()
        return response

    async with aiohttp_server(handler) as base:
        answer = await client.request("POST", f"{base}/", [], b"x")
        assert (answer.status, answer.body) == (410, b"gone for good")
        short = await client.request("POST", f"{base}/", [], b"x", limit=6)
        assert short.body == b"gone f"


# --- byte for byte -------------------------------------------------------------------------------


async def test_interim_answers_are_skipped_and_length_framed_answers_reuse_the_connection(
    client: LeanHttpClient,
) -> None:
    answer_bytes = writes(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
        b"\r\nhel",
        b"lo",
    )
    async with raw_server(answer_bytes) as (url, ports):
        for _ in range(3):
            answer = await client.request("POST", url, [], b"body")
            assert (answer.status, answer.headers, answer.body) == (
                200,
                [("Content-Length", "5")],
                b"hello",
            )
    assert len(ports) == 1


@pytest.mark.parametrize(
    "answer_bytes",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", id="close"
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", id="http-1.0"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", id="extra-bytes"),
    ],
)
async def test_an_answer_that_cannot_be_followed_closes_its_connection(
    client: LeanHttpClient, answer_bytes: bytes
) -> None:
    async with raw_server(writes(answer_bytes)) as (url, ports):
        for _ in range(2):
            assert (await client.request("POST", url, [], b"")).body == b"ok"
    assert len(ports) == 2


async def test_an_answer_without_length_is_read_to_the_close(client: LeanHttpClient) -> None:
    async with raw_server(writes(b"HTTP/1.1 200 OK\r\n\r\nto the", b" end", close=True)) as (
        url,
        ports,
    ):
        assert (await client.request("POST", url, [], b"")).body == b"to the end"
        assert (await client.request("POST", url, [], b"")).body == b"to the end"
    assert len(ports) == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    client: LeanHttpClient,
) -> None:
    async def answer_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()  # as a server whose keep-alive timeout ran out

    async with raw_server(answer_then_hang_up) as (url, ports):
        assert (await client.request("POST", url, [], b"")).status == 204
        await asyncio.sleep(0.1)
        assert (await client.request("POST", url, [], b"")).status == 204
    assert len(ports) == 2


async def test_connections_idle_too_long_are_not_reused() -> None:
    lean = LeanHttpClient(idle_seconds=0.05)
    try:
        async with raw_server(writes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as (
            url,
            ports,
        ):
            await lean.request("POST", url, [], b"")
            await asyncio.sleep(0.1)
            await lean.request("POST", url, [], b"")
        assert len(ports) == 2
    finally:
        await lean.close()


@pytest.mark.parametrize(
    ("answer_bytes", "message"),
    [
        (
            b"SPDY/3 200 OK\r\n\r\n",
            "malformed answer: Failed to parse HTTP response: invalid HTTP version",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            "closed the connection before the answer ended",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "malformed answer: chunk size b'zz'",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            "chunk data longer than its size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "malformed answer: conflicting Content-Length",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols (101) unasked"),
        (b"", "closed the connection before the answer ended"),
    ],
    ids=[
        "not-http",
        "short-body",
        "chunk-size",
        "chunk-overrun",
        "two-lengths",
        "101",
        "no-answer",
    ],
)
async def test_a_broken_answer_is_an_error_and_its_connection_is_dropped(
    client: LeanHttpClient, answer_bytes: bytes, message: str
) -> None:
    async with raw_server(writes(answer_bytes, close=True)) as (url, ports):
        with pytest.raises(LeanHttpError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await client.request("POST", url, [], b"x")
        with pytest.raises(LeanHttpError):
            await client.request("POST", url, [], b"x")
    assert len(ports) == 2


async def test_no_server_is_a_connection_error_naming_the_address(
    client: LeanHttpClient, unused_tcp_port: int
) -> None:
    with pytest.raises(LeanHttpError) as caught:
        await client.request("POST", f"http://127.0.0.1:{unused_tcp_port}/", [], b"")
    assert str(caught.value).startswith(
        f"cannot connect to 127.0.0.1:{unused_tcp_port}: ConnectionRefusedError"
    )
    assert isinstance(caught.value, ConnectionError)


@pytest.mark.parametrize(
    ("url", "headers", "message"),
    [
        ("ftp://127.0.0.1/", [], "not an http:// or https:// URL"),
        ("http://127.0.0.1:99999/", [], "Port out of range"),
        (
            "http://127.0.0.1:1/",
            [("Authorization", "Bearer a\r\nX-Evil: 1")],
            "invalid header value",
        ),
    ],
)
async def test_a_request_that_cannot_be_written_is_refused_before_connecting(
    client: LeanHttpClient, url: str, headers: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(LeanHttpError, match=message):
        await client.request("POST", url, headers, b"")


async def test_a_cancelled_call_drops_its_connection(client: LeanHttpClient) -> None:
    started = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        await asyncio.sleep(30)

    async with raw_server(never_answer) as (url, _):
        call = asyncio.create_task(client.request("POST", url, [], b"x"))
        await asyncio.wait_for(started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not any(client._idle.values())


# --- the framing, fed in every split -------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", b"hello world"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
            b"hello world",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
    ids=["length", "chunked-with-trailer", "interim-then-204"],
)
def test_every_split_of_an_answer_frames_it_the_same(wire: bytes, body: bytes) -> None:
    for cut in range(1, len(wire)):
        received = bytearray()
        reader = AnswerFramer("POST", received.extend)
        reader.feed(wire[:cut])
        reader.feed(wire[cut:])
        assert reader.finished(), cut
        assert reader.reusable, cut
        assert received == body, cut


async def test_a_connection_closed_under_a_call_is_an_error_not_a_crash(
    client: LeanHttpClient,
) -> None:
    async with raw_server(writes(b"HTTP/1.1 204 No Content\r\n\r\n")) as (url, _):
        connection = await client._connect(client._origin(url))
        assert connection.transport is not None
        connection.transport.close()  # closing, not yet lost: the write goes nowhere
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        _, done = connection.begin(AnswerFramer("POST", lambda _data: None))
        connection.write(request)
        with pytest.raises(LeanHttpError, match="closed"):
            await asyncio.wait_for(done, 5)


def test_an_http_1_0_answer_fed_a_byte_at_a_time_is_not_reused() -> None:
    wire = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    received = bytearray()
    reader = AnswerFramer("POST", received.extend)
    for index in range(len(wire)):
        reader.feed(wire[index : index + 1])
    assert reader.finished()
    assert received == b"ok"
    assert not reader.reusable
