"""The JetStream side of pexec: timeouts, cancel + purge, a full queue, streams made on demand.

NVIDIA's test_error_codes, test_publish_cancel, test_nats_max_messages and test_consumer_creation
scenarios, against a real nats-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StorageType
from nats.js.errors import NotFoundError

from nvcf_sidecar.protocol import cancel_subject

pytestmark = pytest.mark.nats

WAIT = 30.0


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, within: float = 10
) -> None:
    """Poll an async condition until true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def stream_messages(observer: Any, stream: str) -> int:
    info = await observer.jetstream().stream_info(stream)
    return int(info.state.messages)


async def test_streams_and_consumers_of_every_version_exist_after_start(
    platform: Any, observer: Any, ids: Any
) -> None:
    js = observer.jetstream()
    for version in platform.registry.versions:
        stream = f"rq_{ids.region}_{version.function_version_id}"
        info = await js.stream_info(stream)
        assert info.config.subjects == [f"rq.{ids.region}.{version.function_version_id}.>"]
        assert info.config.max_msgs == 100_000
        assert info.config.max_msgs_per_subject == 1
        assert info.config.discard_new_per_subject is True
        assert info.config.storage == StorageType.MEMORY
        consumer = await js.consumer_info(stream, f"{stream}_workers")
        assert consumer.config.ack_wait == 5.0  # the test platform's setting
        assert consumer.config.max_ack_pending == 100_000


async def test_no_worker_504_after_poll_plus_2_s_then_cancel_published_and_message_purged(
    caller: Any, observer: Any, start_worker: Any, ids: Any
) -> None:
    cancels = await observer.subscribe(cancel_subject(ids.version_id))
    started = time.monotonic()
    async with caller.pexec(headers={"NVCF-POLL-SECONDS": "1"}) as response:
        elapsed = time.monotonic() - started
        assert response.status == 504
        assert response.headers["nvcf-status"] == "errored"
        assert response.headers.getall("Access-Control-Expose-Headers") == ["nvcf-reqid"]
        assert await response.read() == b""
        reqid = response.headers["nvcf-reqid"]
    assert 2.9 <= elapsed < 6, elapsed
    cancel = await asyncio.wait_for(cancels.next_msg(), 5)
    assert cancel.data == reqid.encode()
    # The 504 is sent after the purge: the queue is already empty, a late worker finds nothing.
    assert await stream_messages(observer, ids.stream) == 0
    late = await observer.jetstream().pull_subscribe_bind(consumer=ids.consumer, stream=ids.stream)
    with pytest.raises(NatsTimeoutError):
        await late.fetch(1, timeout=0.5)
    assert len(caller.platform.tokens) == 0


async def test_late_worker_504_until_it_runs_then_200(caller: Any, start_worker: Any) -> None:
    async with caller.pexec(headers={"NVCF-POLL-SECONDS": "1"}) as response:
        assert response.status == 504
    await start_worker()
    async with caller.pexec(headers={"NVCF-POLL-SECONDS": "1"}) as response:
        assert response.status == 200
        assert response.headers["nvcf-reqid"]


async def test_queue_of_10_plus_1_gives_exactly_one_429(
    start_platform: Any, caller_factory: Any
) -> None:
    platform = await start_platform(stream_max_messages=10)
    caller = await caller_factory(platform)

    async def invoke() -> int:
        async with caller.pexec(b"", headers={"NVCF-POLL-SECONDS": "1"}) as response:
            if response.status == 429:
                assert response.headers["Content-Type"] == "application/problem+json"
                problem = await response.json()
                assert problem["status"] == 429
                assert problem["title"] == "Too Many Requests"
                assert "maximum messages exceeded" in problem["detail"]
            return int(response.status)

    statuses = await asyncio.wait_for(asyncio.gather(*(invoke() for _ in range(11))), WAIT)
    assert sorted(statuses) == [429] + [504] * 10


async def test_caller_disconnect_while_waiting_cancels_and_purges(
    caller: Any, observer: Any, ids: Any
) -> None:
    cancels = await observer.subscribe(cancel_subject(ids.version_id))
    host, port = caller.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    path = caller.pexec_url().removeprefix(caller.base_url)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ids.api_key}\r\n"
            "NVCF-POLL-SECONDS: 60\r\nContent-Length: 4\r\n\r\nbody"
        ).encode()
    )
    await writer.drain()

    async def queued() -> bool:
        return await stream_messages(observer, ids.stream) == 1

    await eventually(queued, "the work item in the queue")
    writer.close()
    await writer.wait_closed()
    cancel = await asyncio.wait_for(cancels.next_msg(), 10)

    async def purged() -> bool:
        return await stream_messages(observer, ids.stream) == 0

    await eventually(purged, "the purge of the work item")
    assert len(cancel.data) == 36
    assert len(caller.platform.tokens) == 0
    assert await reader.read() == b""


async def test_deleted_stream_is_created_again_on_publish(
    caller: Any, observer: Any, start_worker: Any, ids: Any
) -> None:
    js = observer.jetstream()
    await js.delete_stream(ids.stream)
    with pytest.raises(NotFoundError):
        await js.stream_info(ids.stream)

    async def invoke() -> tuple[int, bytes]:
        async with caller.pexec(b"again") as response:
            return response.status, await response.read()

    pending = asyncio.create_task(invoke())

    async def recreated() -> bool:
        try:
            return await stream_messages(observer, ids.stream) == 1
        except NotFoundError:
            return False

    await eventually(recreated, "the stream re-created with the work item in it")
    await js.consumer_info(ids.stream, ids.consumer)
    await start_worker()
    assert await asyncio.wait_for(pending, WAIT) == (200, b"again")
