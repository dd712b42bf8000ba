"""A result waiting for its caller's next poll does not hold the function's slot.

NVIDIA's worker keeps a request's concurrency slot from receipt until a poll takes its final answer,
so a caller that got a 202 and went away blocks a one-slot function for max(2 x poll, 10 s). Here
the slot is freed as soon as the container has answered (the answer itself waits, as before, for
the next poll): the next request runs at once, and the parked answer can still be fetched.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]

IN_FLIGHT = "nvcf_worker_requests_in_flight"


async def test_a_parked_answer_frees_the_only_slot_and_can_still_be_fetched(
    e2e_function: Any, start_stack: Any, scrape: Any, http: aiohttp.ClientSession
) -> None:
    echo = e2e_function(max_request_concurrency=1)
    stack = start_stack([echo])
    [sidecar] = stack.sidecars(echo.version_id)
    url, auth = stack.invoke_url(echo.function_id), stack.auth_headers

    slow = {**auth, "NVCF-POLL-SECONDS": "1", "X-E2E-Action": "sleep", "X-E2E-Seconds": "1.5"}
    async with http.post(url, data=b"{}", headers=slow) as response:
        assert response.status == 202  # the budget ran out first; the caller does not poll
        parked_id = response.headers["nvcf-reqid"]
    deadline = time.monotonic() + 10
    while echo.stats()["in_flight"] or scrape(sidecar.metrics_url).get(IN_FLIGHT) != 0:
        assert time.monotonic() < deadline, "the container call never ended, or kept its slot"
        await asyncio.sleep(0.05)

    started = time.monotonic()
    async with http.post(url, data=b"{}", headers={**auth, "NVCF-POLL-SECONDS": "5"}) as response:
        assert response.status == 200, await response.read()
    waited = time.monotonic() - started
    assert waited < 3.0, f"the next request waited {waited:.1f} s for the parked one's slot"

    status_url = f"{stack.base_url}/v2/nvcf/pexec/status/{parked_id}"
    async with http.get(status_url, headers=auth) as response:
        assert response.status == 200, await response.read()
        assert json.loads(await response.read()) == {"slept": 1.5}
