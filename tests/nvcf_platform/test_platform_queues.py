"""NVCF's queue-details routes over real work-queue streams: depth, position, errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest

from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.invocation.queues import QueueInspector, QueueUnavailable
from nvcf_sidecar.protocol import WorkerInvokeFunctionRequest, request_subject_filter

pytestmark = pytest.mark.nats

WAIT = 10.0


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, within: float = WAIT
) -> None:
    """Poll an async condition until true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def get(caller: Any, path: str, key: str | None = None) -> tuple[int, str, Any]:
    """GET a platform path as the test caller: (status, content type, JSON or bytes)."""
    key = caller.platform.settings.api_keys[0] if key is None else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with caller.session.get(caller.base_url + path, headers=headers) as response:
        kind = response.content_type
        body = await response.json(content_type=None) if "json" in kind else await response.read()
        return response.status, kind, body


async def depth(caller: Any, function_id: str, version_id: str) -> int:
    status, _, body = await get(
        caller, f"/v2/nvcf/queues/functions/{function_id}/versions/{version_id}"
    )
    assert status == 200, body
    return int(body["queues"][0]["queueDepth"])


async def position(caller: Any, request_id: str) -> tuple[int, Any]:
    status, _, body = await get(caller, f"/v2/nvcf/queues/{request_id}/position")
    return status, body


@pytest.fixture
async def invocations(caller: Any) -> AsyncIterator[Callable[..., asyncio.Task[int]]]:
    """Start pexec calls that wait (up to a minute) for a worker; cancelled at the end."""
    tasks: list[asyncio.Task[int]] = []

    async def call(function_id: str, version_id: str) -> int:
        headers = {"NVCF-POLL-SECONDS": "60"}
        async with caller.pexec(
            b"queued", headers=headers, function_id=function_id, version_id=version_id
        ) as response:
            await response.read()
            return int(response.status)

    def start(function_id: str, version_id: str) -> asyncio.Task[int]:
        task = asyncio.create_task(call(function_id, version_id))
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)


async def queue_one(
    caller: Any, invocations: Any, subscription: Any, function_id: str, version_id: str
) -> tuple[asyncio.Task[int], str]:
    """Invoke once with no worker and return the task and its request id once it is queued."""
    before = await depth(caller, function_id, version_id)
    task = invocations(function_id, version_id)
    message = await subscription.next_msg(timeout=WAIT)
    request_id = str(message.subject.rsplit(".", 1)[1])

    async def stored() -> bool:
        return await depth(caller, function_id, version_id) == before + 1

    await eventually(stored, f"request {request_id} in the stream")
    return task, request_id


async def test_depth_and_positions_follow_the_undelivered_messages(
    caller: Any, invocations: Any, observer: Any, start_worker: Any, ids: Any
) -> None:
    subscription = await observer.subscribe(request_subject_filter(ids.region, ids.version_id))
    queued = [
        await queue_one(caller, invocations, subscription, ids.function_id, ids.version_id)
        for _ in range(3)
    ]
    request_ids = [request_id for _, request_id in queued]

    status, kind, body = await get(caller, f"/v2/nvcf/queues/functions/{ids.function_id}")
    assert (status, kind) == (200, "application/json")
    assert body == {
        "functionId": ids.function_id,
        "queues": [
            {
                "functionVersionId": ids.version_id,
                "functionName": "echo",
                "functionStatus": "INACTIVE",
                "queueDepth": 3,
            }
        ],
    }
    for expected, request_id in enumerate(request_ids, 1):
        status, body = await position(caller, request_id)
        assert status == 200, body
        assert body == {
            "requestId": request_id,
            "functionId": ids.function_id,
            "functionVersionId": ids.version_id,
            "positionInQueue": expected,
        }
    # Any UUID spelling names the same request.
    status, body = await position(caller, request_ids[2].replace("-", "").upper())
    assert (status, body["positionInQueue"]) == (200, 3)

    # The caller of the middle request leaves: it is purged, the last one moves up.
    queued[1][0].cancel()

    async def withdrawn() -> bool:
        return (await position(caller, request_ids[1]))[0] == 404

    await eventually(withdrawn, "the middle request withdrawn")
    assert await depth(caller, ids.function_id, ids.version_id) == 2
    assert (await position(caller, request_ids[0]))[1]["positionInQueue"] == 1
    assert (await position(caller, request_ids[2]))[1]["positionInQueue"] == 2

    # A worker takes both; while it holds them they are delivered: no longer queued.
    release = asyncio.Event()

    async def hold(item: WorkerInvokeFunctionRequest, body: bytes, worker: Any) -> Any:
        await release.wait()
        return 200, [("Content-Type", "text/plain")], body

    worker = await start_worker(handler=hold)
    await worker.wait_for(items=2, within=WAIT)
    assert await depth(caller, ids.function_id, ids.version_id) == 0
    for request_id in (request_ids[0], request_ids[2]):
        status, body = await position(caller, request_id)
        assert status == 404
        assert body["detail"] == (
            f"Function invocation request id '{request_id}': Invocation request message is "
            "not queued (unknown, or already delivered to a worker)"
        )
    release.set()
    assert await asyncio.wait_for(queued[0][0], WAIT) == 200
    assert await asyncio.wait_for(queued[2][0], WAIT) == 200
    assert (await position(caller, request_ids[0]))[0] == 404


