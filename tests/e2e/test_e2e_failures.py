"""Processes dying and stopping under load, through the whole stack; each test has its own stack.

* The container dies mid-request: the caller gets NVIDIA's worker error (before a response head)
  or a truncated body (after one), and the sidecar serves the next request once the container is
  back (reference §5.2 steps 6 and 8).
* SIGTERM: in-flight requests finish and are answered, the sidecar exits 0, later requests go
  to another sidecar of the version (§10).
* SIGKILL mid-request: the message is redelivered after the ack wait and served by the other
  sidecar; the caller gets exactly one answer (§9).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from harness.waits import wait_for

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]

DELIVERED = 'nvcf_worker_requests_total{outcome="delivered"}'
IN_FLIGHT = "nvcf_worker_requests_in_flight"
WORKER_ERROR_DETAIL = (
    "urn:nvcf-worker-service:problem-details:internal-server-error",
    "Internal error while making inference request",
)
CONNECTION_ERROR_DETAIL = (
    "urn:inference-connection:problem-details:internal-server-error",
    "Inference connection error while making inference request",
)


async def call(
    http: aiohttp.ClientSession, stack: Any, function: Any, **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    """POST to the function with `X-E2E-*` headers (`action="sleep"` -> `X-E2E-Action: sleep`)."""
    sent = {**stack.auth_headers}
    for name, value in headers.items():
        sent[name if "-" in name else f"X-E2E-{name.title()}"] = value
    async with http.post(stack.invoke_url(function.function_id), data=b"{}", headers=sent) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def read_into(response: aiohttp.ClientResponse, chunks: list[bytes]) -> None:
    """Read the body into `chunks` as it arrives (what came before an error stays there)."""
    async for chunk in response.content.iter_any():
        chunks.append(chunk)


def assert_worker_problem(
    status: int, headers: CIMultiDict[str], body: bytes, allowed: set[tuple[str, str]]
) -> None:
    """A worker-generated 500 problem (§5.2 steps 7-8) whose (type, detail) is in `allowed`."""
    assert status == 500, body
    assert headers["nvcf-status"] == "errored"
    assert headers["Content-Type"] == "application/problem+json"
    document = json.loads(body)
    assert document["status"] == 500
    assert document["title"] == "Internal Server Error"
    assert (document["type"], document["detail"]) in allowed


async def serves_after_container_restart(stack: Any, function: Any, http: Any) -> None:
    """The container is restarted; the same sidecar (no restart) serves the next request."""
    [sidecar] = stack.sidecars(function.version_id)
    assert stack.container(function.version_id).wait(5) == -9  # SIGKILLed itself
    await asyncio.to_thread(stack.restart_container, function.version_id)
    await wait_for(sidecar.is_ready, "the sidecar to be ready again")
    status, headers, body = await call(http, stack, function)
    assert status == 200, body
    assert headers["nvcf-status"] == "fulfilled"
    assert sidecar.returncode is None


async def test_container_dying_before_its_answer_is_a_500_problem_and_the_sidecar_goes_on(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(sidecar_args=("--health-check-interval", "0.5s"))
    stack = start_stack([echo])
    status, headers, body = await call(http, stack, echo, action="die", die="before-head")
    # NVIDIA's worker: no response head from the container is a worker-generated 500 problem
    # (§5.2 step 8); a connection closed without an answer is its "internal error" (Go's io.EOF),
    # a reset one its "inference connection error". Which one depends on how the kernel closes
    # the dead process's socket, so both are accepted.
    assert_worker_problem(status, headers, body, {WORKER_ERROR_DETAIL, CONNECTION_ERROR_DETAIL})
    await serves_after_container_restart(stack, echo, http)


async def test_container_dying_mid_stream_truncates_the_callers_body(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(sidecar_args=("--health-check-interval", "0.5s"))
    stack = start_stack([echo])
    headers = {
        **stack.auth_headers,
        "Accept": "text/event-stream",
        "X-E2E-Action": "die",
        "X-E2E-Die": "mid-stream",
    }
    received: list[bytes] = []
    async with http.post(stack.invoke_url(echo.function_id), headers=headers) as response:
        # Passthrough (§5.2 step 6): the head went out with the first event, so the caller has
        # the container's 200; the body breaks off and the caller's connection is aborted (no
        # final chunk), so the cut is visible rather than looking like a complete stream.
        assert response.status == 200
        assert response.headers["nvcf-status"] == "fulfilled"
        assert "Content-Length" not in response.headers
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_into(response, received)
    events = b"".join(received).split(b"\n\n")
    assert [json.loads(event[6:])["i"] for event in events if event] == [0, 1, 2]
    await serves_after_container_restart(stack, echo, http)


async def test_container_dying_within_a_declared_body_is_a_500_problem(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(sidecar_args=("--health-check-interval", "0.5s"))
    stack = start_stack([echo])
    status, headers, body = await call(http, stack, echo, action="die", die="after-head")
    # NVIDIA's worker answers a non-streaming request in compatibility mode, which reads the
    # container's body before answering: a body that breaks off is its internal-error problem.
    assert_worker_problem(status, headers, body, {WORKER_ERROR_DETAIL})
    await serves_after_container_restart(stack, echo, http)


async def test_container_dying_within_a_large_declared_body_is_a_500_problem(
    e2e_function: Any, start_stack: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function()
    stack = start_stack([echo])
    try:
        status, headers, body = await call(
            http, stack, echo, action="die", die="after-head", length="1048576", sent="200000"
        )
    except aiohttp.ClientPayloadError:
        pytest.fail("the caller got a truncated 200 instead of a 500 problem")
    assert_worker_problem(status, headers, body, {WORKER_ERROR_DETAIL})


async def test_sigterm_drains_in_flight_requests_and_another_sidecar_takes_new_ones(
    e2e_function: Any, start_stack: Any, scrape: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(max_request_concurrency=3)
    stack = start_stack([echo])
    [first] = stack.sidecars(echo.version_id)
    in_flight = [
        asyncio.create_task(call(http, stack, echo, action="sleep", seconds="2")) for _ in range(3)
    ]
    await wait_for(lambda: echo.stats()["in_flight"] == 3, "3 requests in the container")

    first.terminate()
    second = await asyncio.to_thread(stack.add_sidecar, echo.version_id, wait=False)
    later = [asyncio.create_task(call(http, stack, echo)) for _ in range(3)]

    for status, headers, body in await asyncio.gather(*in_flight):
        assert status == 200, body
        assert headers["nvcf-status"] == "fulfilled"
        assert json.loads(body) == {"slept": 2.0}
    assert await asyncio.to_thread(first.wait, 15) == 0
    assert [status for status, _, _ in await asyncio.gather(*later)] == [200, 200, 200]
    await wait_for(lambda: scrape(second.metrics_url).get(DELIVERED) == 3, "3 delivered by #2")
    assert echo.stats()["requests"] == 6


async def test_sigkill_mid_request_is_redelivered_to_the_other_sidecar_and_answered_once(
    e2e_function: Any, start_stack: Any, scrape: Any, queue_state: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(sidecars=2)
    stack = start_stack([echo], platform_args=["--consumer-ack-wait", "2"])
    sidecars = stack.sidecars(echo.version_id)
    waiting = asyncio.create_task(
        call(http, stack, echo, action="sleep", seconds="1", **{"NVCF-POLL-SECONDS": "20"})
    )

    def serving() -> list[Any]:
        return [s for s in sidecars if scrape(s.metrics_url).get(IN_FLIGHT) == 1]

    await wait_for(lambda: len(serving()) == 1, "one sidecar to take the request")
    [victim] = serving()
    [survivor] = [sidecar for sidecar in sidecars if sidecar is not victim]
    await wait_for(lambda: echo.stats()["in_flight"] == 1, "the container call")
    victim.kill()
    assert await asyncio.to_thread(victim.wait, 5) == -9

    status, headers, body = await asyncio.wait_for(waiting, 30)
    assert status == 200, body
    assert headers["nvcf-status"] == "fulfilled"
    assert json.loads(body) == {"slept": 1.0}
    # The sidecar counts and acks once its POST attach is answered, just after the caller's.
    await wait_for(lambda: scrape(survivor.metrics_url).get(DELIVERED) == 1, "the survivor's count")
    assert echo.stats()["requests"] == 2  # the killed sidecar's call, then the redelivery
    await queue_state(stack, echo.version_id, expect=(0, 2, 0))
