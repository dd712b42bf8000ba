"""Function-version status through the whole stack: sidecars stopping, a container turning unhealthy.

The platform probes each version's sidecar readiness URLs (`instance_health_urls`, written by the
stack) and moves the version as NVCF's life cycle says (docs/platform.md, "Function-version
status"): ACTIVE with `min_instances` ready, DEGRADING below it, DEGRADED with none, ACTIVE again
once enough are back. A version that never had enough is DEPLOYING; one without health URLs and
without a connected worker is INACTIVE. The function listing and the queue details report it.

The platform's probe interval is shortened through `NVCF_PLATFORM_HEALTH_PROBE_INTERVAL`, which
the stack's children inherit. Each test has its own stack (they stop processes).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

PROBE_INTERVAL = "1"
"""Seconds between the platform's probe rounds (each probe may take up to 1 s)."""
STATUS_WAIT = 30.0
"""Bound on waiting for one status change (a few probe rounds, on a busy machine)."""


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVCF_PLATFORM_HEALTH_PROBE_INTERVAL", PROBE_INTERVAL)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, stack: Any, path: str) -> Any:
    async with http.get(stack.base_url + path, headers=stack.auth_headers) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


async def version_status(http: aiohttp.ClientSession, stack: Any, function: Any) -> str:
    """The version's `status` in `GET /v2/nvcf/functions/{fid}/versions`."""
    body = await get_json(http, stack, f"/v2/nvcf/functions/{function.function_id}/versions")
    [entry] = [e for e in body["functions"] if e["versionId"] == function.version_id]
    status: str = entry["status"]
    return status


async def wait_status(
    http: aiohttp.ClientSession, stack: Any, function: Any, expected: str
) -> list[str]:
    """Poll the version's status until it is `expected`; the statuses seen on the way (in order,
    repeats dropped). Fails with them after `STATUS_WAIT` seconds."""
    seen: list[str] = []
    deadline = time.monotonic() + STATUS_WAIT
    while True:
        status = await version_status(http, stack, function)
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == expected:
            return seen
        assert time.monotonic() < deadline, f"waiting for {expected}, saw {seen}"
        await asyncio.sleep(0.1)


async def post_status(
    http: aiohttp.ClientSession, stack: Any, function: Any, *, poll_seconds: int
) -> int:
    """POST to the function and read the whole answer; its status."""
    headers = {**stack.auth_headers, "NVCF-POLL-SECONDS": str(poll_seconds)}
    async with http.post(
        stack.invoke_url(function.function_id), data=b"{}", headers=headers
    ) as response:
        await response.read()
        return response.status


async def stop_sidecar(process: Any) -> None:
    process.terminate()
    assert await asyncio.to_thread(process.wait, 15) == 0  # SIGTERM is a clean stop


