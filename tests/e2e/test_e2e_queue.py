"""The work queue through the whole stack: no worker, a late worker, a container not yet healthy.

NVIDIA's scenarios (reference §13, §5.1 step 6, §5.2 step 1): a request nobody takes ends in 504
and is purged, so a worker that starts later never serves it; a worker that starts while a
request waits serves it; a sidecar whose container is unhealthy neither reports ready nor fetches.
Each test has its own stack (they start sidecars late).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from nvcf_platform.devstack.stack_process import http_status

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=45)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, stack: Any, function: Any, poll_seconds: int
) -> tuple[int, CIMultiDict[str], bytes]:
    headers = {**stack.auth_headers, "NVCF-POLL-SECONDS": str(poll_seconds)}
    async with http.post(
        stack.invoke_url(function.function_id), data=b'{"late": true}', headers=headers
    ) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def wait_for(condition: Callable[[], Any], what: str, within: float = 15.0) -> None:
    """Poll an async condition every 50 ms; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_no_worker_gives_504_and_the_request_is_purged_before_a_worker_starts(
    e2e_function: Any, start_stack: Any, queue_state: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(sidecars=0)
    stack = start_stack([echo])
    started = time.monotonic()
    status, headers, body = await post(http, stack, echo, poll_seconds=1)
    assert status == 504
    assert time.monotonic() - started >= 3  # poll 1 s + the platform's 2 s grace
    assert headers["nvcf-status"] == "errored"
    assert len(headers["nvcf-reqid"]) == 36
    assert "nvcf-reqid" in headers["access-control-expose-headers"]
    assert body == b""
    assert (await queue_state(stack, echo.version_id))[0] == 0  # purged from the stream

    await asyncio.to_thread(stack.add_sidecar, echo.version_id)
    status, _, _ = await post(http, stack, echo, poll_seconds=30)
    assert status == 200
    # The late sidecar served only the new request: the purged one never reached the container.
    assert echo.stats()["requests"] == 1
    await queue_state(stack, echo.version_id, expect=(0, 1, 0))


async def test_a_late_worker_serves_what_waits_after_earlier_504s(
    e2e_function: Any, start_stack: Any, queue_state: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(sidecars=0)
    stack = start_stack([echo])
    early = await asyncio.gather(*(post(http, stack, echo, poll_seconds=1) for _ in range(2)))
    assert [status for status, _, _ in early] == [504, 504]

    waiting = asyncio.create_task(post(http, stack, echo, poll_seconds=30))

    async def queued() -> bool:
        return (await queue_state(stack, echo.version_id))[0] == 1

    await wait_for(queued, "the request to be queued")
    await asyncio.to_thread(stack.add_sidecar, echo.version_id)
    status, headers, _ = await asyncio.wait_for(waiting, 30)
    assert status == 200
    assert headers["nvcf-status"] == "fulfilled"
    assert echo.stats()["requests"] == 1


async def test_a_sidecar_whose_container_is_down_is_not_ready_and_does_not_fetch(
    e2e_function: Any, start_stack: Any, queue_state: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(health=503, wait_ready=False)
    stack = start_stack([echo])
    [sidecar] = stack.sidecars(echo.version_id)

    async def answers_not_ready() -> bool:
        return await asyncio.to_thread(http_status, sidecar.health_url) == 503

    await wait_for(answers_not_ready, "the sidecar's health server")
    waiting = asyncio.create_task(post(http, stack, echo, poll_seconds=30))

    async def queued() -> bool:
        return (await queue_state(stack, echo.version_id))[0] == 1

    await wait_for(queued, "the request to be queued")
    # Several readiness probes (every 500 ms) later, still nothing was delivered to anyone.
    await asyncio.sleep(1.5)
    assert await queue_state(stack, echo.version_id) == (1, 0, 0)
    assert echo.stats()["requests"] == 0
    assert not waiting.done()
    assert await asyncio.to_thread(http_status, sidecar.health_url) == 503

    echo.set_health(200)
    status, headers, _ = await asyncio.wait_for(waiting, 30)
    assert status == 200
    assert headers["nvcf-status"] == "fulfilled"
    assert echo.stats()["requests"] == 1
    assert await asyncio.to_thread(sidecar.is_ready)
