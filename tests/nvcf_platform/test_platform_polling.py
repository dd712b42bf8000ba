"""Status polls end to end: NVIDIA's test_polling and test_error_codes scenarios on the local platform.

A real nats-server, the platform in-process and conftest's mock worker driven by `PollingJob`, which
answers 202 when the caller's poll duration runs out and the result on a later status poll.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from harness.modules import load_module
from nvcf_platform.invocation import exchange
from nvcf_sidecar.protocol import cancel_subject, tracking_stream_name

pytestmark = pytest.mark.nats

PollingJob = load_module(Path(__file__).with_name("platform_mock_worker.py")).PollingJob

WAIT = 30.0
RESULT = (200, [("Content-Type", "text/plain")], b"the result")


async def accepted(caller: Any, **headers: str) -> str:
    """pexec with a 1 s poll duration; asserts the 202 and returns its reqid."""
    async with caller.pexec(b"job", headers={"NVCF-POLL-SECONDS": "1", **headers}) as response:
        assert response.status == 202, await response.text()
        assert await response.read() == b""
        return str(response.headers["nvcf-reqid"])


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, within: float = 10
) -> None:
    """Poll an async condition until true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


def header_values(item: Any, name: str) -> list[str]:
    return [kv.value for kv in item.requestHeaders if kv.key == name]


async def test_job_outlasting_the_poll_answers_202_then_the_status_poll_fetches_the_result(
    caller: Any, start_worker: Any
) -> None:
    job = PollingJob(RESULT, duration=2.0, percent="40")
    await start_worker(job)
    async with caller.pexec(b"job", headers={"NVCF-POLL-SECONDS": "1"}) as response:
        assert response.status == 202
        assert response.headers["Content-Length"] == "0"
        assert response.headers["nvcf-status"] == "in-progress"
        assert response.headers["NVCF-PERCENT-COMPLETE"] == "40"
        assert response.headers.getall("Access-Control-Expose-Headers") == ["nvcf-reqid"]
        request_id = response.headers["nvcf-reqid"]
        assert await response.read() == b""
    assert not job.done  # the 202 came from the poll duration, not from a finished job
    async with caller.status(request_id) as response:
        assert response.status == 200
        assert response.headers["nvcf-status"] == "fulfilled"
        assert response.headers["nvcf-reqid"] == request_id
        assert response.headers["Content-Type"] == "text/plain"
        assert await response.read() == b"the result"
    assert len(caller.platform.tokens) == 0


async def test_result_is_held_while_no_one_polls_and_fetched_only_once(
    caller: Any, start_worker: Any
) -> None:
    job = PollingJob(RESULT)
    worker = await start_worker(job)
    request_id = await accepted(caller)
    job.finish()  # the result now waits at the worker; nobody polls
    await worker.wait_for(handled=1, within=WAIT)
    assert await caller.platform.tracking.lookup(request_id) is not None
    async with caller.status(request_id) as response:
        assert response.status == 200
        assert await response.read() == b"the result"
    async with caller.status(request_id) as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert orjson.loads(await response.read()) == {"status": 404, "title": "Not Found"}
    assert len(worker.polls) == 1  # the second poll never reached a worker


