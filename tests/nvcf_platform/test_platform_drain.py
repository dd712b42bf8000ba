"""A graceful stop (SIGTERM): callers already waiting get their answers, new ones a clean 503.

While draining the platform keeps listening (workers still POST their answers), refuses every
new caller request with a 503 problem and `Connection: close`, and stops once no caller request
is left or the drain grace is over (the rest then get the shutdown 503).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from nvcf_platform.invocation.drain import DRAINING_DETAIL

pytestmark = pytest.mark.nats

WAIT = 10.0


async def waiting_call(caller: Any) -> tuple[int, bytes]:
    async with caller.pexec() as response:
        return response.status, await response.read()


async def until(condition: Any, what: str) -> None:
    """Poll `condition` until true; fail naming `what` after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_draining_refuses_new_callers_and_lets_waiting_ones_get_their_answers(
    caller: Any, start_worker: Any
) -> None:
    release = asyncio.Event()

    async def answer_when_released(item: Any, body: bytes, worker: Any) -> Any:
        await release.wait()
        return 200, [], b"answered while draining"

    await start_worker(answer_when_released)
    waiting = asyncio.create_task(waiting_call(caller))
    await until(lambda: caller.platform._drain.in_progress == 1, "the caller to wait")

    drained = asyncio.create_task(caller.platform.drain(WAIT))
    await until(lambda: caller.platform._drain.draining, "the drain to begin")
    async with caller.pexec() as refused:
        assert refused.status == 503
        assert refused.headers["Retry-After"]
        assert refused.headers["Connection"] == "close"
        assert (await refused.json())["detail"] == DRAINING_DETAIL
    assert not drained.done()

    release.set()  # the worker answers over attach, which draining keeps serving
    assert await asyncio.wait_for(waiting, WAIT) == (200, b"answered while draining")
    assert await asyncio.wait_for(drained, WAIT) is True


async def test_a_caller_still_waiting_when_the_grace_is_over_gets_the_shutdown_503(
    start_platform: Any, caller_factory: Any, start_worker: Any
) -> None:
    platform = await start_platform()
    caller = await caller_factory(platform)
    never = asyncio.Event()

    async def never_answers(item: Any, body: bytes, worker: Any) -> Any:
        await never.wait()

    await start_worker(never_answers)
    waiting = asyncio.create_task(waiting_call(caller))
    await until(lambda: platform._drain.in_progress == 1, "the caller to wait")

    assert await platform.drain(0.3) is False
    await platform.__aexit__(None, None, None)  # what leaving `async with` does after the drain
    status, body = await asyncio.wait_for(waiting, WAIT)
    assert status == 503, body
    never.set()
