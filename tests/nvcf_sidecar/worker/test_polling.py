"""Status polls on `rq_polling.<reqid>` against a real nats-server: reply at once, queue, skip bad ones."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from nvcf_sidecar.protocol import (
    InvalidSubjectToken,
    WorkerInvokeFunctionRequest,
    attach_config,
    polling_subject,
)
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.polling import PollSubscribeFailed, PollSubscription, PollTimeout

pytestmark = pytest.mark.nats

WAIT = 5.0
"""Bound on every wait that is expected to succeed."""
NO_REPLY = 0.5
"""How long a requester waits for a reply that must not come."""


@pytest.fixture
async def worker_nc(nats_server: Any) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@pytest.fixture
async def platform_nc(nats_server: Any) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


def log_for(request_id: str) -> logging.LoggerAdapter[Any]:
    return logging.LoggerAdapter(logging.getLogger("test_polling"), {"request_id": request_id})


def poll_item(request_id: str, token: str | None = None) -> WorkerInvokeFunctionRequest:
    """A poll as the IS builds it: GET on the default path, a fresh response token, no body."""
    poll = WorkerInvokeFunctionRequest(
        requestId=request_id, requestMethod="GET", requestPath="/infer"
    )
    poll.statelessConfig.CopyFrom(attach_config("http://127.0.0.1:1", token or str(uuid.uuid4())))
    poll.requestTime.GetCurrentTime()
    return poll


def polls(metrics: WorkerMetrics, result: str) -> float:
    return float(metrics.polls.labels(result)._value.get())


def token_of(poll: WorkerInvokeFunctionRequest) -> str:
    return str(poll.statelessConfig.connectionConfigs[0].http1Config.responseAuthorizationToken)


async def send_poll(nc: NATS, request_id: str, payload: bytes) -> bytes:
    reply = await nc.request(polling_subject(request_id), payload, timeout=WAIT)
    assert reply.headers is None  # an empty reply, no echoed trace headers
    return reply.data


async def test_a_poll_is_acknowledged_before_it_is_asked_for(
    worker_nc: NATS, platform_nc: NATS
) -> None:
    request_id = str(uuid.uuid4())
    metrics = WorkerMetrics()
    sent = poll_item(request_id)
    async with PollSubscription(
        worker_nc, request_id, metrics=metrics, log=log_for(request_id)
    ) as subscription:
        assert subscription.subject == f"rq_polling.{request_id}"
        # Nobody awaits next_poll yet, and still the platform gets its reply.
        assert await send_poll(platform_nc, request_id, sent.SerializeToString()) == b""
        assert subscription.pending == 1
        assert polls(metrics, "taken") == 1
        received = await subscription.next_poll(WAIT)
        assert received == sent
        assert token_of(received) == token_of(sent)
        assert subscription.pending == 0


async def test_next_poll_raises_poll_timeout_when_no_poll_comes(worker_nc: NATS) -> None:
    request_id = str(uuid.uuid4())
    async with PollSubscription(
        worker_nc, request_id, metrics=WorkerMetrics(), log=log_for(request_id)
    ) as subscription:
        with pytest.raises(PollTimeout, match=request_id) as raised:
            await asyncio.wait_for(subscription.next_poll(0.2), WAIT)
        assert raised.value.timeout == 0.2
        with pytest.raises(PollTimeout):
            await asyncio.wait_for(subscription.next_poll(0), WAIT)


async def test_queued_polls_come_out_oldest_first(worker_nc: NATS, platform_nc: NATS) -> None:
    request_id = str(uuid.uuid4())
    first, second = poll_item(request_id, "token-1"), poll_item(request_id, "token-2")
    async with PollSubscription(
        worker_nc, request_id, metrics=WorkerMetrics(), log=log_for(request_id)
    ) as subscription:
        await send_poll(platform_nc, request_id, first.SerializeToString())
        await send_poll(platform_nc, request_id, second.SerializeToString())
        assert token_of(await subscription.next_poll(WAIT)) == "token-1"
        assert token_of(await subscription.next_poll(0)) == "token-2"  # already there
        with pytest.raises(PollTimeout):
            await subscription.next_poll(0.1)


async def test_a_poll_asked_again_is_replied_to_and_taken_once(
    worker_nc: NATS, platform_nc: NATS
) -> None:
    # The platform sends the same poll again when its reply was slow or lost (a node loss).
    request_id = str(uuid.uuid4())
    metrics = WorkerMetrics()
    poll, other = poll_item(request_id, "token-1"), poll_item(request_id, "token-2")
    async with PollSubscription(
        worker_nc, request_id, metrics=metrics, log=log_for(request_id)
    ) as subscription:
        for payload in (poll, poll, other):
            assert await send_poll(platform_nc, request_id, payload.SerializeToString()) == b""
        assert (polls(metrics, "taken"), polls(metrics, "repeated")) == (2, 1)
        assert [token_of(await subscription.next_poll(0)) for _ in range(2)] == [
            "token-1",
            "token-2",
        ]
        assert subscription.pending == 0


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xff\xff", id="not-protobuf"),
        pytest.param(poll_item("another-request").SerializeToString(), id="other-request-id"),
    ],
)
async def test_a_malformed_poll_gets_no_reply_and_is_skipped(
    worker_nc: NATS, platform_nc: NATS, payload: bytes
) -> None:
    request_id = str(uuid.uuid4())
    metrics = WorkerMetrics()
    good = poll_item(request_id, "good")
    async with PollSubscription(
        worker_nc, request_id, metrics=metrics, log=log_for(request_id)
    ) as subscription:
        with pytest.raises(nats.errors.TimeoutError):
            await platform_nc.request(polling_subject(request_id), payload, timeout=NO_REPLY)
        assert polls(metrics, "malformed") == 1
        assert subscription.pending == 0
        # The subscription goes on: the next valid poll is taken, and it is the only one queued.
        await send_poll(platform_nc, request_id, good.SerializeToString())
        assert token_of(await subscription.next_poll(WAIT)) == "good"
        assert subscription.pending == 0
        assert polls(metrics, "taken") == 1


async def test_a_poll_published_without_a_reply_subject_is_skipped(
    worker_nc: NATS, platform_nc: NATS
) -> None:
    request_id = str(uuid.uuid4())
    metrics = WorkerMetrics()
    async with PollSubscription(
        worker_nc, request_id, metrics=metrics, log=log_for(request_id)
    ) as subscription:
        await platform_nc.publish(
            polling_subject(request_id), poll_item(request_id, "orphan").SerializeToString()
        )
        # Messages on one subscription are handled in order: once this reply is back, the
        # published one has been seen.
        await send_poll(platform_nc, request_id, poll_item(request_id, "real").SerializeToString())
        assert polls(metrics, "malformed") == 1
        assert token_of(await subscription.next_poll(WAIT)) == "real"
        assert subscription.pending == 0


async def test_polls_of_other_requests_are_not_taken(worker_nc: NATS, platform_nc: NATS) -> None:
    ours, theirs, nobodys = (str(uuid.uuid4()) for _ in range(3))
    metrics = WorkerMetrics()
    async with (
        PollSubscription(worker_nc, ours, metrics=metrics, log=log_for(ours)) as mine,
        PollSubscription(worker_nc, theirs, metrics=metrics, log=log_for(theirs)) as other,
    ):
        await send_poll(platform_nc, theirs, poll_item(theirs, "theirs").SerializeToString())
        assert mine.pending == 0
        assert token_of(await other.next_poll(WAIT)) == "theirs"
        with pytest.raises(nats.errors.NoRespondersError):
            await platform_nc.request(
                polling_subject(nobodys), poll_item(nobodys).SerializeToString(), timeout=WAIT
            )
        with pytest.raises(PollTimeout):
            await mine.next_poll(0.1)


async def test_leaving_the_block_unsubscribes(worker_nc: NATS, platform_nc: NATS) -> None:
    request_id = str(uuid.uuid4())
    payload = poll_item(request_id).SerializeToString()
    async with PollSubscription(
        worker_nc, request_id, metrics=WorkerMetrics(), log=log_for(request_id)
    ) as subscription:
        await send_poll(platform_nc, request_id, payload)
    assert subscription.pending == 1  # taken but never served: dropped with the subscription
    with pytest.raises(nats.errors.NoRespondersError):
        await platform_nc.request(polling_subject(request_id), payload, timeout=WAIT)
    with pytest.raises(RuntimeError, match="not entered"):
        await subscription.next_poll(0)


async def test_cancelling_next_poll_loses_no_poll(worker_nc: NATS, platform_nc: NATS) -> None:
    request_id = str(uuid.uuid4())
    async with PollSubscription(
        worker_nc, request_id, metrics=WorkerMetrics(), log=log_for(request_id)
    ) as subscription:
        waiting = asyncio.create_task(subscription.next_poll(WAIT))
        await asyncio.sleep(0)  # the task now waits for a poll
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await send_poll(platform_nc, request_id, poll_item(request_id, "one").SerializeToString())
        assert token_of(await subscription.next_poll(WAIT)) == "one"

        # A cancel that races the poll's arrival: the poll ends up either returned or queued.
        racing = asyncio.create_task(subscription.next_poll(WAIT))
        await asyncio.sleep(0)
        await send_poll(platform_nc, request_id, poll_item(request_id, "two").SerializeToString())
        racing.cancel()
        done, _ = await asyncio.wait({racing}, timeout=WAIT)
        assert done == {racing}
        if racing.cancelled():
            assert token_of(await subscription.next_poll(0)) == "two"
        else:
            assert token_of(racing.result()) == "two"
            assert subscription.pending == 0


async def test_leaving_after_the_connection_closed_does_not_raise(nats_server: Any) -> None:
    request_id = str(uuid.uuid4())
    nc = await nats.connect(nats_server.url)
    async with PollSubscription(nc, request_id, metrics=WorkerMetrics(), log=log_for(request_id)):
        await nc.close()


async def test_subscribing_on_a_closed_connection_fails_clearly(nats_server: Any) -> None:
    request_id = str(uuid.uuid4())
    nc = await nats.connect(nats_server.url)
    await nc.close()
    subscription = PollSubscription(
        nc, request_id, metrics=WorkerMetrics(), log=log_for(request_id)
    )
    with pytest.raises(PollSubscribeFailed, match=f"rq_polling.{request_id}"):
        await subscription.__aenter__()


def test_a_request_id_that_cannot_be_a_subject_token_is_refused() -> None:
    with pytest.raises(InvalidSubjectToken):
        PollSubscription(
            None,  # type: ignore[arg-type]  # refused before the connection is used
            "a.b",
            metrics=WorkerMetrics(),
            log=log_for("a.b"),
        )
