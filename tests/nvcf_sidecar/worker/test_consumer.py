"""The work-queue consumer on a real nats-server: regions, slots, NAK, term, keepalive, acks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from harness.modules import load_module
from nvcf_sidecar.protocol import consumer_name, request_stream_name
from nvcf_sidecar.worker.consumer import RequestConsumer
from nvcf_sidecar.worker.inflight import MAX_KEEPALIVE_FAILURES
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.polling import confirm_interest

pytestmark = pytest.mark.nats


SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")
REGION: str = shell.REGION
FVID: str = shell.FUNCTION_VERSION_ID


# --- serving regions -------------------------------------------------------------------------------


async def test_secondary_region_is_best_effort_and_served(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    await shell.provision_queue(nats_server.url, "second-region")
    runner = shell.StandInRunner()
    async with shell.serving(
        nats_server.url,
        runner,
        regions=(REGION, "second-region", "gone-region"),
        refuse=frozenset({"gone-region"}),
    ) as state:
        assert state.consumer.regions == (REGION, "second-region")
        ids = await shell.publish_work(nats_server.url, [shell.work_item()], region="second-region")
        await runner.wait_finished(1)
        assert runner.finished == ids


# --- slots -----------------------------------------------------------------------------------------


async def test_fetch_never_exceeds_the_free_slots(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    runner = shell.StandInRunner(delay=0.15)
    items = [shell.work_item() for _ in range(20)]
    ids = await shell.publish_work(nats_server.url, items)
    ack_pending_seen: list[int] = []

    async with shell.serving(nats_server.url, runner, max_request_concurrency=3) as state:
        done = asyncio.Event()

        async def sample() -> None:
            # Stopped by a flag, not by cancelling it: on Python 3.11 nats-py's wait_for can
            # swallow a cancel that arrives with a reply, and the loop would then run forever.
            while not done.is_set():
                _, ack_pending, _ = await shell.queue_state(nats_server.url)
                ack_pending_seen.append(ack_pending)
                assert state.consumer.in_flight <= 3
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        try:
            await runner.wait_finished(20, within=30)
        finally:
            done.set()
            await asyncio.wait_for(sampler, 10)
    assert runner.max_active == 3
    assert sorted(runner.started) == sorted(ids)  # each exactly once
    assert max(ack_pending_seen) <= 3
    assert shell.naks(state.metrics, "capacity") == 0
    assert shell.outcomes(state.metrics, Outcome.DELIVERED) == 20
    await shell.wait_for_state(nats_server.url, (0, 0, 0))


async def test_a_message_without_a_free_slot_is_naked_for_redelivery(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    runner = shell.StandInRunner()
    runner.hold = True
    [request_id] = await shell.publish_work(nats_server.url, [shell.work_item()])
    config = shell.make_config()
    metrics = WorkerMetrics()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        puller = await js.pull_subscribe_bind(
            consumer_name(REGION, FVID), stream=request_stream_name(REGION, FVID)
        )

        async def no_provisioning(region: str) -> None:
            raise AssertionError("not expected")

        async with RequestConsumer(nc, config, metrics, runner, no_provisioning) as consumer:
            assert consumer.slots.try_acquire()  # every slot busy
            [msg] = await puller.fetch(1, timeout=5)
            await consumer.handle_delivery(msg, REGION)
            assert shell.naks(metrics, "capacity") == 1
            assert runner.started == []
            started = time.monotonic()
            [again] = await puller.fetch(1, timeout=5)
            assert time.monotonic() - started < 2  # NAK: redelivered now, not after the ack wait
            assert again.metadata.num_delivered == 2
            assert again.metadata.sequence.stream == msg.metadata.sequence.stream
            await again.ack()
            consumer.slots.release()
        assert request_id not in runner.started
    finally:
        await nc.close()


# --- messages --------------------------------------------------------------------------------------


async def test_malformed_messages_are_terminated_and_never_redelivered(
    nats_server: Any,
) -> None:
    await shell.provision_queue(nats_server.url, REGION, ack_wait=1.0)
    runner = shell.StandInRunner()
    truncated = b"\x0a\xff\x01"  # field 1 claims 255 bytes, 1 follows
    no_request_id = b""  # decodes, but names no request
    good = shell.work_item()
    async with shell.serving(nats_server.url, runner) as state:
        await shell.publish_work(nats_server.url, [truncated, no_request_id, good])
        await runner.wait_finished(1)
        await asyncio.sleep(2.5)  # well past the 1 s ack wait: a redelivery would show now
        assert runner.started == [good.requestId]
        assert shell.outcomes(state.metrics, Outcome.MALFORMED) == 2
        _, ack_pending, pending = await shell.queue_state(nats_server.url)
        assert (ack_pending, pending) == (0, 0)
        info = await state.nc.jetstream().consumer_info(
            request_stream_name(REGION, FVID), consumer_name(REGION, FVID)
        )
        assert info.num_redelivered == 0


async def test_keepalive_keeps_a_long_request_from_being_redelivered(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION, ack_wait=2.0)
    runner = shell.StandInRunner(delay=5.0)
    async with shell.serving(
        nats_server.url, runner, max_request_concurrency=2, keepalive_interval=0.5
    ) as state:
        [request_id] = await shell.publish_work(nats_server.url, [shell.work_item()])
        await runner.wait_finished(1, within=15)
        assert runner.started == [request_id]  # the free second slot never saw a redelivery
    assert shell.outcomes(state.metrics, Outcome.DELIVERED) == 1
    await shell.wait_for_state(nats_server.url, (0, 0, 0))


async def test_a_short_ack_wait_shortens_the_keepalive_and_the_request_is_not_redelivered(
    nats_server: Any,
) -> None:
    # NVIDIA's +WPI period (10 s) against a 1.5 s ack wait: without the rule, redelivered at 1.5 s.
    await shell.provision_queue(nats_server.url, REGION, ack_wait=1.5)
    runner = shell.StandInRunner(delay=5.0)
    async with shell.serving(
        nats_server.url, runner, max_request_concurrency=2, keepalive_interval=10.0
    ) as state:
        assert state.consumer.keepalive_interval(REGION) == pytest.approx(0.5)
        [request_id] = await shell.publish_work(nats_server.url, [shell.work_item()])
        await runner.wait_started(1)
        assert await shell.queue_state(nats_server.url) == (1, 1, 0)  # running, not acked yet
        await runner.wait_finished(1, within=15)
        assert runner.started == [request_id]  # the free second slot never saw a redelivery
        await shell.wait_for_state(nats_server.url, (0, 0, 0))  # acked at the end
        info = await state.nc.jetstream().consumer_info(
            request_stream_name(REGION, FVID), consumer_name(REGION, FVID)
        )
        assert info.num_redelivered == 0
    assert shell.outcomes(state.metrics, Outcome.DELIVERED) == 1


async def test_without_keepalives_reaching_the_server_the_request_is_redelivered(
    nats_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control for the tests above: the same kind of request, its +WPI never sent.
    async def keepalive_lost(msg: Msg) -> None:
        return None

    monkeypatch.setattr(Msg, "in_progress", keepalive_lost)
    await shell.provision_queue(nats_server.url, REGION, ack_wait=1.0)
    runner = shell.StandInRunner(delay=2.5)
    async with shell.serving(
        nats_server.url, runner, max_request_concurrency=2, keepalive_interval=0.2
    ):
        [request_id] = await shell.publish_work(nats_server.url, [shell.work_item()])
        await runner.wait_started(2, within=10)
        assert runner.started == [request_id, request_id]
        # The runner is told which delivery may have been answered already (it then asks).
        assert runner.redelivered == [False, True]
        await runner.wait_finished(2, within=10)


async def test_an_item_cancelled_before_it_arrives_is_acked_without_running(
    nats_server: Any,
) -> None:
    await shell.provision_queue(nats_server.url, REGION, ack_wait=1.0)
    runner = shell.StandInRunner()
    async with shell.serving(nats_server.url, runner, max_request_concurrency=2) as state:
        cancelled, served = shell.work_item(), shell.work_item()
        # The platform's cancel came first (its purge lost the race with a pull, or the item is a
        # redelivery after its worker died): nothing runs this request here any more.
        assert not state.consumer.cancel_request(cancelled.requestId)
        await shell.publish_work(nats_server.url, [cancelled, served])
        await runner.wait_finished(1)
        await shell.wait_for_state(nats_server.url, (0, 0, 0))
        await asyncio.sleep(1.5)  # past the ack wait: it is not redelivered either
        assert runner.started == [served.requestId]
    assert shell.outcomes(state.metrics, Outcome.EXPIRED) == 1
    assert state.metrics.expired.labels("cancelled")._value.get() == 1


async def test_every_outcome_is_acked_at_the_end(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION, ack_wait=1.0)
    runner = shell.StandInRunner(outcome=Outcome.CONTAINER_ERROR)
    runner.hold = True
    async with shell.serving(nats_server.url, runner, max_request_concurrency=2) as state:
        await shell.publish_work(nats_server.url, [shell.work_item(), shell.work_item()])
        await runner.wait_started(2)
        await shell.wait_for_state(nats_server.url, (2, 2, 0))  # delivered, not acked while running
        runner.release()
        await runner.wait_finished(2)
        await shell.wait_for_state(nats_server.url, (0, 0, 0))
        await asyncio.sleep(1.5)  # past the ack wait: nothing comes back
        assert len(runner.started) == 2
    assert shell.outcomes(state.metrics, Outcome.CONTAINER_ERROR) == 2
    assert state.metrics.in_flight._value.get() == 0


async def test_the_server_batch_limit_lowers_the_pull_batch(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION, max_batch=2)
    runner = shell.StandInRunner()
    runner.hold = True
    ids = await shell.publish_work(nats_server.url, [shell.work_item() for _ in range(6)])
    async with shell.serving(nats_server.url, runner, max_request_concurrency=3) as state:
        await runner.wait_started(3)
        assert state.consumer.max_batch == 2
        runner.release()
        await runner.wait_finished(6)
        assert sorted(runner.finished) == sorted(ids)
        assert state.metrics.fetch_errors.labels(REGION)._value.get() == 0
    await shell.wait_for_state(nats_server.url, (0, 0, 0))


class _FailingKeepaliveMsg:
    """A delivered message whose +WPI always fails; records the acks it gets."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.subject = "rq.test-region.x.y"
        self.headers = None
        self.acks: list[str] = []

    async def in_progress(self) -> None:
        raise ConnectionError("no route to the server")

    async def ack(self) -> None:
        self.acks.append("ack")

    async def nak(self) -> None:
        self.acks.append("nak")

    async def term(self) -> None:
        self.acks.append("term")


