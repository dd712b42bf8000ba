"""The autoscaler with real instances: a burst scales a version up to its maximum and back to its
minimum once idle; minimum 0 scales to zero and the next call is answered (cold start); the
seeds' update flow under load fails no request; a steady load does not make it flap."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytestmark = pytest.mark.nats

FAST = {"autoscale_interval": 0.5, "scale_down_cooldown": 1.0}


async def _counts(api: Any, fid: str, fvid: str) -> dict[str, int]:
    status, body = await api.call("GET", api.deployment_path(fid, fvid))
    assert status == 200, body
    counts: dict[str, int] = body["deployment"]["deploymentSpecifications"][0]["instances"]
    return counts


async def _watch(
    api: Any, fid: str, fvid: str, stop: asyncio.Event, seen: list[dict[str, int]]
) -> None:
    """Record the instance counts every 0.1 s until `stop` (a flag: no cancel of NATS calls)."""
    while not stop.is_set():
        seen.append(await _counts(api, fid, fvid))
        await asyncio.sleep(0.1)


async def _calls(
    api: Any, fid: str, count: int, body: Any, concurrency: int
) -> list[tuple[int, Any]]:
    """`count` calls by function id, `concurrency` at a time; every answer."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> tuple[int, Any]:
        async with gate:
            return await api.pexec(fid, body)  # type: ignore[no-any-return]

    return await asyncio.gather(*(one() for _ in range(count)))


async def test_a_burst_scales_up_to_the_maximum_and_back_to_the_minimum(
    api_factory: Callable[..., Awaitable[Any]],
    function_body: Any,
    env_image: str,
    cpu_spec: dict[str, Any],
) -> None:
    api = await api_factory(**FAST)
    fid, fvid = await api.create(function_body(env_image))
    await api.deploy(fid, fvid, {**cpu_spec, "minInstances": 1, "maxInstances": 3})
    await api.wait_status(fid, fvid, "ACTIVE")
    stop, seen = asyncio.Event(), []
    watcher = asyncio.create_task(_watch(api, fid, fvid, stop, seen))

    started = time.monotonic()
    answers = await asyncio.wait_for(_calls(api, fid, 200, {"sleep": 0.05}, concurrency=100), 120)
    burst_s = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(watcher, 10)

    assert [status for status, _ in answers] == [200] * 200
    assert max(c["ready"] for c in seen) == 3, seen[-5:]
    assert max(c["desired"] for c in seen) == 3
    await api.wait_counts(fid, fvid, {"desired": 1, "ready": 1, "starting": 0}, limit=30)
    print(f"burst of 200 answered in {burst_s:.1f} s")


async def test_minimum_zero_scales_to_zero_and_the_next_call_is_answered(
    api_factory: Callable[..., Awaitable[Any]],
    function_body: Any,
    env_image: str,
    cpu_spec: dict[str, Any],
) -> None:
    api = await api_factory(**FAST, idle_timeout=2.0)
    fid, fvid = await api.create(function_body(env_image))
    await api.deploy(fid, fvid, {**cpu_spec, "minInstances": 0, "maxInstances": 2})
    assert await api.status(fid, fvid) == "ACTIVE"
    assert await _counts(api, fid, fvid) == {"desired": 0, "ready": 0, "starting": 0}

    cold_starts = []
    for _ in range(2):
        started = time.monotonic()
        status, body = await api.pexec(fid, {})
        cold_starts.append(time.monotonic() - started)
        assert status == 200, body
        assert await api.status(fid, fvid) == "ACTIVE"
        # Idle for the timeout: back to zero instances, the version stays ACTIVE.
        await api.wait_counts(fid, fvid, {"desired": 0, "ready": 0, "starting": 0}, limit=30)
        assert await api.status(fid, fvid) == "ACTIVE"
    print("cold starts: " + ", ".join(f"{s:.2f} s" for s in cold_starts))


async def test_the_update_flow_under_load_fails_no_request(
    api_factory: Callable[..., Awaitable[Any]],
    function_body: Any,
    env_image: str,
    cpu_spec: dict[str, Any],
) -> None:
    api = await api_factory(**FAST, undeploy_drain_timeout=30.0)
    fid, v1 = await api.create(function_body(env_image))
    await api.deploy(fid, v1, cpu_spec)
    await api.wait_status(fid, v1, "ACTIVE")
    answers: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def caller() -> None:
        while not done.is_set() and len(answers) < 2000:
            status, body = await api.pexec(fid, {"sleep": 0.01})
            version = body["env"]["NVCF_FUNCTION_VERSION_ID"] if status == 200 else repr(body)
            answers.append((status, version))

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    try:
        _, v2 = await api.create(function_body(env_image), function_id=fid)
        await api.deploy(fid, v2, cpu_spec)
        await api.wait_status(fid, v2, "ACTIVE")
        both_at = len(answers)
        await _wait_for(lambda: {v for _, v in answers[both_at:]} >= {v1, v2}, 30)
        status, body = await api.call("DELETE", api.deployment_path(fid, v1))
        assert status == 200, body
        await api.wait_deployment_gone(fid, v1)
        switched_at = len(answers)
        await _wait_for(lambda: len(answers) >= max(500, switched_at + 100), 120)
    finally:
        done.set()
        await asyncio.wait_for(asyncio.gather(*callers), 60)

    failed = [(s, v) for s, v in answers if s != 200]
    assert failed == []
    assert len(answers) >= 500
    assert {v for _, v in answers[switched_at:]} == {v2}


async def test_a_steady_load_at_70_percent_of_one_instance_does_not_flap(
    api_factory: Callable[..., Awaitable[Any]],
    function_body: Any,
    env_image: str,
    cpu_spec: dict[str, Any],
) -> None:
    api = await api_factory(autoscale_interval=0.5, scale_down_cooldown=3.0)
    fid, fvid = await api.create(function_body(env_image))
    await api.deploy(fid, fvid, {**cpu_spec, "minInstances": 1, "maxInstances": 3})
    await api.wait_status(fid, fvid, "ACTIVE")
    stop, seen = asyncio.Event(), []
    watcher = asyncio.create_task(_watch(api, fid, fvid, stop, seen))

    service, rate, seconds = 0.1, 7.0, 10.0  # 7 calls/s of 0.1 s: 70 % of one instance
    calls = []
    started = time.monotonic()
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        calls.append(asyncio.create_task(api.pexec(fid, {"sleep": service})))
    answers = await asyncio.wait_for(asyncio.gather(*calls), 60)
    stop.set()
    await asyncio.wait_for(watcher, 10)

    assert [status for status, _ in answers] == [200] * len(calls)
    desired = [c["desired"] for c in seen]
    changes = [b for a, b in itertools.pairwise(desired) if a != b]
    assert len(changes) <= 1, desired  # at most one step, never back and forth


async def _wait_for(condition: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit} s")
        await asyncio.sleep(0.05)
