"""NATS dying under the platform: refused at once, waiting callers answered, restarts picked up.

A real nats-server is SIGKILLed (and restarted on the same port and store) under an in-process
platform, with the mock worker on the other side; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import nats
import orjson
import pytest

from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.invocation.problems import RETRY_AFTER_SECONDS
from nvcf_platform.service import PlatformService

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]

GRACE = 2.0
"""The outage grace of the test platforms (the default is 10 s)."""
MARGIN = 1.5
"""How late after the grace a waiting caller may be answered (loaded CI machine)."""
POLL = {"NVCF-POLL-SECONDS": "30"}

Answer = tuple[int, Any, bytes]


async def answer_of(request: Any) -> Answer:
    """Send an aiohttp request context manager; (status, headers, body)."""
    async with request as response:
        return response.status, response.headers, await response.read()


async def until(condition: Callable[[], Awaitable[bool] | bool], what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, f"timed out after {within} s waiting for {what}"
        await asyncio.sleep(0.02)


async def queued_messages(url: str, stream: str) -> int:
    """Messages now in `stream`, read over a connection of the test's own."""
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


def kill(server: EmbeddedNatsServer) -> float:
    """SIGKILL nats-server (no lame duck, no flush); the monotonic time of the kill."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    return time.monotonic()


def assert_unavailable(answer: Answer, detail: str) -> None:
    status, headers, body = answer
    assert status == 503, body
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    problem = orjson.loads(body)
    assert problem["status"] == 503
    assert problem["title"] == "Service Unavailable"
    assert detail in problem["detail"]


async def test_a_caller_waiting_when_nats_dies_gets_503_with_retry_after_once_the_grace_passed(
    nats_server: EmbeddedNatsServer, start_platform: Any, caller_factory: Any, ids: Any
) -> None:
    platform = await start_platform(nats_outage_grace=GRACE)
    caller = await caller_factory(platform)
    waiting = asyncio.create_task(answer_of(caller.pexec(headers=POLL)))
    await until(lambda: queued_messages(nats_server.url, ids.stream), "the queued item", within=10)
    killed = kill(nats_server)
    answer = await asyncio.wait_for(waiting, GRACE + 10)
    elapsed = time.monotonic() - killed
    assert_unavailable(answer, f"NATS has been unreachable for {GRACE:g} s")
    assert GRACE - 0.2 <= elapsed <= GRACE + MARGIN, elapsed
    assert len(platform.tokens) == 0


async def test_calls_that_need_nats_are_refused_at_once_while_it_is_down(
    nats_server: EmbeddedNatsServer, start_platform: Any, caller_factory: Any, ids: Any
) -> None:
    platform = await start_platform(nats_outage_grace=GRACE)
    caller = await caller_factory(platform)
    kill(nats_server)
    await until(lambda: not platform.link.up, "the platform to notice", within=5)
    base = platform.base_url
    auth = {"Authorization": f"Bearer {ids.api_key}"}
    request_id = str(uuid.uuid4())
    calls = {
        "pexec": caller.pexec(headers=POLL),
        "exec": caller.exec({"requestBody": {"x": 1}}),
        "status": caller.status(request_id),
        "exec status": caller.exec_status(request_id),
        "queues": caller.session.get(
            f"{base}/v2/nvcf/queues/functions/{ids.function_id}", headers=auth
        ),
        "assets": caller.session.get(f"{base}/v2/nvcf/assets", headers=auth),
        "health": caller.session.get(f"{base}/health"),
    }
    for name, request in calls.items():
        started = time.monotonic()
        answer = await asyncio.wait_for(answer_of(request), 5)
        assert time.monotonic() - started < 0.5, name
        assert_unavailable(answer, "NATS is not connected")
    # What lives in memory is still served.
    status, _, body = await answer_of(caller.session.get(f"{base}/v2/nvcf/functions", headers=auth))
    assert status == 200, body


async def test_nats_back_within_the_grace_changes_nothing_for_the_waiting_caller(
    nats_server: EmbeddedNatsServer,
    start_platform: Any,
    caller_factory: Any,
    start_worker: Any,
    ids: Any,
) -> None:
    # File storage: the queued item outlives the restart of nats-server on the same store.
    platform = await start_platform(nats_outage_grace=15.0, stream_storage="file")
    caller = await caller_factory(platform)
    waiting = asyncio.create_task(answer_of(caller.pexec(b"still here", headers=POLL)))
    await until(lambda: queued_messages(nats_server.url, ids.stream), "the queued item", within=10)
    kill(nats_server)
    await until(lambda: not platform.link.up, "the platform to notice", within=5)
    await asyncio.to_thread(nats_server.start)
    worker = await start_worker()  # binds the durable consumer the file store kept
    status, headers, body = await asyncio.wait_for(waiting, 20)
    assert status == 200, body
    assert body == b"still here"
    assert headers["nvcf-status"] == "fulfilled"
    assert [item.requestId for item in worker.items] == [headers["nvcf-reqid"]]
    await until(lambda: platform.link.up, "the platform to reconnect", within=10)
    assert (await answer_of(caller.pexec(b"after")))[0] == 200


async def test_a_worker_already_running_the_item_answers_over_http_while_nats_is_down(
    nats_server: EmbeddedNatsServer,
    start_platform: Any,
    caller_factory: Any,
    start_worker: Any,
) -> None:
    platform = await start_platform(nats_outage_grace=10.0)
    caller = await caller_factory(platform)
    release = asyncio.Event()

    async def slow_echo(item: Any, body: bytes, worker: Any) -> Any:
        await release.wait()
        return 200, [("Content-Type", "text/plain")], body

    worker = await start_worker(slow_echo)
    waiting = asyncio.create_task(answer_of(caller.pexec(b"over http", headers=POLL)))
    await worker.wait_for(items=1, within=10)
    kill(nats_server)
    await until(lambda: not platform.link.up, "the platform to notice", within=5)
    release.set()
    status, _, body = await asyncio.wait_for(waiting, 10)
    assert (status, body) == (200, b"over http")


async def test_shutdown_while_nats_is_down_is_bounded_and_answers_the_waiting_caller(
    nats_server: EmbeddedNatsServer, platform_settings: Any, registry: Any, ids: Any
) -> None:
    settings = dataclasses.replace(platform_settings, nats_outage_grace=30.0)
    async with aiohttp.ClientSession() as session:
        service = PlatformService(settings, registry)
        await service.__aenter__()
        try:
            url = f"{service.base_url}/v2/nvcf/pexec/functions/{ids.function_id}"
            headers = {"Authorization": f"Bearer {ids.api_key}", **POLL}
            waiting = asyncio.create_task(answer_of(session.post(url, data=b"x", headers=headers)))
            await until(
                lambda: queued_messages(nats_server.url, ids.stream), "the queued item", within=10
            )
            kill(nats_server)
            await until(lambda: not service.link.up, "the platform to notice", within=5)
        finally:
            started = time.monotonic()
            await asyncio.wait_for(service.__aexit__(None, None, None), 20)
            stopped_in = time.monotonic() - started
        assert stopped_in < 3.0, stopped_in
        assert_unavailable(await asyncio.wait_for(waiting, 5), "shutting down")


async def test_streams_lost_with_a_memory_store_are_recreated_after_the_reconnect(
    nats_server: EmbeddedNatsServer,
    start_platform: Any,
    caller_factory: Any,
    start_worker: Any,
    ids: Any,
) -> None:
    platform = await start_platform()  # memory storage, as NVIDIA's: restart loses the streams
    caller = await caller_factory(platform)
    kill(nats_server)
    await until(lambda: not platform.link.up, "the platform to notice", within=5)
    await asyncio.to_thread(nats_server.start)
    await until(lambda: platform.link.up, "the platform to reconnect", within=10)

    async def consumer_is_back() -> bool:
        with contextlib.suppress(Exception):
            nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
            try:
                await nc.jetstream().consumer_info(ids.stream, ids.consumer)
                return True
            finally:
                await nc.close()
        return False

    await until(consumer_is_back, "the re-created stream and consumer", within=15)
    await start_worker()  # a worker only binds: the platform had to re-create them
    status, _, body = await answer_of(caller.pexec(b"again"))
    assert (status, body) == (200, b"again")