async def test_version_degrades_as_its_sidecars_stop_and_recovers_when_they_restart(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    pair = e2e_function("pair", sidecars=2, min_instances=2)
    solo = e2e_function("solo")
    stack = start_stack([pair, solo])
    await wait_status(http, stack, pair, "ACTIVE")
    first, second = stack.sidecars(pair.version_id)

    await stop_sidecar(first)
    assert await wait_status(http, stack, pair, "DEGRADING") == ["ACTIVE", "DEGRADING"]
    await stop_sidecar(second)
    assert await wait_status(http, stack, pair, "DEGRADED") == ["DEGRADING", "DEGRADED"]
    # Another version's sidecars are probed on their own: untouched, it stays ACTIVE.
    assert await version_status(http, stack, solo) == "ACTIVE"

    # A restart returns once its sidecar is ready, and the platform's probe (every second) may
    # have seen it by then: the status before may already be gone.
    await asyncio.to_thread(stack.restart, first, wait=True, timeout=30)
    assert await wait_status(http, stack, pair, "DEGRADING") in (
        ["DEGRADED", "DEGRADING"],
        ["DEGRADING"],
    )
    await asyncio.to_thread(stack.restart, second, wait=True, timeout=30)
    assert await wait_status(http, stack, pair, "ACTIVE") in (["DEGRADING", "ACTIVE"], ["ACTIVE"])
    assert [s.returncode for s in stack.sidecars(pair.version_id)] == [None, None]


async def test_version_leaves_active_while_its_container_is_unhealthy(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(sidecar_args=("--health-check-interval", "0.5s"))
    stack = start_stack([echo])
    [sidecar] = stack.sidecars(echo.version_id)
    await wait_status(http, stack, echo, "ACTIVE")

    echo.set_health(503)
    # One sidecar, min_instances 1: none ready is DEGRADED (never DEGRADING).
    assert await wait_status(http, stack, echo, "DEGRADED") == ["ACTIVE", "DEGRADED"]
    assert not await asyncio.to_thread(sidecar.is_ready)  # the sidecar's own readiness says so
    assert sidecar.returncode is None  # an unhealthy container stops nothing

    echo.set_health(200)
    assert await wait_status(http, stack, echo, "ACTIVE") == ["DEGRADED", "ACTIVE"]
    assert sidecar.returncode is None


async def test_listing_and_queue_details_report_every_version(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    alpha_id = str(uuid.uuid4())
    ready = e2e_function("alpha", function_id=alpha_id)
    short = e2e_function("alpha", function_id=alpha_id, min_instances=2)  # 1 sidecar of 2
    idle = e2e_function("beta", sidecars=0)  # no sidecar, so no health URL and no worker
    stack = start_stack([ready, short, idle])
    await wait_status(http, stack, ready, "ACTIVE")

    body = await get_json(http, stack, "/v2/nvcf/functions")
    listed = {e["versionId"]: e for e in body["functions"]}
    assert [e["versionId"] for e in body["functions"]] == [
        ready.version_id,
        short.version_id,
        idle.version_id,
    ]
    expected = [
        (ready, "alpha", "ACTIVE", 1, ["sidecar-alpha1-1"]),
        (short, "alpha", "DEPLOYING", 2, ["sidecar-alpha2-1"]),
        (idle, "beta", "INACTIVE", 1, []),
    ]
    for function, name, status, minimum, instances in expected:
        entry = listed[function.version_id]
        assert (entry["id"], entry["name"], entry["status"]) == (function.function_id, name, status)
        assert (entry["minInstances"], entry["inferenceUrl"]) == (minimum, "/invoke")
        seen = [item["instanceId"] for item in entry.get("activeInstances", [])]
        assert seen == instances
    versions = await get_json(http, stack, f"/v2/nvcf/functions/{alpha_id}/versions")
    assert versions["functions"] == body["functions"][:2]

    details = await get_json(http, stack, f"/v2/nvcf/queues/functions/{alpha_id}")
    assert details == {
        "functionId": alpha_id,
        "queues": [
            {
                "functionVersionId": ready.version_id,
                "functionName": "alpha",
                "functionStatus": "ACTIVE",
                "queueDepth": 0,
            },
            {
                "functionVersionId": short.version_id,
                "functionName": "alpha",
                "functionStatus": "DEPLOYING",
                "queueDepth": 0,
            },
        ],
    }

    # A request for the version without workers waits in its queue (depth 1) until its 504.
    idle_queue = f"/v2/nvcf/queues/functions/{idle.function_id}/versions/{idle.version_id}"
    waiting = asyncio.create_task(post_status(http, stack, idle, poll_seconds=2))
    depths: list[int] = []
    deadline = time.monotonic() + 10
    while not depths or depths[-1] != 1:
        assert time.monotonic() < deadline, f"queue depths {depths}"
        [queue] = (await get_json(http, stack, idle_queue))["queues"]
        assert queue["functionStatus"] == "INACTIVE"
        depths.append(queue["queueDepth"])
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(waiting, 15) == 504
    [queue] = (await get_json(http, stack, idle_queue))["queues"]
    assert queue["queueDepth"] == 0  # withdrawn with the 504
