"""The lean attach listener over real loopback sockets: HTTP/1.1 framing, keep-alive and the
answers of its routes, byte by byte (test_platform_attach.py and test_platform_pexec.py run the
platform's scenarios on it and on aiohttp's server alike)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from nvcf_platform.invocation.attach_listener import DISCARD_LIMIT, AttachListener
from nvcf_platform.invocation.tokens import AttachTokens, RequestBody, WorkerResponse
from nvcf_platform.listeners import bind_listener
from nvcf_sidecar.protocol import ATTACH_LIVENESS_PATH, ATTACH_PATH, encode_response_head

WAIT = 10.0
INVALID_TOKEN_DETAIL = "The provided authorization token is invalid or has expired"

Answer = tuple[int, dict[str, str], bytes]


class Client:
    """One raw connection to the listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        """The next answer: status, headers (lower-case names), body by its framing."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head.decode().split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) .*", lines[0])
        assert match, lines[0]
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        headers = {name.lower(): value for name, value in headers.items()}
        status = int(match.group(1))
        if status in {100, 204}:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                data = await self.reader.readexactly(size + 2)
                if not size:
                    return status, headers, body
                body += data[:-2]
        length = int(headers["content-length"])
        return status, headers, await asyncio.wait_for(self.reader.readexactly(length), WAIT)

    async def closed(self) -> bool:
        """Whether the listener closed the connection (EOF or a reset before any byte)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), WAIT) == b""
        except ConnectionResetError:
            return True

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.reader.read(1), seconds)
        except TimeoutError:
            return True
        return False


@pytest.fixture
async def tokens() -> AttachTokens:
    return AttachTokens()


@pytest.fixture
async def listener(tokens: AttachTokens) -> AsyncIterator[AttachListener]:
    sock = bind_listener("127.0.0.1", 0)
    server = AttachListener(tokens)
    await server.start(sock)
    try:
        yield server
    finally:
        await server.stop(1.0)
        sock.close()


@pytest.fixture
async def connect(listener: AttachListener) -> AsyncIterator[Any]:
    writers: list[asyncio.StreamWriter] = []

    async def make() -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writers.append(writer)
        return Client(reader, writer)

    yield make
    for writer in writers:
        writer.close()


