"""pexec end to end against a real nats-server and a mock worker: NVIDIA's test_pexec scenarios.

Each test drives the caller-facing route and checks both what the caller receives and what the
worker was sent (the work item and the rest of the body over GET attach).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from yarl import URL

from nvcf_platform.settings import PlatformSettings
from nvcf_sidecar.protocol import INLINE_BODY_BYTES

pytestmark = pytest.mark.nats

WAIT = 30.0


@pytest.fixture
def platform_settings(attach_settings: PlatformSettings) -> PlatformSettings:
    """Every test here runs against both attach servers (aiohttp's, and the lean listener)."""
    return attach_settings


def header_values(item: Any, name: str) -> list[str]:
    return [kv.value for kv in item.requestHeaders if kv.key == name]


async def raw_pexec(caller: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, str]:
    """A plain TCP connection to the platform, its host, and the pexec path: for requests
    written byte by byte."""
    host, port = caller.platform.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    return reader, writer, host, caller.pexec_url().removeprefix(caller.platform.base_url)


async def test_100_sequential_invocations_relay_status_length_and_nvcf_headers(
    caller: Any, start_worker: Any
) -> None:
    worker = await start_worker()
    request_ids = set()
    for i in range(100):
        body = f"request {i}".encode()
        async with caller.pexec(body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/plain"
            assert response.headers["Content-Length"] == str(len(body))
            assert response.headers["nvcf-status"] == "fulfilled"
            assert response.headers.getall("Access-Control-Expose-Headers") == ["nvcf-reqid"]
            assert "Transfer-Encoding" not in response.headers
            assert await response.read() == body
            request_ids.add(response.headers["nvcf-reqid"])
    assert len(request_ids) == 100
    assert {item.requestId for item in worker.items} == request_ids
    assert not worker.errors
    assert len(caller.platform.tokens) == 0


async def test_100_concurrent_invocations_each_get_their_own_response(
    caller: Any, start_worker: Any
) -> None:
    await start_worker()

    async def invoke(i: int) -> tuple[int, bytes, str]:
        async with caller.pexec(f"concurrent {i}".encode()) as response:
            return response.status, await response.read(), response.headers["nvcf-reqid"]

    results = await asyncio.wait_for(asyncio.gather(*(invoke(i) for i in range(100))), WAIT)
    assert [status for status, _, _ in results] == [200] * 100
    assert [body for _, body, _ in results] == [f"concurrent {i}".encode() for i in range(100)]
    assert len({reqid for _, _, reqid in results}) == 100


async def test_work_item_carries_identity_path_inline_body_and_attach_config(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    worker = await start_worker()
    async with caller.pexec(b"payload") as response:
        assert response.status == 200
        reqid = response.headers["nvcf-reqid"]
    (item,) = worker.items
    assert item.requestId == reqid
    assert item.ncaId == "local-nca"
    assert item.subject == "local-client"
    assert item.maxDirectResponseSizeBytes == 5 * 1024 * 1024
    assert item.requestMethod == "POST"
    assert item.requestPath == ids.invocation_path
    assert item.requestBody == b"payload"
    # A presigned PUT of this request's results object, signed and expiring.
    large = URL(item.largeResponseUrl)
    assert large.path == f"/v2/nvcf/objects/results/{item.ncaId}/{item.requestId}"
    assert set(large.query) == {"expires", "signature"}
    assert not item.inputAssetReference
    assert item.directResponseUrl == caller.platform.grpc_url
    assert abs(item.requestTime.ToNanoseconds() / 1e9 - time.time()) < 10
    (connection,) = item.statelessConfig.connectionConfigs
    http1 = connection.http1Config
    assert http1.targetURI == caller.platform.attach_url
    assert http1.responseAuthorizationToken
    assert not http1.HasField("requestAuthorizationToken")
    assert not http1.HasField("proxyURI")


async def test_region_header_is_replaced_with_the_platforms_and_not_echoed(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    worker = await start_worker()
    headers = [("x-user-header", "user-value"), ("NVCF-INVOCATION-REGION", "client-region")]
    async with caller.pexec(headers=headers) as response:
        assert response.status == 200
        assert "nvcf-invocation-region" not in response.headers
    (item,) = worker.items
    assert header_values(item, "nvcf-invocation-region") == [ids.region]
    assert header_values(item, "x-user-header") == ["user-value"]


async def test_duplicate_headers_are_kept_as_separate_lower_case_entries(
    caller: Any, start_worker: Any
) -> None:
    worker = await start_worker()
    headers = [("X-Dup", "one"), ("X-Dup", "two, three"), ("NVCF-POLL-SECONDS", "30")]
    async with caller.pexec(headers=headers) as response:
        assert response.status == 200
    (item,) = worker.items
    assert header_values(item, "x-dup") == ["one", "two, three"]
    assert header_values(item, "nvcf-poll-seconds") == ["30"]
    assert all(kv.key == kv.key.lower() for kv in item.requestHeaders)


async def test_version_less_route_picks_a_configured_version(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    first = await start_worker(version_id=ids.other_version_ids[0])
    second = await start_worker(version_id=ids.other_version_ids[1])
    for _ in range(40):
        async with caller.pexec(function_id=ids.other_function_id, version_id=None) as response:
            assert response.status == 200
        if first.items and second.items:
            break
    assert first.items, "40 invocations never reached the first version"
    assert second.items, "40 invocations never reached the second version"
    assert {item.requestPath for item in first.items} == {"/first"}
    assert {item.requestPath for item in second.items} == {""}


@pytest.mark.parametrize(
    ("size", "streamed"),
    [
        (0, False),
        (INLINE_BODY_BYTES, False),
        (INLINE_BODY_BYTES + 1, True),
        (5 * 1024 * 1024, True),
    ],
    ids=["empty", "32KiB-inline", "32KiB+1", "5MiB"],
)
async def test_body_first_32_kib_inline_and_the_rest_over_get_attach(
    caller: Any, start_worker: Any, size: int, streamed: bool
) -> None:
    worker = await start_worker()
    body = bytes(i % 251 for i in range(size))
    async with caller.pexec(body) as response:
        assert response.status == 200
        assert await response.read() == body
    (item,) = worker.items
    assert item.HasField("requestBody")
    assert item.requestBody == body[:INLINE_BODY_BYTES]
    http1 = item.statelessConfig.connectionConfigs[0].http1Config
    assert http1.HasField("requestAuthorizationToken") is streamed
    if streamed:
        status, headers, rest = worker.get_attach[item.requestId]
        assert status == 200
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Length"] == str(size - INLINE_BODY_BYTES)
        assert rest == body[INLINE_BODY_BYTES:]
    else:
        assert item.requestId not in worker.get_attach


async def test_a_declared_body_arriving_after_its_head_is_still_all_inline(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    """Up to 32 KiB of a body with a Content-Length is inline, however late it comes."""
    worker = await start_worker()
    body = bytes(i % 251 for i in range(10_000))
    reader, writer, host, path = await raw_pexec(caller)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ids.api_key}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[:100])
    await writer.drain()
    await asyncio.sleep(0.2)  # the platform has the head and 100 bytes: it must wait for more
    writer.write(body[100:])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(body)
    (item,) = worker.items
    assert item.requestBody == body
    assert item.requestId not in worker.get_attach


async def test_chunked_caller_body_goes_inline_as_far_as_arrived_and_rest_chunked(
    caller: Any, start_worker: Any
) -> None:
    worker = await start_worker()
    pieces = [bytes([i]) * 10_000 for i in range(10)]
    item_seen = asyncio.Event()

    async def stream() -> AsyncIterator[bytes]:
        yield pieces[0]
        # The rest follows only once the work item was queued: it cannot be inline.
        await asyncio.wait_for(item_seen.wait(), WAIT)
        for piece in pieces[1:]:
            yield piece

    async def watch() -> None:
        await worker.wait_for(items=1)
        item_seen.set()

    watcher = asyncio.create_task(watch())
    async with caller.pexec(stream()) as response:
        assert response.status == 200
        assert await response.read() == b"".join(pieces)
    await watcher
    (item,) = worker.items
    assert len(item.requestBody) <= len(pieces[0])
    status, headers, rest = worker.get_attach[item.requestId]
    assert status == 200
    assert "Content-Length" not in headers
    assert headers.get("Transfer-Encoding") == "chunked"
    assert item.requestBody + rest == b"".join(pieces)


async def test_hop_by_hop_headers_and_authorization_never_reach_the_worker(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    worker = await start_worker()
    reader, writer, host, path = await raw_pexec(caller)
    raw = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Authorization: Bearer {ids.api_key}\r\n"
        "Connection: keep-alive, X-Drop-Me\r\n"
        "X-Drop-Me: 1\r\n"
        "Keep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic eDp5\r\n"
        "TE: trailers\r\n"
        "Trailer: X-Trailer\r\n"
        "X-Kept: yes\r\n"
        "Transfer-Encoding: chunked\r\n"
        "\r\n"
        "4\r\nbody\r\n0\r\n\r\n"
    )
    writer.write(raw.encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), WAIT)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 200")
    (item,) = worker.items
    names = {kv.key for kv in item.requestHeaders}
    assert names.isdisjoint(
        {
            "authorization",
            "connection",
            "x-drop-me",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
        }
    )
    assert header_values(item, "x-kept") == ["yes"]


async def test_sse_is_relayed_event_by_event_without_content_length(
    caller: Any, start_worker: Any
) -> None:
    event = b"event:an event\ndata:some data\n\n"
    received = asyncio.Queue[int]()

    async def sse(item: Any, body: bytes, worker: Any) -> Any:
        async def events() -> AsyncIterator[bytes]:
            for i in range(100):
                yield event
                # The next event is sent only after the caller saw this one: buffering anywhere
                # on the way would stall here and time out.
                assert await asyncio.wait_for(received.get(), 10) == i

        return 200, [("Content-Type", "text/event-stream")], events()

    await start_worker(sse)
    async with caller.pexec(headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert "Content-Length" not in response.headers
        assert response.headers["nvcf-status"] == "fulfilled"
        buffer = b""
        for i in range(100):
            while len(buffer) < (i + 1) * len(event):
                chunk = await asyncio.wait_for(response.content.readany(), 10)
                assert chunk, f"stream ended after {i} events"
                buffer += chunk
            received.put_nowait(i)
        assert await asyncio.wait_for(response.read(), 10) == b""
    assert buffer == event * 100


async def test_container_status_and_expose_headers_pass_through_with_nvcf_reqid_appended(
    caller: Any, start_worker: Any
) -> None:
    async def created(item: Any, body: bytes, worker: Any) -> Any:
        headers = [
            ("Content-Type", "application/json"),
            ("Access-Control-Expose-Headers", "x-custom"),
            ("X-Custom", "1"),
        ]
        return 201, headers, orjson.dumps({"ok": True})

    await start_worker(created)
    async with caller.pexec() as response:
        assert response.status == 201
        assert response.headers["nvcf-status"] == "fulfilled"
        assert response.headers.getall("Access-Control-Expose-Headers") == [
            "x-custom",
            "nvcf-reqid",
        ]
        assert response.headers["X-Custom"] == "1"
        assert await response.json() == {"ok": True}


@pytest.mark.parametrize(
    ("status", "nvcf_status"), [(202, "in-progress"), (302, "fulfilled"), (500, "errored")]
)
async def test_nvcf_status_follows_the_workers_status(
    caller: Any, start_worker: Any, status: int, nvcf_status: str
) -> None:
    async def reply(item: Any, body: bytes, worker: Any) -> Any:
        return status, [], b""

    await start_worker(reply)
    async with caller.pexec() as response:
        assert response.status == status
        assert response.headers["nvcf-status"] == nvcf_status
        assert response.headers["Content-Length"] == "0"


async def test_wrong_api_key_is_401_problem(caller: Any) -> None:
    async with caller.pexec(api_key="wrong") as response:
        assert response.status == 401
        assert response.headers["Content-Type"] == "application/problem+json"
        assert await response.json() == {
            "status": 401,
            "title": "Unauthorized",
            "detail": "client is unauthorized",
        }


async def test_missing_authorization_is_401_plain_text(caller: Any) -> None:
    async with caller.pexec(api_key=None) as response:
        assert response.status == 401
        assert response.headers["Content-Type"].startswith("text/plain")
        assert await response.text() == "Header of type `authorization` was missing"


@pytest.mark.parametrize(
    ("function_id", "version_id", "detail"),
    [
        ("bac11503-75ca-4a40-bf24-77ce49d13355", None, "function not found"),
        ("not-a-uuid", None, "function not found"),
        (None, "bac11503-75ca-4a40-bf24-77ce49d13355", "function version not found"),
    ],
)
async def test_unknown_function_or_version_is_404_problem(
    caller: Any, ids: Any, function_id: str | None, version_id: str | None, detail: str
) -> None:
    async with caller.pexec(
        function_id=function_id or ids.function_id, version_id=version_id
    ) as response:
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/problem+json"
        assert await response.json() == {"status": 404, "title": "Not Found", "detail": detail}


@pytest.mark.parametrize("value", ["10000", "3601", "abc", "-1", "1.5"])
async def test_bad_poll_seconds_is_400_problem(caller: Any, value: str) -> None:
    async with caller.pexec(headers={"NVCF-POLL-SECONDS": value}) as response:
        assert response.status == 400
        assert await response.json() == {
            "status": 400,
            "title": "Bad Request",
            "detail": "failed to parse poll duration",
        }


async def test_unknown_path_is_404_problem_and_needs_authorization(caller: Any) -> None:
    session, url = caller.session, f"{caller.base_url}/v2/nvcf/nothing-here"
    async with session.get(url, headers={"Authorization": "Bearer x"}) as response:
        assert response.status == 404
        assert await response.json() == {"status": 404, "title": "Not Found"}
    async with session.get(url) as response:
        assert response.status == 401


async def test_health_answers_ok_without_authorization(caller: Any) -> None:
    async with caller.session.get(f"{caller.base_url}/health") as response:
        assert response.status == 200
        assert await response.read() == b'{"status":"OK"}'
        assert response.headers["Content-Type"] == "application/json"


async def test_non_bearer_authorization_is_401_problem(caller: Any) -> None:
    headers = {"Authorization": "Basic eDp5"}
    async with caller.session.post(caller.pexec_url(), headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["detail"] == "client is unauthorized"


async def test_wrong_method_on_a_known_path_is_405_problem(caller: Any, ids: Any) -> None:
    headers = {"Authorization": f"Bearer {ids.api_key}"}
    async with caller.session.get(caller.pexec_url(), headers=headers) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert await response.json() == {"status": 405, "title": "Method Not Allowed"}
