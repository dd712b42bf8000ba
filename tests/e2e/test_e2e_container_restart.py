"""A container that is down is not a failed request: refused calls wait for it (issue: faults).

A connection the container refuses carried nothing to it: the sidecar marks the container
unhealthy at once (no waiting for its 10 s check), stops fetching, holds the request and sends it
when a health check passes again. Only a container still down when the caller's poll budget runs
out is answered with the connection problem, and only a request that reached the container fails.
A call whose connection the container drops fails, and the container is probed at once: the calls
after it are not sent to a container that fails that probe.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from harness.waits import wait_for

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

REFUSALS = "nvcf_worker_container_refusals_total"
CONTAINER_ERRORS = 'nvcf_worker_requests_total{outcome="container_error"}'
DELIVERED = 'nvcf_worker_requests_total{outcome="delivered"}'
HEALTHY = "nvcf_worker_container_healthy"
PASSTHROUGH = {"nvcf-feature-disable-worker-compatibility": "true"}
INTERNAL_PROBLEM = {
    "type": "urn:nvcf-worker-service:problem-details:internal-server-error",
    "title": "Internal Server Error",
    "status": 500,
    "detail": "Internal error while making inference request",
}
CONNECTION_PROBLEM = {
    "type": "urn:inference-connection:problem-details:internal-server-error",
    "title": "Internal Server Error",
    "status": 500,
    "detail": "Inference connection error while making inference request",
}


async def invoke(
    http: aiohttp.ClientSession, stack: Any, function: Any, payload: dict[str, Any], **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    """A pexec call that follows 202s with status polls until a final answer (bounded)."""
    sent = {**stack.auth_headers, **headers}
    async with http.post(stack.invoke_url(function.function_id), json=payload, headers=sent) as r:
        status, answer, body = r.status, CIMultiDict(r.headers), await r.read()
    for _ in range(60):
        if status != 202:
            break
        url = f"{stack.base_url}/v2/nvcf/pexec/status/{answer['nvcf-reqid']}"
        async with http.get(url, headers=sent) as r:
            status, answer, body = r.status, CIMultiDict(r.headers), await r.read()
    return status, answer, body


def sent_body(echoed: bytes) -> Any:
    """The JSON body the container received, from its echo document."""
    return json.loads(base64.b64decode(json.loads(echoed)["body_b64"]))


async def kill_container(stack: Any, function: Any) -> None:
    container = stack.container(function.version_id)
    container.kill()
    assert await asyncio.to_thread(container.wait, 5) == -9


async def test_requests_arriving_while_the_container_restarts_are_held_and_all_answered(
    e2e_function: Any, start_stack: Any, scrape: Any, http: aiohttp.ClientSession
) -> None:
    # The periodic health check stays at NVIDIA's 10 s: the refusal itself must stop the sidecar.
    echo = e2e_function(max_request_concurrency=8)
    stack = start_stack([echo])
    [sidecar] = stack.sidecars(echo.version_id)
    await kill_container(stack, echo)

    calls = [
        asyncio.create_task(invoke(http, stack, echo, {"n": n}, **(PASSTHROUGH if n % 2 else {})))
        for n in range(6)
    ]
    await wait_for(lambda: scrape(sidecar.metrics_url).get(REFUSALS, 0) >= 1, "a refused call")
    await wait_for(lambda: scrape(sidecar.metrics_url).get(HEALTHY) == 0, "the sidecar to notice")
    assert not sidecar.is_ready()  # not ready at once: no new work is fetched
    await asyncio.sleep(1.0)  # about as long as a real restart takes
    await asyncio.to_thread(stack.restart_container, echo.version_id)

    answers = await asyncio.wait_for(asyncio.gather(*calls), 45)
    for n, (status, headers, body) in enumerate(answers):
        assert status == 200, body
        assert headers["nvcf-status"] == "fulfilled"
        assert sent_body(body) == {"n": n}
    # Counted once the platform answered each POST attach, just after the callers got them.
    await wait_for(lambda: scrape(sidecar.metrics_url).get(DELIVERED) == 6, "6 delivered")
    assert scrape(sidecar.metrics_url).get(CONTAINER_ERRORS, 0) == 0
    assert echo.stats()["requests"] == 6  # each executed once
    assert sidecar.returncode is None


async def test_a_container_still_down_when_the_budget_runs_out_is_a_clean_connection_problem(
    e2e_function: Any, start_stack: Any, scrape: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function()
    stack = start_stack([echo])
    [sidecar] = stack.sidecars(echo.version_id)
    await kill_container(stack, echo)

    started = time.monotonic()
    status, headers, body = await invoke(
        http, stack, echo, {"n": 1}, **PASSTHROUGH, **{"NVCF-POLL-SECONDS": "2"}
    )
    waited = time.monotonic() - started
    # Held for the caller's 2 s, then answered before the platform's own 504 (2 s later).
    assert status == 500, body
    assert headers["Content-Type"] == "application/problem+json"
    assert json.loads(body) == CONNECTION_PROBLEM
    assert 1.5 <= waited < 4.0
    # Counted once the platform answered the POST attach, just after the caller got it.
    await wait_for(lambda: scrape(sidecar.metrics_url).get(CONTAINER_ERRORS) == 1, "its count")


async def test_compatibility_mode_answers_202_while_the_container_is_down_then_the_result(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function()
    stack = start_stack([echo])
    await kill_container(stack, echo)
    sent = {**stack.auth_headers, "NVCF-POLL-SECONDS": "1"}
    async with http.post(stack.invoke_url(echo.function_id), json={"n": 7}, headers=sent) as r:
        assert r.status == 202  # the caller waits, it is not failed
        request_id = r.headers["nvcf-reqid"]
    await asyncio.to_thread(stack.restart_container, echo.version_id)
    status, body = 202, b""
    for _ in range(30):
        url = f"{stack.base_url}/v2/nvcf/pexec/status/{request_id}"
        async with http.get(url, headers=sent) as r:
            status, body = r.status, await r.read()
        if status != 202:
            break
    assert status == 200, body
    assert sent_body(body) == {"n": 7}
    assert echo.stats()["requests"] == 1


async def test_after_a_dropped_connection_no_call_goes_to_a_container_that_fails_its_probe(
    e2e_function: Any, start_stack: Any, scrape: Any, http: aiohttp.ClientSession
) -> None:
    # NVIDIA's 10 s periodic check would not see the health change in time: the drop must.
    echo = e2e_function()
    stack = start_stack([echo])
    [sidecar] = stack.sidecars(echo.version_id)
    drop = {**PASSTHROUGH, "X-E2e-Action": "drop"}

    # A healthy container that dropped one call: the probe passes and the next call goes out.
    status, _, body = await invoke(http, stack, echo, {"n": 0}, **drop)
    assert (status, json.loads(body)) == (500, INTERNAL_PROBLEM)
    status, _, body = await invoke(http, stack, echo, {"n": 1}, **PASSTHROUGH)
    assert status == 200, body
    assert scrape(sidecar.metrics_url).get(HEALTHY) == 1

    # A container that fails the probe after a drop (as a dying one does) gets no more calls
    # until it is healthy again; the call after the drop waits, then is answered.
    echo.set_health(503)
    status, _, body = await invoke(http, stack, echo, {"n": 2}, **drop)
    assert (status, json.loads(body)) == (500, INTERNAL_PROBLEM)
    waiting = asyncio.create_task(invoke(http, stack, echo, {"n": 3}, **PASSTHROUGH))
    await wait_for(lambda: scrape(sidecar.metrics_url).get(HEALTHY) == 0, "the probe's verdict")
    await asyncio.sleep(1.0)
    assert not waiting.done()
    assert echo.stats()["requests"] == 3  # n = 0, 1, 2: nothing sent while it fails its probe
    echo.set_health(200)
    status, _, body = await asyncio.wait_for(waiting, 30)
    assert status == 200, body
    assert sent_body(body) == {"n": 3}
    assert echo.stats()["requests"] == 4
    assert sidecar.returncode is None