def post(token: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {ATTACH_PATH} HTTP/1.1", "Host: x", f"Authorization: Bearer {token}"]
    lines += [f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(path: str, token: str | None = None, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x"]
    lines += [] if token is None else [f"Authorization: Bearer {token}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def inner(body: bytes, status: int = 200) -> bytes:
    return encode_response_head(status, [("X-Test", "1")], content_length=len(body)) + body


async def relayed(response: WorkerResponse) -> bytes:
    """What the caller gets of the body; then the response is finished, as the relay does."""
    try:
        return b"".join([chunk async for chunk in response.body(idle_timeout=WAIT)])
    finally:
        response.finish()


def problem(answer: Answer) -> dict[str, Any]:
    status, headers, body = answer
    assert headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = orjson.loads(body)
    assert document["status"] == status
    return document


async def test_post_attach_is_answered_once_relayed_and_the_connection_carries_the_next(
    tokens: AttachTokens, connect: Any
) -> None:
    client = await connect()
    for number in range(3):
        slot = tokens.mint_response(f"request-{number}")
        await client.send(post(slot.token, inner(b"answer %d" % number, status=201)))
        response = await asyncio.wait_for(slot.wait(), WAIT)
        assert (response.status, response.headers[0]) == (201, ("X-Test", "1"))
        assert response.content_length == len(b"answer 0")
        assert await client.nothing_within(0.2)  # held open until the caller has the body
        assert await relayed(response) == b"answer %d" % number
        status, headers, body = await client.answer()
        assert (status, headers["content-length"], body) == (200, "0", b"")
        assert "date" in headers
        assert "connection" not in headers


async def test_chunked_post_body_reaches_the_caller_chunk_by_chunk(
    tokens: AttachTokens, connect: Any
) -> None:
    client = await connect()
    slot = tokens.mint_response("streamed")
    head = encode_response_head(200, [("Content-Type", "text/event-stream")])
    await client.send(
        f"POST {ATTACH_PATH} HTTP/1.1\r\nAuthorization: Bearer {slot.token}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%b\r\n" % (len(head), head)
    )
    response = await asyncio.wait_for(slot.wait(), WAIT)
    assert response.content_length is None
    chunks = response.body(idle_timeout=WAIT)
    for event in (b"data: 1\n\n", b"data: 2\n\n"):
        await client.send(b"%x;ext=1\r\n%b\r\n" % (len(event), event))
        assert await asyncio.wait_for(anext(chunks), WAIT) == event
    await client.send(b"0\r\nTrailer: x\r\n\r\n")
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(chunks), WAIT)
    response.finish()
    assert (await client.answer())[0] == 200


async def test_a_head_in_pieces_and_expect_100_continue(tokens: AttachTokens, connect: Any) -> None:
    client = await connect()
    slot = tokens.mint_response("pieces")
    data = post(slot.token, inner(b"hello"), "Expect: 100-continue")
    head_end = data.index(b"\r\n\r\n") + 4
    await client.send(data[:10])
    await client.send(data[10:head_end])
    assert (await client.answer())[0] == 100
    for index in range(head_end, len(data), 7):  # the inner head too, seven bytes at a time
        await client.send(data[index : index + 7])
    response = await asyncio.wait_for(slot.wait(), WAIT)
    assert await relayed(response) == b"hello"
    assert (await client.answer())[0] == 200


async def test_get_attach_streams_the_callers_body_with_or_without_its_length(
    tokens: AttachTokens, connect: Any
) -> None:
    client = await connect()
    for length in (None, 11):
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for chunk in (b"hello ", b"world", b""):
            queue.put_nowait(chunk)
        body = RequestBody("get", _QueueReader(queue), length)
        token = tokens.mint_request(body)
        await client.send(get(ATTACH_PATH, token))
        status, headers, data = await client.answer()
        assert (status, data, headers["content-type"]) == (
            200,
            b"hello world",
            "application/octet-stream",
        )
        framing = "transfer-encoding" if length is None else "content-length"
        assert headers[framing] == ("chunked" if length is None else "11")
        await client.send(get(ATTACH_PATH, token))  # single use
        assert problem(await client.answer())["detail"] == INVALID_TOKEN_DETAIL


async def test_a_callers_body_that_breaks_off_drops_the_get_attach(
    tokens: AttachTokens, connect: Any
) -> None:
    client = await connect()
    body = RequestBody("broken", _QueueReader(None, b"part"), 100)
    await client.send(get(ATTACH_PATH, tokens.mint_request(body)))
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), WAIT)
    assert b"Content-Length: 100" in head
    assert await asyncio.wait_for(client.reader.read(), WAIT) == b"part"  # then the close


async def test_a_get_attach_to_a_worker_that_stops_reading_then_leaves_ends(
    tokens: AttachTokens, connect: Any
) -> None:
    client = await connect()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    body = _WatchedBody("stalled", _QueueReader(queue), None)
    await client.send(get(ATTACH_PATH, tokens.mint_request(body)))
    for _ in range(64):  # 64 MiB the worker never reads: the listener waits on its socket
        queue.put_nowait(b"x" * (1024 * 1024))
    await asyncio.sleep(0.5)
    assert not body.finished.is_set()
    assert queue.qsize() > 0  # it stopped taking the caller's body
    client.writer.transport.abort()
    await asyncio.wait_for(body.finished.wait(), WAIT)


async def test_refusals_answer_and_keep_the_connection(tokens: AttachTokens, connect: Any) -> None:
    client = await connect()
    await client.send(get(ATTACH_PATH))
    status, headers, body = await client.answer()
    assert (status, body) == (401, b"Header of type `authorization` was missing")
    assert headers["content-type"].startswith("text/plain")
    await client.send(get("/v2/nvcf/elsewhere", "token"))
    assert problem(await client.answer())["status"] == 404
    await client.send(f"DELETE {ATTACH_PATH} HTTP/1.1\r\nAuthorization: x\r\n\r\n".encode())
    answer = await client.answer()
    assert (problem(answer)["status"], answer[1]["allow"]) == (405, "GET,POST")
    await client.send(get(ATTACH_LIVENESS_PATH, "token").replace(b"GET", b"HEAD", 1))
    assert (await client.answer())[1]["allow"] == "GET"
    # An unknown token's body is read and dropped: the next request is still understood.
    await client.send(post("unknown", b"x" * 70_000))
    assert problem(await client.answer())["detail"] == INVALID_TOKEN_DETAIL
    slot = tokens.mint_response("live")
    await client.send(get(ATTACH_LIVENESS_PATH, slot.token))
    assert (await client.answer())[0] == 204
    await client.send(get(ATTACH_LIVENESS_PATH, "unknown"))
    assert problem(await client.answer())["status"] == 410
    assert tokens.response_waiting(slot.token)  # the liveness check used nothing


async def test_an_unread_body_over_the_discard_limit_closes_the_connection(
    connect: Any,
) -> None:
    client = await connect()
    head = post("unknown", b"").replace(
        b"Content-Length: 0", b"Content-Length: %d" % (DISCARD_LIMIT + 1)
    )
    await client.send(head)
    status, headers, _ = await client.answer()
    assert (status, headers["connection"]) == (401, "close")
    assert await client.closed()


@pytest.mark.parametrize(
    ("request_bytes", "detail"),
    [
        (b"NOT HTTP\r\n\r\n", "Failed to parse HTTP request: invalid request line"),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "Transfer-Encoding gzip is not chunked",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting Content-Length values",
        ),
    ],
)
async def test_unreadable_requests_are_400_and_close_the_connection(
    connect: Any, request_bytes: bytes, detail: str
) -> None:
    client = await connect()
    await client.send(request_bytes)
    answer = await client.answer()
    assert problem(answer)["detail"] == detail
    assert answer[1]["connection"] == "close"
    assert await client.closed()


