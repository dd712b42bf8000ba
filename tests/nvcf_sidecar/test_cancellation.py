"""A cancellation lost inside `asyncio.wait_for` (Python 3.11, as nats-py uses it) is raised again."""

from __future__ import annotations

import asyncio

import pytest

from nvcf_sidecar.cancellation import raise_if_cancelled


async def test_a_cancel_arriving_with_the_result_is_raised_again_before_the_next_wait() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    async def handler() -> None:
        steps.append(await asyncio.wait_for(reply, 5))  # 3.11 returns here despite the cancel
        raise_if_cancelled()
        steps.append("waited for a caller who is gone")

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    reply.set_result("acknowledged")
    task.cancel()  # the caller leaves in the same loop iteration as the reply arrives
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "waited for a caller who is gone" not in steps


async def test_a_task_that_was_never_cancelled_goes_on() -> None:
    raise_if_cancelled()


async def test_a_timeout_that_expired_and_was_handled_is_not_a_cancel() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    raise_if_cancelled()  # asyncio.timeout uncancels the task it cancelled
