"""One in-flight request without NATS: its outcome, cancellation, and the +WPI keepalive."""

from __future__ import annotations

import asyncio
from typing import Any

from nvcf_sidecar.protocol import WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.inflight import MAX_KEEPALIVE_FAILURES, InFlightRequest
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics


class _Msg:
    """A delivered message: counts its +WPI, or fails every one."""

    def __init__(self, *, keepalive_fails: bool = False) -> None:
        self.keepalive_fails = keepalive_fails
        self.in_progress_sent = 0

    async def in_progress(self) -> None:
        if self.keepalive_fails:
            raise ConnectionError("no route to the server")
        self.in_progress_sent += 1


class _Handler:
    def __init__(self, *, delay: float = 0.0, raises: Exception | None = None) -> None:
        self.delay = delay
        self.raises = raises
        self.started: list[str] = []
        self.redelivered: list[bool] = []
        self.running = asyncio.Event()
        self.cancelled: list[str] = []

    async def run(
        self,
        request: WorkerInvokeFunctionRequest,
        *,
        redelivered: bool = False,
        container_done: Any = None,
    ) -> Outcome:
        self.started.append(request.requestId)
        self.redelivered.append(redelivered)
        self.running.set()
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.append(request.requestId)
            raise
        if self.raises is not None:
            raise self.raises
        return Outcome.DELIVERED


def _request(request_id: str = "r1") -> WorkerInvokeFunctionRequest:
    return WorkerInvokeFunctionRequest(requestId=request_id)


def _entry(msg: _Msg, request_id: str = "r1") -> InFlightRequest:
    return InFlightRequest(request_id, msg)  # type: ignore[arg-type]


async def _run(
    entry: InFlightRequest, handler: Any, interval: float, metrics: WorkerMetrics
) -> Any:
    async with asyncio.timeout(5):
        return await entry.run(handler, _request(), keepalive_interval=interval, metrics=metrics)


async def test_keepalives_are_sent_every_interval_while_the_request_runs() -> None:
    msg, metrics = _Msg(), WorkerMetrics()
    entry = _entry(msg)
    outcome = await _run(entry, _Handler(delay=0.45), 0.1, metrics)
    assert outcome is Outcome.DELIVERED
    assert 2 <= msg.in_progress_sent <= 4
    assert entry.keepalives == msg.in_progress_sent


async def test_ten_failed_keepalives_in_a_row_cancel_the_request() -> None:
    msg, metrics = _Msg(keepalive_fails=True), WorkerMetrics()
    handler = _Handler(delay=30.0)
    outcome = await _run(_entry(msg), handler, 0.01, metrics)
    assert outcome is Outcome.CANCELLED
    assert handler.cancelled == ["r1"]
    assert metrics.keepalive_failures._value.get() == MAX_KEEPALIVE_FAILURES


async def test_a_request_cancelled_before_it_starts_never_runs() -> None:
    entry, handler = _entry(_Msg()), _Handler()
    assert entry.cancel("upstream cancel via NATS")
    assert not entry.cancel("again")  # only once
    assert await _run(entry, handler, 10.0, WorkerMetrics()) is Outcome.CANCELLED
    assert handler.started == []


async def test_a_cancel_while_running_ends_the_handler_as_cancelled() -> None:
    entry, handler = _entry(_Msg()), _Handler(delay=30.0)
    running = asyncio.create_task(_run(entry, handler, 10.0, WorkerMetrics()))
    async with asyncio.timeout(5):
        await handler.running.wait()
    assert entry.cancel("upstream cancel via NATS")
    assert await running is Outcome.CANCELLED
    assert handler.cancelled == ["r1"]
    assert not entry.cancel("too late")  # over: nothing to cancel


async def test_a_handler_that_raises_is_a_worker_error() -> None:
    outcome = await _run(
        _entry(_Msg()), _Handler(raises=RuntimeError("bug")), 10.0, WorkerMetrics()
    )
    assert outcome is Outcome.WORKER_ERROR


async def test_a_request_shorter_than_the_interval_sends_no_keepalive_and_leaves_no_task() -> None:
    msg = _Msg()
    before = asyncio.all_tasks()
    assert await _run(_entry(msg), _Handler(delay=0.01), 10.0, WorkerMetrics()) is Outcome.DELIVERED
    assert msg.in_progress_sent == 0
    assert asyncio.all_tasks() == before


async def test_the_keepalive_task_ends_with_the_request() -> None:
    msg = _Msg()
    before = asyncio.all_tasks()
    assert await _run(_entry(msg), _Handler(delay=0.25), 0.05, WorkerMetrics()) is Outcome.DELIVERED
    assert msg.in_progress_sent >= 2
    assert asyncio.all_tasks() == before


async def test_a_cancel_from_elsewhere_still_cancels_the_caller() -> None:
    """A shutdown cancelling the consumer's task is not swallowed, even beside our cancel."""
    entry, handler = _entry(_Msg()), _Handler(delay=30.0)
    running = asyncio.create_task(_run(entry, handler, 10.0, WorkerMetrics()))
    async with asyncio.timeout(5):
        await handler.running.wait()
    assert entry.cancel("upstream cancel via NATS")
    running.cancel()
    async with asyncio.timeout(5):
        done, _ = await asyncio.wait({running})
    assert running in done
    assert running.cancelled()
    assert handler.cancelled == ["r1"]


async def test_a_cancel_after_the_handler_ended_leaves_the_acking_task_alone() -> None:
    entry = _entry(_Msg())

    async def serve() -> str:
        await entry.run(_Handler(), _request(), keepalive_interval=10.0, metrics=WorkerMetrics())
        assert not entry.cancel("arrives while the consumer acks")
        await asyncio.sleep(0.01)  # the ack's await: not cancelled
        return "acked"

    async with asyncio.timeout(5):
        assert await asyncio.create_task(serve()) == "acked"