async def test_pipelined_requests_are_answered_in_order(tokens: AttachTokens, connect: Any) -> None:
    client = await connect()
    slot = tokens.mint_response("pipelined")
    await client.send(
        post(slot.token, inner(b"first")) + get(ATTACH_LIVENESS_PATH, "gone") + get("/nowhere", "t")
    )
    response = await asyncio.wait_for(slot.wait(), WAIT)
    assert await client.nothing_within(0.2)  # the next ones wait for the POST's answer
    assert await relayed(response) == b"first"
    assert [(await client.answer())[0] for _ in range(3)] == [200, 410, 404]


async def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(
    connect: Any,
) -> None:
    for request in (
        get(ATTACH_LIVENESS_PATH, "t").replace(b"HTTP/1.1", b"HTTP/1.0"),
        get(ATTACH_LIVENESS_PATH, "t", "Connection: close"),
    ):
        client = await connect()
        await client.send(request)
        answer = await client.answer()
        assert (answer[0], answer[1]["connection"]) == (410, "close")
        assert await client.closed()


async def test_a_worker_gone_or_malformed_mid_body_breaks_the_callers_body(
    tokens: AttachTokens, connect: Any
) -> None:
    for ending in (b"", b"zz\r\n"):  # the connection closed; a chunk size that is not hex
        client = await connect()
        slot = tokens.mint_response("broken")
        head = encode_response_head(200, [])
        await client.send(
            f"POST {ATTACH_PATH} HTTP/1.1\r\nAuthorization: Bearer {slot.token}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%b\r\n5\r\nhello\r\n" % (len(head), head)
        )
        response = await asyncio.wait_for(slot.wait(), WAIT)
        chunks = response.body(idle_timeout=WAIT)
        assert await asyncio.wait_for(anext(chunks), WAIT) == b"hello"
        if ending:
            await client.send(ending)
        else:
            client.writer.close()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(anext(chunks), WAIT)
        response.finish()


async def test_a_large_body_the_caller_reads_slowly_is_held_back_and_arrives_whole(
    tokens: AttachTokens, connect: Any
) -> None:
    client = await connect()
    slot = tokens.mint_response("large")
    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB
    sending = asyncio.create_task(client.send(post(slot.token, inner(payload))))
    response = await asyncio.wait_for(slot.wait(), WAIT)
    await asyncio.sleep(0.5)
    assert not sending.done()  # the listener stopped reading: the worker's send waits
    assert await asyncio.wait_for(relayed(response), 60) == payload
    await asyncio.wait_for(sending, WAIT)
    assert (await client.answer())[0] == 200


async def test_stop_closes_idle_connections_and_drops_busy_ones_after_the_grace(
    tokens: AttachTokens, listener: AttachListener, connect: Any
) -> None:
    idle, busy = await connect(), await connect()
    slot = tokens.mint_response("busy")
    await busy.send(post(slot.token, inner(b"never relayed")))
    response = await asyncio.wait_for(slot.wait(), WAIT)
    port = listener.port
    await listener.stop(0.3)
    assert await idle.closed()
    assert await busy.closed()
    assert not response.finished.is_set()  # the relay, not the listener, finishes it
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


class _WatchedBody(RequestBody):
    """A RequestBody that says when its GET attach is over."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.finished = asyncio.Event()

    def finish(self) -> None:
        super().finish()
        self.finished.set()


class _QueueReader:
    """A caller's body: chunks from a queue (None: the body breaks off), then b"" at its end."""

    def __init__(self, queue: asyncio.Queue[bytes] | None, *chunks: bytes) -> None:
        self.queue = queue
        self.chunks = list(chunks)

    async def readany(self) -> bytes:
        if self.queue is not None:
            return await self.queue.get()
        if self.chunks:
            return self.chunks.pop(0)
        raise ConnectionResetError("the caller went away")