async def test_ten_failed_keepalives_cancel_the_request(nats_server: Any) -> None:
    runner = shell.StandInRunner()
    runner.hold = True
    metrics = WorkerMetrics()
    nc = await nats.connect(nats_server.url)
    try:

        async def no_provisioning(region: str) -> None:
            raise AssertionError("not expected")

        config = shell.make_config(keepalive_interval=0.02)
        async with RequestConsumer(nc, config, metrics, runner, no_provisioning) as consumer:
            item = shell.work_item()
            msg = _FailingKeepaliveMsg(item.SerializeToString())
            await consumer.handle_delivery(msg, REGION)  # type: ignore[arg-type]
            await runner.wait_finished(1)
        assert runner.cancelled == [item.requestId]
        assert metrics.keepalive_failures._value.get() == MAX_KEEPALIVE_FAILURES
        assert shell.outcomes(metrics, Outcome.CANCELLED) == 1
        assert msg.acks == ["ack"]
    finally:
        await nc.close()


# --- pausing and stopping ----------------------------------------------------------------------


async def test_an_abandoned_pull_takes_nothing_from_the_queue(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    runner = shell.StandInRunner()
    async with shell.serving(nats_server.url, runner) as state:
        await asyncio.sleep(0.3)  # a pull is waiting on the server now
        state.consumer.stop_fetching()
        await asyncio.sleep(0.2)
        await shell.publish_work(nats_server.url, [shell.work_item() for _ in range(3)])
        await asyncio.sleep(0.5)
        assert runner.started == []
        assert await shell.queue_state(nats_server.url) == (3, 0, 3)
        assert shell.naks(state.metrics, "stopped") == 0


async def test_fetching_pauses_while_the_container_is_unhealthy(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    runner = shell.StandInRunner()
    async with shell.serving(nats_server.url, runner) as state:
        await shell.publish_work(nats_server.url, [shell.work_item()])
        await runner.wait_finished(1)

        state.healthy = False
        state.consumer.health_changed(False)
        await asyncio.sleep(0.2)
        second = await shell.publish_work(nats_server.url, [shell.work_item()])
        await asyncio.sleep(0.5)
        assert len(runner.started) == 1
        assert await shell.queue_state(nats_server.url) == (1, 0, 1)

        state.healthy = True
        state.consumer.health_changed(True)
        await runner.wait_finished(2)
        assert runner.finished[1:] == second


async def test_region_change_rebinds_and_serves_the_new_region(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    await shell.provision_queue(nats_server.url, "new-region")
    runner = shell.StandInRunner()
    async with shell.serving(nats_server.url, runner) as state:
        state.consumer.update_regions([REGION, "new-region"])
        ids = await shell.publish_work(nats_server.url, [shell.work_item()], region="new-region")
        await runner.wait_finished(1)
        assert runner.finished == ids
        assert state.consumer.regions == (REGION, "new-region")


async def test_after_a_reconnect_recent_acks_and_keepalives_are_sent_again(
    nats_server: Any,
) -> None:
    # An ack written just before nats-server died never reached it; sent again, the finished
    # item is not redelivered (acking twice is harmless). A running item gets a +WPI at once.
    await shell.provision_queue(nats_server.url, REGION)
    runner = shell.StandInRunner()
    observer = await nats.connect(nats_server.url)
    try:
        async with shell.serving(nats_server.url, runner, max_request_concurrency=2) as state:
            await shell.publish_work(nats_server.url, [shell.work_item(), shell.work_item()])
            await runner.wait_finished(2)
            await shell.wait_for_state(nats_server.url, (0, 0, 0))
            runner.hold = True
            await shell.publish_work(nats_server.url, [shell.work_item()])
            await runner.wait_started(3)
            acks = await observer.subscribe(f"$JS.ACK.{request_stream_name(REGION, FVID)}.>")
            # Not one flush: nats-py can write its PING ahead of the SUB, and then the acks sent
            # again below reach the server before the subscription does (a flake, seen in CI).
            await confirm_interest(observer)

            state.consumer.nats_reconnected()

            payloads = [(await acks.next_msg(timeout=5)).data for _ in range(3)]
            assert sorted(payloads) == [b"", b"", b"+WPI"]
            runner.release()
            await runner.wait_finished(3)
    finally:
        await observer.close()
    assert len(runner.started) == 3


async def test_after_nats_restarted_the_waiting_pull_is_replaced_at_once(
    start_nats_server: Any,
) -> None:
    # A restarted nats-server forgot the pull request the sidecar left waiting; its idle
    # heartbeats stop, which the sidecar notices only after two intervals (10 s). A reconnect
    # replaces the pull at once (as nats.go's consumers re-pull after a reconnect).
    server = start_nats_server(server_name="nvcf-test")
    await shell.provision_queue(server.url, REGION)
    runner = shell.StandInRunner()
    async with shell.serving(
        server.url, runner, max_request_concurrency=2, fetch_heartbeat=5.0, fetch_max_wait=300.0
    ) as state:  # the sidecar's own defaults
        await asyncio.sleep(0.3)  # the pull waits on the server
        server.kill()
        server.start()
        await shell.provision_queue(server.url, REGION)  # the platform's job after a restart
        for _ in range(200):  # nats-py reconnects within its 2 s wait
            if state.nc.is_connected:
                break
            await asyncio.sleep(0.05)
        assert state.nc.is_connected
        state.consumer.nats_reconnected()
        await shell.publish_work(server.url, [shell.work_item()])
        await runner.wait_started(1, within=4)  # well before the old pull's 10 s


async def test_items_published_before_a_reconnect_are_treated_as_maybe_answered(
    nats_server: Any,
) -> None:
    # A restarted nats-server can redeliver an answered item as a first delivery (its ack and
    # delivery count lost): the runner is told to ask the platform before running it.
    await shell.provision_queue(nats_server.url, REGION)
    runner = shell.StandInRunner()
    async with shell.serving(nats_server.url, runner, max_request_concurrency=2) as state:
        before, after = shell.work_item(), shell.work_item()
        before.requestTime.FromSeconds(int(time.time()) - 5)
        state.consumer.nats_reconnected()
        after.requestTime.FromNanoseconds(time.time_ns() + 1_000_000_000)
        await shell.publish_work(nats_server.url, [before])
        await runner.wait_finished(1)
        await shell.publish_work(nats_server.url, [after])
        await runner.wait_finished(2)
    assert runner.started == [before.requestId, after.requestId]
    assert runner.redelivered == [True, False]


async def test_a_container_done_after_the_request_ended_leaves_the_slots_alone(
    nats_server: Any,
) -> None:
    """A done-callback of a container call may run after its request was acked: it must not
    park the slot another request holds (the sidecar once crashed on the release that followed)."""
    await shell.provision_queue(nats_server.url, REGION)
    runner = shell.StandInRunner()
    runner.late_container_done = 1
    runner.hold = True
    async with shell.serving(nats_server.url, runner, max_request_concurrency=2) as state:
        await shell.publish_work(nats_server.url, [shell.work_item()])
        await runner.wait_finished(1)
        await shell.publish_work(nats_server.url, [shell.work_item()])
        await runner.wait_started(2)  # held: it holds a slot when the late call comes
        await asyncio.sleep(0.4)
        runner.release()
        await runner.wait_finished(2)
        await shell.wait_for_state(nats_server.url, (0, 0, 0))
        await shell.publish_work(nats_server.url, [shell.work_item()])
        await runner.wait_finished(3)
        await shell.wait_for_state(nats_server.url, (0, 0, 0))
    assert shell.outcomes(state.metrics, Outcome.DELIVERED) == 3
    assert state.metrics.in_flight._value.get() == 0
