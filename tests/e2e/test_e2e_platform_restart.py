"""The platform SIGKILLed mid-traffic and restarted by `LocalStack.restart_platform`.

What each party sees: a caller whose connection the kill cut gets a dropped connection; the work
item it had queued is not run: the sidecar asks the new platform first, which does not know its
response token (it lived in the dead process); a request answered 202 before the kill is fetched by a status poll after
it; new calls are served by the same sidecar, not restarted; a presigned URL minted before is
still valid (same port, same secret file), and so is a worker token (any bearer is accepted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest

from harness.waits import wait_for
from nvcf_sidecar.protocol import WorkerConnect, WorkerStub

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

TOKEN_GONE = 'nvcf_worker_expired_total{reason="token_gone"}'
ATTACH_POST_ERRORS = 'nvcf_worker_attach_errors_total{direction="post"}'
DELIVERED = 'nvcf_worker_requests_total{outcome="delivered"}'


async def connect_once(grpc_url: str, bearer: str, function: Any) -> str:
    """ConnectOnce as a sidecar's token refresh does it; the worker token it hands out."""
    request = WorkerConnect(
        instanceId="refresh", functionId=function.function_id, functionVersionId=function.version_id
    )
    async with grpc.aio.insecure_channel(grpc_url.removeprefix("http://")) as channel:
        metadata = (("authorization", f"Bearer {bearer}"),)
        response = await WorkerStub(channel).ConnectOnce(request, metadata=metadata, timeout=10)
    token: str = response.nvcfWorkerToken
    return token


async def test_a_restarted_platform_serves_through_the_same_sidecar_and_keeps_its_urls(
    start_stack: Callable[..., Any],
    e2e_function: Callable[..., Any],
    scrape: Callable[[str], dict[str, float]],
    http: aiohttp.ClientSession,
) -> None:
    echo = e2e_function("echo")  # one sidecar, one request at a time
    stack = start_stack([echo])
    [sidecar] = stack.sidecars(echo.version_id)
    url, auth = stack.invoke_url(echo.function_id), stack.auth_headers
    base_url, grpc_url = stack.base_url, stack.grpc_url
    async with http.post(
        f"{base_url}/v2/nvcf/assets",
        json={"contentType": "text/plain", "description": "minted before"},
        headers=auth,
    ) as response:
        assert response.status == 200, await response.read()
        asset = await response.json()
    worker_token = await connect_once(grpc_url, "initial-token", echo)

    # Answered 202 before the kill; the sidecar keeps running it.
    slow = {**auth, "NVCF-POLL-SECONDS": "1", "X-E2E-Action": "sleep", "X-E2E-Seconds": "4"}
    async with http.post(url, data=b"{}", headers=slow) as response:
        assert response.status == 202, await response.read()
        request_id = response.headers["nvcf-reqid"]

    async def cut_off() -> BaseException | None:
        try:
            async with http.post(url, data=b"{}", headers=auth) as response:
                await response.read()
        except aiohttp.ClientError as error:
            return error
        return None

    queued = asyncio.create_task(cut_off())  # waits behind the 202 request
    await asyncio.sleep(0.5)
    killed_at = time.monotonic()
    stack.platform.kill()
    assert await queued is not None, "the caller of the killed platform got an answer"
    old_pid = stack.platform.pid
    assert stack.platform.wait(10) == -9

    fresh = await asyncio.to_thread(stack.restart_platform)
    print(f"platform serving again {time.monotonic() - killed_at:.2f} s after the SIGKILL")
    assert fresh.pid != old_pid
    assert (stack.base_url, stack.grpc_url) == (base_url, grpc_url)
    assert sidecar.running
    assert stack.sidecars(echo.version_id) == [sidecar]
    # A token refresh with the token the killed platform issued succeeds.
    assert await connect_once(grpc_url, worker_token, echo) != worker_token

    # The status poll of the 202 request gets its result from the new platform.
    deadline = time.monotonic() + 20
    while True:
        status_url = f"{base_url}/v2/nvcf/pexec/status/{request_id}"
        async with http.get(status_url, headers={**auth, "NVCF-POLL-SECONDS": "5"}) as response:
            body = await response.read()
            if response.status != 202:
                break
        assert time.monotonic() < deadline, "the 202 request never finished"
    assert response.status == 200, body
    assert await response.json() == {"slept": 4.0}

    # The cut-off caller's item waited in the queue: before running it, the sidecar asked the new
    # platform, which does not know its response token (it lived in the killed process): it is
    # acked without calling the container, and nothing is POSTed to nobody.
    await wait_for(
        lambda: scrape(sidecar.metrics_url).get(TOKEN_GONE, 0) == 1,
        "the cut-off caller's item to expire unrun",
        within=20,
    )
    assert scrape(sidecar.metrics_url).get(ATTACH_POST_ERRORS, 0) == 0
    assert fresh.running

    # New calls: served by the same sidecar. The 202 request is counted once its POST attach
    # was answered, just after its caller got the result: wait for that count first.
    await wait_for(
        lambda: scrape(sidecar.metrics_url).get(DELIVERED, 0) == 1,
        "the 202 request's delivery to be counted",
        within=20,
    )
    delivered = 1
    async with http.post(url, data=b'{"after": true}', headers=auth) as response:
        assert response.status == 200, await response.read()
        assert response.headers["nvcf-status"] == "fulfilled"
    await wait_for(
        lambda: scrape(sidecar.metrics_url).get(DELIVERED) == delivered + 1,
        "one more delivered",
        within=20,
    )

    # A presigned URL minted by the killed platform is honoured by the new one.
    async with http.put(
        asset["uploadUrl"],
        data=b"uploaded after the restart",
        headers={"Content-Type": "text/plain"},
    ) as response:
        assert response.status == 200, await response.read()
    async with http.get(f"{base_url}/v2/nvcf/assets/{asset['assetId']}", headers=auth) as response:
        assert response.status == 200, await response.read()