async def test_tracking_record_is_written_with_the_202_and_purged_by_the_final_answer(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    job = PollingJob(RESULT)
    worker = await start_worker(job)
    before = time.time_ns()
    request_id = await accepted(caller)
    record = await caller.platform.tracking.lookup(request_id)
    assert record is not None
    assert record.functionId == ids.function_id
    assert record.functionVersionId == ids.version_id
    assert record.requestTime.ToNanoseconds() == worker.items[0].requestTime.ToNanoseconds()
    assert before <= record.requestTime.ToNanoseconds() <= time.time_ns()
    job.finish()
    async with caller.status(request_id) as response:
        assert response.status == 200
    assert await caller.platform.tracking.lookup(request_id) is None


async def test_a_poll_answered_202_again_keeps_the_record_with_the_original_request_time(
    caller: Any, start_worker: Any
) -> None:
    job = PollingJob(RESULT, percent="70")
    await start_worker(job)
    request_id = await accepted(caller)
    first = await caller.platform.tracking.lookup(request_id)
    async with caller.status(request_id, headers={"NVCF-POLL-SECONDS": "1"}) as response:
        assert response.status == 202
        assert response.headers["nvcf-status"] == "in-progress"
        assert response.headers["NVCF-PERCENT-COMPLETE"] == "70"
        assert response.headers["nvcf-reqid"] == request_id
    again = await caller.platform.tracking.lookup(request_id)
    assert again is not None
    assert first is not None
    assert again.requestTime == first.requestTime
    job.finish()
    async with caller.status(request_id) as response:
        assert response.status == 200
        assert await response.read() == b"the result"


async def test_poll_item_is_a_get_without_body_assets_or_request_token(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    job = PollingJob(RESULT)
    worker = await start_worker(job)
    request_id = await accepted(caller)
    job.finish()
    before = time.time_ns()
    poll_headers = [("X-Poll-Marker", "one"), ("X-Poll-Marker", "two"), ("NVCF-POLL-SECONDS", "5")]
    poll_headers.append(("NVCF-INVOCATION-REGION", "spoofed"))
    async with caller.status(request_id, headers=poll_headers) as response:
        assert response.status == 200
    (poll,) = worker.polls
    assert poll.requestId == request_id
    assert poll.requestMethod == "GET"
    assert poll.requestPath == ids.invocation_path
    assert not poll.HasField("requestBody")
    assert list(poll.inputAssetReference) == []
    assert poll.largeResponseUrl == ""
    assert poll.ncaId == "local-nca"
    assert poll.subject == "local-client"
    assert poll.maxDirectResponseSizeBytes == 5 * 1024 * 1024
    assert poll.directResponseUrl == caller.platform.grpc_url
    assert before <= poll.requestTime.ToNanoseconds() <= time.time_ns()
    assert header_values(poll, "x-poll-marker") == ["one", "two"]
    assert header_values(poll, "nvcf-poll-seconds") == ["5"]
    assert header_values(poll, "nvcf-invocation-region") == [ids.region]
    assert header_values(poll, "authorization") == []
    (config,) = poll.statelessConfig.connectionConfigs
    assert config.http1Config.targetURI == caller.platform.base_url
    assert config.http1Config.responseAuthorizationToken
    assert not config.http1Config.HasField("requestAuthorizationToken")
    initial = worker.items[0].statelessConfig.connectionConfigs[0].http1Config
    assert config.http1Config.responseAuthorizationToken != initial.responseAuthorizationToken


async def test_unknown_request_id_is_404(caller: Any) -> None:
    async with caller.status(str(uuid.uuid4())) as response:
        assert response.status == 404
        assert orjson.loads(await response.read()) == {"status": 404, "title": "Not Found"}


async def test_request_id_that_is_not_a_uuid_is_400(caller: Any) -> None:
    async with caller.status("not-a-request-id") as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        assert "not a UUID" in orjson.loads(await response.read())["detail"]


async def test_status_needs_an_accepted_api_key(caller: Any) -> None:
    async with caller.status(str(uuid.uuid4()), api_key="wrong") as response:
        assert response.status == 401
    async with caller.status(str(uuid.uuid4()), api_key=None) as response:
        assert response.status == 401


async def test_poll_header_above_3600_is_400_on_pexec_and_on_status(
    caller: Any, start_worker: Any
) -> None:
    job = PollingJob(RESULT)
    worker = await start_worker(job)
    async with caller.pexec(b"x", headers={"NVCF-POLL-SECONDS": "10000"}) as response:
        assert response.status == 400
        assert orjson.loads(await response.read())["detail"] == "failed to parse poll duration"
    request_id = await accepted(caller)
    async with caller.status(request_id, headers={"NVCF-POLL-SECONDS": "10000"}) as response:
        assert response.status == 400
        assert orjson.loads(await response.read())["detail"] == "failed to parse poll duration"
    assert worker.polls == []
    assert await caller.platform.tracking.lookup(request_id) is not None


async def test_no_worker_taking_the_poll_is_504_problem_and_the_request_stays(
    caller: Any, start_worker: Any
) -> None:
    await start_worker(PollingJob(RESULT, subscribe=False))
    request_id = await accepted(caller)
    for _ in range(2):  # the record survives: a later poll is answered the same way
        async with caller.status(request_id) as response:
            assert response.status == 504
            assert response.content_type == "application/problem+json"
            assert orjson.loads(await response.read()) == {
                "status": 504,
                "title": "Gateway Timeout",
                "detail": "worker did not acknowledge the status request.",
            }
    assert await caller.platform.tracking.lookup(request_id) is not None
    assert len(caller.platform.tokens) == 0


async def test_a_poll_nobody_takes_is_asked_again_until_a_worker_subscribes(
    caller: Any, start_worker: Any
) -> None:
    # A worker whose NATS node died subscribes again once it reconnected to another node.
    job = PollingJob(RESULT, subscribe=False)
    worker = await start_worker(job)
    request_id = await accepted(caller)
    job.finish()

    async def back_after_a_reconnect() -> None:
        await asyncio.sleep(1.0)
        await job.subscribe_polls(request_id, worker)

    comeback = asyncio.create_task(back_after_a_reconnect())
    started = time.monotonic()
    async with caller.status(request_id) as response:
        assert response.status == 200, await response.text()
        assert await response.read() == b"the result"
    assert time.monotonic() - started >= 1.0
    await comeback
    assert await caller.platform.tracking.lookup(request_id) is None


async def test_a_poll_lost_on_the_way_is_asked_again(
    caller: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A route still pointing at a dead NATS node swallows the poll: no reply, no "no responders".
    monkeypatch.setattr(exchange, "POLL_TRY_SECONDS", 0.5)
    job = PollingJob(RESULT, lose_polls=1)
    await start_worker(job)
    request_id = await accepted(caller)
    job.finish()
    async with caller.status(request_id) as response:
        assert response.status == 200, await response.text()
        assert await response.read() == b"the result"
    assert job.polls_seen == 2


async def test_worker_taking_the_poll_but_never_answering_is_504_and_ends_the_request(
    caller: Any, start_worker: Any, ids: Any, observer: Any
) -> None:
    worker = await start_worker(PollingJob(RESULT, answer_polls=False))
    cancels = await observer.subscribe(cancel_subject(ids.version_id))
    request_id = await accepted(caller)
    async with caller.status(request_id, headers={"NVCF-POLL-SECONDS": "1"}) as response:
        assert response.status == 504
        assert response.headers["nvcf-status"] == "errored"
        assert response.headers["nvcf-reqid"] == request_id
        assert await response.read() == b""
    assert len(worker.polls) == 1
    assert await caller.platform.tracking.lookup(request_id) is None
    async with caller.status(request_id) as response:
        assert response.status == 404
    # No cancel for a status poll: the platform published nothing before answering.
    await caller.platform.nats.flush(timeout=5)
    await observer.flush(timeout=5)
    with pytest.raises(nats.errors.TimeoutError):
        await cancels.next_msg(timeout=0.2)
    assert len(caller.platform.tokens) == 0


async def test_caller_leaving_a_status_poll_revokes_its_token_without_a_cancel(
    caller: Any, start_worker: Any, ids: Any, observer: Any
) -> None:
    worker = await start_worker(PollingJob(RESULT, answer_polls=False))
    cancels = await observer.subscribe(cancel_subject(ids.version_id))
    request_id = await accepted(caller)

    async def poll() -> None:
        async with caller.status(request_id) as response:
            await response.read()

    task = asyncio.create_task(poll())
    await worker.wait_for(polls=1, within=WAIT)
    assert len(caller.platform.tokens) == 1
    task.cancel()

    async def revoked() -> bool:
        return len(caller.platform.tokens) == 0

    await eventually(revoked, "the poll's response token to be revoked")
    with pytest.raises(nats.errors.TimeoutError):
        await cancels.next_msg(timeout=0.2)
    assert await caller.platform.tracking.lookup(request_id) is not None


async def test_tracked_version_no_longer_configured_is_404(caller: Any, ids: Any) -> None:
    request_id = str(uuid.uuid4())
    await caller.platform.tracking.record(request_id, ids.function_id, str(uuid.uuid4()))
    async with caller.status(request_id) as response:
        assert response.status == 404
        assert orjson.loads(await response.read())["detail"] == "function version not found"


async def test_tracking_stream_is_created_at_start_up_with_nvidia_settings(
    platform: Any, observer: Any, ids: Any
) -> None:
    info = await observer.jetstream().stream_info(tracking_stream_name(ids.region))
    config = info.config
    assert config.subjects == [f"requestToFunctionVersion.{ids.region}.>"]
    assert config.max_age == 3600
    assert config.max_msgs_per_subject == 1
    assert config.allow_direct is True
    assert config.storage == "memory"
    assert config.retention == "limits"
    assert config.discard == "new"


async def test_tracking_lookup_forget_and_missing_records(platform: Any, ids: Any) -> None:
    tracking = platform.tracking
    request_id = str(uuid.uuid4())
    assert await tracking.lookup(request_id) is None
    await tracking.forget(request_id)  # purging nothing is fine
    await tracking.record(request_id, ids.function_id, ids.version_id, request_time_ns=10**18)
    await tracking.record(request_id, ids.function_id, ids.version_id, request_time_ns=2 * 10**18)
    record = await tracking.lookup(request_id)
    assert record is not None
    assert record.requestTime.ToNanoseconds() == 2 * 10**18  # a later record replaces the first
    await tracking.forget(request_id)
    assert await tracking.lookup(request_id) is None
