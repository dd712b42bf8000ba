"""pexec through the whole stack: caller -> platform -> JetStream -> sidecar -> container -> back.

The pexec scenarios of NVIDIA's invocation-service and worker tests (reference §13), on one stack
per module: serial and concurrent invocations, the headers the container receives and those it
must never receive, SSE relayed as it is produced, bodies around the 32 KiB inline limit and of
5 MiB, caller errors, a caller leaving early, and MAX_REQUEST_CONCURRENCY seen from the container.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

INLINE = 32 * 1024


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
    ) as session:
        yield session


def assert_fulfilled(response: aiohttp.ClientResponse, body: bytes) -> str:
    """NVIDIA's relayed-answer headers (reference §11.2); returns the reqid."""
    assert response.status == 200, body
    assert response.headers["nvcf-status"] == "fulfilled"
    assert int(response.headers["Content-Length"]) == len(body)
    expose = ",".join(response.headers.getall("access-control-expose-headers"))
    assert "nvcf-reqid" in [value.strip() for value in expose.split(",")]
    request_id = response.headers["nvcf-reqid"]
    assert len(request_id) == 36
    return request_id


async def invoke_echo(
    http: aiohttp.ClientSession, shared: Any, body: bytes, headers: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    stack, echo = shared.stack, shared.echo
    async with http.post(
        stack.invoke_url(echo.function_id),
        data=body,
        headers={**stack.auth_headers, **(headers or {})},
    ) as response:
        raw = await response.read()
        request_id = assert_fulfilled(response, raw)
    assert response.headers["Content-Type"] == "application/json"
    document: dict[str, Any] = json.loads(raw)
    assert document["body_b64"] is not None
    assert document["body_length"] == len(body)
    return request_id, document


async def test_one_hundred_sequential_invocations_are_fulfilled_with_distinct_reqids(
    shared_stack: Any, http: aiohttp.ClientSession
) -> None:
    request_ids = set()
    for index in range(100):
        request_id, echoed = await invoke_echo(http, shared_stack, f"call {index}".encode())
        assert echoed["method"] == "POST"
        assert echoed["path"] == "/invoke"
        request_ids.add(request_id)
    assert len(request_ids) == 100


async def test_one_hundred_concurrent_invocations_are_fulfilled_with_distinct_reqids(
    shared_stack: Any, http: aiohttp.ClientSession
) -> None:
    results = await asyncio.gather(
        *(invoke_echo(http, shared_stack, f"call {index}".encode()) for index in range(100))
    )
    assert len({request_id for request_id, _ in results}) == 100
    for request_id, echoed in results:
        # Each answer belongs to its own call: the container saw the reqid the caller sees.
        assert [v for k, v in echoed["headers"] if k == "NVCF-REQID"] == [request_id]


async def test_container_gets_the_platform_headers_and_never_the_callers_spoofed_ones(
    shared_stack: Any, http: aiohttp.ClientSession
) -> None:
    stack, echo = shared_stack.stack, shared_stack.echo
    spoofed = {
        "NVCF-REQID": "spoofed-reqid",
        "NVCF-LARGE-OUTPUT-DIR": "/etc/spoofed-output",
        "NVCF-ASSET-DIR": "/etc/spoofed-assets",
        "NVCF-FUNCTION-ID": "spoofed-function",
        "nvcf-invocation-region": "spoofed-region",
        "NVCF-POLL-SECONDS": "30",
        "X-Custom-Header": "kept",
    }
    request_id, echoed = await invoke_echo(http, shared_stack, b'{"x": 1}', spoofed)
    received: list[list[str]] = echoed["headers"]

    def values(name: str) -> list[str]:
        return [value for key, value in received if key.lower() == name.lower()]

    assert values("NVCF-REQID") == [request_id]
    assert values("NVCF-FUNCTION-ID") == [echo.function_id]
    assert values("NVCF-FUNCTION-VERSION-ID") == [echo.version_id]
    assert values("NVCF-FUNCTION-NAME") == ["echo"]
    assert values("NVCF-LARGE-OUTPUT-DIR") == [
        str(stack.response_dir(echo.version_id) / request_id)
    ]
    assert values("NVCF-ASSET-DIR") == [str(stack.asset_dir(echo.version_id) / request_id)]
    assert values("NVCF-INVOCATION-REGION") == ["local"]
    # The caller's 30 s minus the age of the work item, whole seconds toward zero (§5.2 step 5).
    [poll] = values("NVCF-POLL-SECONDS")
    assert 25 <= int(poll) <= 29
    assert values("X-Custom-Header") == ["kept"]
    assert values("Authorization") == []
    assert not [pair for pair in received if "spoofed" in pair[1]]


async def test_sse_is_relayed_in_order_without_content_length_as_it_is_produced(
    shared_stack: Any, http: aiohttp.ClientSession
) -> None:
    stack, echo = shared_stack.stack, shared_stack.echo
    headers = {
        **stack.auth_headers,
        "Accept": "text/event-stream",
        "X-E2E-Action": "sse",
        "X-E2E-Events": "100",
        "X-E2E-Interval-Ms": "15",
    }
    events: list[dict[str, Any]] = []
    first_arrival = 0.0
    async with http.post(stack.invoke_url(echo.function_id), headers=headers) as response:
        assert response.status == 200
        assert response.headers["nvcf-status"] == "fulfilled"
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Length" not in response.headers
        async for line in response.content:
            if line.startswith(b"data: "):
                if not events:
                    first_arrival = time.time()
                events.append(json.loads(line[len(b"data: ") :]))
    assert [event["i"] for event in events] == list(range(100))
    # Streamed, not buffered: the caller had the first event before the last was produced.
    assert first_arrival < events[-1]["t"] - 0.5


@pytest.mark.parametrize(
    "size", [0, INLINE, INLINE + 1, 5 * 1024 * 1024], ids=["0B", "32KiB", "32KiB+1", "5MiB"]
)
async def test_bodies_are_echoed_byte_identical(
    shared_stack: Any, http: aiohttp.ClientSession, size: int
) -> None:
    stack, echo = shared_stack.stack, shared_stack.echo
    body = os.urandom(size)
    headers = {
        **stack.auth_headers,
        "Content-Type": "application/octet-stream",
        "X-E2E-Action": "raw",
    }
    async with http.post(
        stack.invoke_url(echo.function_id), data=body, headers=headers
    ) as response:
        echoed = await response.read()
        assert_fulfilled(response, echoed)
    assert len(echoed) == size
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(body).hexdigest()


async def test_a_bad_api_key_is_401_and_an_unknown_function_404(
    shared_stack: Any, http: aiohttp.ClientSession
) -> None:
    stack, echo = shared_stack.stack, shared_stack.echo
    before = echo.stats()["requests"]
    async with http.post(
        stack.invoke_url(echo.function_id), data=b"{}", headers={"Authorization": "Bearer wrong"}
    ) as response:
        assert response.status == 401
        assert response.headers["Content-Type"] == "application/problem+json"
        assert (await response.json(content_type=None))["status"] == 401
    unknown = "0a0b0c0d-1111-4222-8333-444455556666"
    async with http.post(
        stack.invoke_url(unknown), data=b"{}", headers=stack.auth_headers
    ) as response:
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/problem+json"
        assert (await response.json(content_type=None))["detail"] == "function not found"
    assert echo.stats()["requests"] == before


async def test_the_container_never_sees_more_than_max_request_concurrency(
    shared_stack: Any, http: aiohttp.ClientSession
) -> None:
    stack, limited = shared_stack.stack, shared_stack.limited
    headers = {**stack.auth_headers, "X-E2E-Action": "sleep", "X-E2E-Seconds": "0.3"}

    async def call() -> int:
        async with http.post(
            stack.invoke_url(limited.function_id), data=b"{}", headers=headers
        ) as response:
            assert (await response.json())["slept"] == 0.3
            return response.status

    started = time.monotonic()
    statuses = await asyncio.gather(*(call() for _ in range(10)))
    assert statuses == [200] * 10
    stats = limited.stats()
    assert stats["max_in_flight"] == 2
    assert stats["requests"] == 10
    assert time.monotonic() - started >= 5 * 0.3  # 10 calls, 2 at a time


async def test_a_caller_leaving_before_the_answer_cancels_the_container_call(
    shared_stack: Any, http: aiohttp.ClientSession, scrape: Any
) -> None:
    stack, echo = shared_stack.stack, shared_stack.echo
    headers = {**stack.auth_headers, "X-E2E-Action": "sleep", "X-E2E-Seconds": "10"}
    abandoned = echo.stats()["abandoned"]

    async def call() -> None:
        async with http.post(stack.invoke_url(echo.function_id), headers=headers) as response:
            await response.read()

    async def settle(condition: Any, what: str) -> None:
        deadline = time.monotonic() + 5
        while not await asyncio.to_thread(condition):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    caller = asyncio.create_task(call())
    await settle(lambda: echo.stats()["in_flight"] == 1, "the container call")
    left = time.monotonic()
    caller.cancel()
    # The platform publishes the reqid on nvcf.cancel.<fvid> (§10); the sidecar serving it
    # closes the container call instead of letting it run its 10 s.
    await settle(lambda: echo.stats()["abandoned"] == abandoned + 1, "the container call to end")
    assert time.monotonic() - left < 5
    assert echo.stats()["in_flight"] == 0

    def cancelled() -> float:
        return sum(
            scrape(s.metrics_url).get('nvcf_worker_requests_total{outcome="cancelled"}', 0.0)
            for s in stack.sidecars(echo.version_id)
        )

    await settle(lambda: cancelled() == 1, "the request to be counted as cancelled")
