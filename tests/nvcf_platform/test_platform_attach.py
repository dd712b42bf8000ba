"""The attach endpoints (reference §4): single-use tokens, head parsing limits, holding the POST.

The mock worker posts hand-made bodies here, to exercise what a well-behaved worker never sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from nvcf_platform.settings import PlatformSettings
from nvcf_sidecar.protocol import cancel_subject, encode_response_head

pytestmark = pytest.mark.nats

WAIT = 30.0
INVALID_TOKEN = {
    "status": 401,
    "title": "Unauthorized",
    "detail": "The provided authorization token is invalid or has expired",
}


@pytest.fixture
def platform_settings(attach_settings: PlatformSettings) -> PlatformSettings:
    """Every test here runs against both attach servers (aiohttp's, and the lean listener)."""
    return attach_settings


def problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"status": status, "title": title, "detail": detail}


async def test_response_token_is_single_use(caller: Any, start_worker: Any) -> None:
    async def twice(item: Any, body: bytes, worker: Any) -> None:
        data = encode_response_head(200, [], content_length=2) + b"ok"
        assert await worker.post_attach(item, data) == (200, b"")
        status, answer = await worker.post_attach(item, data)
        assert status == 401
        assert orjson.loads(answer) == INVALID_TOKEN

    worker = await start_worker(twice)
    async with caller.pexec() as response:
        assert response.status == 200
        assert await response.read() == b"ok"
    await worker.wait_for(handled=1)
    assert not worker.errors


async def test_liveness_says_whether_a_response_token_is_still_waited_for(
    caller: Any, start_worker: Any
) -> None:
    session = caller.session
    seen: list[tuple[str, int, Any]] = []

    async def probe(item: Any, when: str) -> None:
        http1 = item.statelessConfig.connectionConfigs[0].http1Config
        url = f"{http1.targetURI}/v2/nvcf/worker/request-attach/liveness"
        headers = {"Authorization": f"Bearer {http1.responseAuthorizationToken}"}
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            seen.append((when, response.status, orjson.loads(body) if body else None))

    async def answer_between_probes(item: Any, body: bytes, worker: Any) -> None:
        await probe(item, "before")
        await probe(item, "again")  # asking uses nothing up
        data = encode_response_head(200, [], content_length=2) + b"ok"
        assert await worker.post_attach(item, data) == (200, b"")
        await probe(item, "after")

    worker = await start_worker(answer_between_probes)
    async with caller.pexec() as response:
        assert response.status == 200
        assert await response.read() == b"ok"
    await worker.wait_for(handled=1)
    gone = {**INVALID_TOKEN, "status": 410, "title": "Gone"}
    assert seen == [("before", 204, None), ("again", 204, None), ("after", 410, gone)]


async def test_request_token_is_single_use(caller: Any, start_worker: Any) -> None:
    session = caller.session
    seen: list[tuple[int, dict[str, Any]]] = []

    async def again(item: Any, body: bytes, worker: Any) -> Any:
        http1 = item.statelessConfig.connectionConfigs[0].http1Config
        url = f"{http1.targetURI}/v2/nvcf/worker/request-attach"
        headers = {"Authorization": f"Bearer {http1.requestAuthorizationToken}"}
        async with session.get(url, headers=headers) as response:
            seen.append((response.status, await response.json()))
        return 200, [], body

    await start_worker(again)
    body = b"x" * 40_000
    async with caller.pexec(body) as response:
        assert response.status == 200
        assert await response.read() == body
    assert seen == [(401, INVALID_TOKEN)]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_attach_without_authorization_is_401_plain_and_unknown_token_401_problem(
    caller: Any, method: str
) -> None:
    url = f"{caller.base_url}/v2/nvcf/worker/request-attach"
    async with caller.session.request(method, url) as response:
        assert response.status == 401
        assert await response.text() == "Header of type `authorization` was missing"
    headers = {"Authorization": "Bearer 1f0e9a63-7d0c-4c55-b8f6-3c1f6f2b4e11"}
    async with caller.session.request(method, url, headers=headers) as response:
        assert response.status == 401
        assert response.headers["Content-Type"] == "application/problem+json"
        assert await response.json() == INVALID_TOKEN


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "Transfer-Encoding in the inner response is not supported",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", "Incomplete HTTP response"),
        (b"", "Incomplete HTTP response"),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 65 + b"\r\n",
            "Failed to parse HTTP response: too many headers",
        ),
    ],
    ids=["inner-transfer-encoding", "incomplete-head", "empty", "65-headers"],
)
async def test_bad_inner_head_is_400_and_the_caller_gets_500(
    caller: Any, start_worker: Any, observer: Any, ids: Any, data: bytes, detail: str
) -> None:
    answers: list[tuple[int, bytes]] = []

    async def bad(item: Any, body: bytes, worker: Any) -> None:
        answers.append(await worker.post_attach(item, data))

    cancels = await observer.subscribe(cancel_subject(ids.version_id))
    await start_worker(bad)
    async with caller.pexec(headers={"NVCF-POLL-SECONDS": "20"}) as response:
        assert response.status == 500
        assert response.headers["Content-Type"] == "application/problem+json"
        assert (await response.json())["detail"] == detail
        reqid_cancelled = await asyncio.wait_for(cancels.next_msg(), 10)
    [(status, answer)] = answers
    assert status == 400
    assert orjson.loads(answer) == problem(400, "Bad Request", detail)
    assert len(reqid_cancelled.data) == 36


