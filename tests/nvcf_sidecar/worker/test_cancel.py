"""Upstream cancels on `nvcf.cancel.<fvid>` stop exactly the named in-flight request."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest

from harness.modules import load_module
from nvcf_sidecar.protocol import cancel_subject
from nvcf_sidecar.worker import cancel as cancel_module
from nvcf_sidecar.worker.cancel import (
    CANCELLED_MEMORY_SECONDS,
    CANCELLED_MEMORY_SIZE,
    CancelListener,
    RecentCancels,
)
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics

pytestmark = pytest.mark.nats


SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")
FVID: str = shell.FUNCTION_VERSION_ID


def cancels(metrics: WorkerMetrics, matched: str) -> float:
    return metrics.cancels.labels(matched)._value.get()


async def test_a_cancel_stops_only_the_named_request_and_it_is_acked(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, shell.REGION)
    runner = shell.StandInRunner()
    runner.hold = True
    publisher = await nats.connect(nats_server.url)
    try:
        async with shell.serving(nats_server.url, runner, max_request_concurrency=2) as state:
            consumer = state.consumer
            async with CancelListener(state.nc, FVID, consumer.cancel_request, state.metrics):
                doomed, survivor = await shell.publish_work(
                    nats_server.url, [shell.work_item(), shell.work_item()]
                )
                await runner.wait_started(2)

                await publisher.publish(cancel_subject(FVID), doomed.encode())
                await runner.wait_finished(1)
                assert runner.cancelled == [doomed]
                assert runner.active == 1  # the other request goes on

                await publisher.publish(cancel_subject(FVID), b"not-a-request-of-ours")
                # Another version's cancel subject is not ours at all.
                await publisher.publish(cancel_subject("other-version"), survivor.encode())
                await publisher.flush()
                await asyncio.sleep(0.2)
                assert runner.cancelled == [doomed]
                assert cancels(state.metrics, "true") == 1
                assert cancels(state.metrics, "false") == 1

                runner.release()
                await runner.wait_finished(2)
                assert runner.finished == [survivor]
        assert state.metrics.requests.labels(Outcome.CANCELLED.value)._value.get() == 1
        assert state.metrics.requests.labels(Outcome.DELIVERED.value)._value.get() == 1
        await shell.wait_for_state(nats_server.url, (0, 0, 0))  # both acked, none redelivered
    finally:
        await publisher.close()


async def test_a_cancel_after_the_request_finished_matches_nothing(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, shell.REGION)
    runner = shell.StandInRunner()
    publisher = await nats.connect(nats_server.url)
    try:
        async with (
            shell.serving(nats_server.url, runner) as state,
            CancelListener(
                state.nc, FVID, state.consumer.cancel_request, state.metrics
            ) as listener,
        ):
            assert listener.subject == f"nvcf.cancel.{FVID}"
            [request_id] = await shell.publish_work(nats_server.url, [shell.work_item()])
            await runner.wait_finished(1)
            await shell.wait_for_state(nats_server.url, (0, 0, 0))
            await publisher.publish(cancel_subject(FVID), request_id.encode())
            await publisher.flush()
            await asyncio.sleep(0.2)
            assert cancels(state.metrics, "false") == 1
            assert cancels(state.metrics, "true") == 0
            assert runner.cancelled == []
    finally:
        await publisher.close()


async def test_a_cancel_before_the_request_starts_keeps_it_from_running() -> None:
    # The request is registered when its message is taken; a cancel that lands before its task
    # runs must still win (the stand-in then never sees it).
    runner = shell.StandInRunner()
    metrics = WorkerMetrics()
    config = shell.make_config(max_request_concurrency=1)

    class _Msg:
        def __init__(self, data: bytes) -> None:
            self.data = data
            self.subject = "rq.x"
            self.headers = None
            self.acked = False

        async def ack(self) -> None:
            self.acked = True

        async def in_progress(self) -> None:
            return None

    async def no_provisioning(region: str) -> None:
        raise AssertionError("not expected")

    item = shell.work_item()
    msg = _Msg(item.SerializeToString())
    from nvcf_sidecar.worker.consumer import RequestConsumer

    async with RequestConsumer(None, config, metrics, runner, no_provisioning) as consumer:  # type: ignore[arg-type]
        await consumer.handle_delivery(msg, shell.REGION)  # type: ignore[arg-type]
        assert consumer.cancel_request(item.requestId) is True
        assert consumer.cancel_request(item.requestId) is False  # only once
    assert runner.started == []
    assert msg.acked
    assert metrics.requests.labels(Outcome.CANCELLED.value)._value.get() == 1
    assert consumer.slots.held == 0


def test_recent_cancels_are_remembered_for_a_while_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(cancel_module.time, "monotonic", lambda: clock[0])
    recent = RecentCancels()
    recent.remember("a")
    assert "a" in recent
    assert "b" not in recent
    clock[0] += CANCELLED_MEMORY_SECONDS + 1
    assert "a" not in recent  # forgotten after the memory time
    for n in range(CANCELLED_MEMORY_SIZE + 5):
        recent.remember(str(n))
    assert "0" not in recent
    assert "4" not in recent
    assert "5" in recent
    assert str(CANCELLED_MEMORY_SIZE + 4) in recent
    assert len(recent._at) == CANCELLED_MEMORY_SIZE