async def test_queues_of_a_function_list_every_version_and_position_finds_the_version(
    caller: Any, invocations: Any, observer: Any, ids: Any
) -> None:
    first, second = ids.other_version_ids
    subscription = await observer.subscribe(request_subject_filter(ids.region, second))
    _, request_id = await queue_one(
        caller, invocations, subscription, ids.other_function_id, second
    )
    status, _, body = await get(caller, f"/v2/nvcf/queues/functions/{ids.other_function_id}")
    assert status == 200
    assert body["functionId"] == ids.other_function_id
    assert [
        (q["functionVersionId"], q["functionName"], q["queueDepth"]) for q in body["queues"]
    ] == [
        (first, "two-versions", 0),
        (second, "two-versions", 1),
    ]
    status, body = await position(caller, request_id)
    assert status == 200
    assert (body["functionId"], body["functionVersionId"], body["positionInQueue"]) == (
        ids.other_function_id,
        second,
        1,
    )


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        (
            "/v2/nvcf/queues/functions/{unknown}",
            404,
            "Function id '{unknown}': Not found in account",
        ),
        ("/v2/nvcf/queues/functions/position", 404, "Function id 'position': Not found"),
        (
            "/v2/nvcf/queues/functions/{fid}/versions/{unknown}",
            404,
            "Function id '{fid}', version '{unknown}': Not found",
        ),
        (
            "/v2/nvcf/queues/{unknown}/position",
            404,
            "Function invocation request id '{unknown}': Invocation request message is not queued",
        ),
        ("/v2/nvcf/queues/not-a-uuid/position", 400, "invalid request id 'not-a-uuid': not a UUID"),
    ],
)
async def test_unknown_functions_versions_and_requests_are_problems(
    caller: Any, ids: Any, path: str, status: int, detail: str
) -> None:
    names = {"unknown": str(uuid.uuid4()), "fid": ids.function_id}
    answer, kind, body = await get(caller, path.format(**names))
    assert (answer, kind) == (status, "application/problem+json")
    assert body["detail"].startswith(detail.format(**names))


@pytest.mark.parametrize(
    "path",
    [
        "/v2/nvcf/queues/functions/{fid}",
        "/v2/nvcf/queues/functions/{fid}/versions/{fvid}",
        "/v2/nvcf/queues/{reqid}/position",
    ],
)
async def test_queue_routes_need_an_accepted_bearer(caller: Any, ids: Any, path: str) -> None:
    url = path.format(fid=ids.function_id, fvid=ids.version_id, reqid=uuid.uuid4())
    status, kind, body = await get(caller, url, key="wrong-key")
    assert (status, kind, body["detail"]) == (
        401,
        "application/problem+json",
        "client is unauthorized",
    )
    status, _, text = await get(caller, url, key="")
    assert (status, text) == (401, b"Header of type `authorization` was missing")


async def test_inspector_reports_an_unreadable_queue(
    nats_server: EmbeddedNatsServer, ids: Any
) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    inspector = QueueInspector(nc, region=ids.region)
    assert await inspector.depth(ids.version_id) == 0  # no stream: an empty queue
    assert await inspector.position(ids.version_id, str(uuid.uuid4())) is None
    await nc.close()
    with pytest.raises(QueueUnavailable, match=ids.stream):
        await inspector.depth(ids.version_id)