async def test_post_after_the_caller_got_504_is_401(caller: Any, start_worker: Any) -> None:
    late: list[tuple[int, bytes]] = []
    release = asyncio.Event()

    async def slow(item: Any, body: bytes, worker: Any) -> None:
        await asyncio.wait_for(release.wait(), WAIT)
        late.append(await worker.post_attach(item, encode_response_head(200, []) + b"late"))

    worker = await start_worker(slow)
    async with caller.pexec(headers={"NVCF-POLL-SECONDS": "1"}) as response:
        assert response.status == 504
    release.set()
    await worker.wait_for(handled=1)
    [(status, answer)] = late
    assert status == 401
    assert orjson.loads(answer) == INVALID_TOKEN


async def test_post_stays_open_until_the_caller_has_the_whole_body(
    caller: Any, start_worker: Any
) -> None:
    more = asyncio.Event()
    post: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def held(item: Any, body: bytes, worker: Any) -> None:
        async def data() -> AsyncIterator[bytes]:
            yield encode_response_head(200, [("Content-Type", "text/plain")]) + b"first,"
            await asyncio.wait_for(more.wait(), WAIT)
            yield b"second"

        post.set_result(await worker.post_attach(item, data()))

    await start_worker(held)
    async with caller.pexec() as response:
        assert response.status == 200
        assert await asyncio.wait_for(response.content.readexactly(6), WAIT) == b"first,"
        await asyncio.sleep(0.2)  # time for a POST that wrongly completes early to do so
        assert not post.done()
        more.set()
        assert await response.read() == b"second"
    assert await asyncio.wait_for(post, WAIT) == (200, b"")


async def test_a_head_arriving_in_pieces_is_read_whole(caller: Any, start_worker: Any) -> None:
    """The platform takes what already arrived at once and waits for the rest of the head."""
    head = encode_response_head(201, [("Content-Type", "text/plain")], content_length=4)

    async def pieces(item: Any, body: bytes, worker: Any) -> None:
        async def data() -> AsyncIterator[bytes]:
            for start in range(0, len(head), 7):
                yield head[start : start + 7]
                await asyncio.sleep(0.02)
            yield b"done"

        await worker.post_attach(item, data())

    await start_worker(pieces)
    async with caller.pexec() as response:
        assert response.status == 201
        assert response.headers["Content-Type"] == "text/plain"
        assert await response.read() == b"done"


async def test_outer_content_length_sets_the_callers_when_the_inner_head_has_none(
    caller: Any, start_worker: Any
) -> None:
    async def outer_only(item: Any, body: bytes, worker: Any) -> None:
        await worker.post_attach(item, encode_response_head(200, []) + b"12345")

    await start_worker(outer_only)
    async with caller.pexec() as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "5"
        assert await response.read() == b"12345"


async def test_worker_body_shorter_than_declared_aborts_the_caller(
    caller: Any, start_worker: Any
) -> None:
    async def short(item: Any, body: bytes, worker: Any) -> None:
        async def data() -> AsyncIterator[bytes]:
            yield encode_response_head(200, [], content_length=100) + b"only ten.."

        await worker.post_attach(item, data())

    await start_worker(short)
    async with caller.pexec() as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "100"
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
