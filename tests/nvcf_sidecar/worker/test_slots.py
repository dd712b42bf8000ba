"""Request slots: never more held than the limit, the in-flight gauge follows, a release wakes."""

from __future__ import annotations

import asyncio

import pytest

from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.slots import RequestSlots, StateSignal


def test_never_more_slots_are_held_than_the_limit() -> None:
    metrics = WorkerMetrics()
    slots = RequestSlots(2, metrics, StateSignal())
    assert (slots.held, slots.free) == (0, 2)
    assert slots.try_acquire()
    assert slots.try_acquire()
    assert not slots.try_acquire()
    assert (slots.held, slots.free) == (2, 0)
    assert metrics.in_flight._value.get() == 2
    slots.release()
    assert (slots.held, slots.free) == (1, 1)
    assert metrics.in_flight._value.get() == 1


def test_releasing_a_slot_that_is_not_held_is_a_bug() -> None:
    slots = RequestSlots(1, WorkerMetrics(), StateSignal())
    with pytest.raises(RuntimeError, match="not held"):
        slots.release()


async def test_a_release_wakes_a_waiter_for_a_free_slot() -> None:
    changed = StateSignal()
    slots = RequestSlots(1, WorkerMetrics(), changed)
    assert slots.try_acquire()
    waiter = asyncio.create_task(changed.wait_for(lambda: slots.free > 0))
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release()
    async with asyncio.timeout(1):
        await waiter


async def test_a_signal_returns_at_once_when_the_condition_holds() -> None:
    async with asyncio.timeout(1):
        await StateSignal().wait_for(lambda: True)


def test_a_parked_request_frees_its_slot_but_stays_busy_and_parking_is_bounded() -> None:
    metrics = WorkerMetrics()
    slots = RequestSlots(1, metrics, StateSignal())
    assert slots.try_acquire()
    assert slots.park()  # its container call is over; the answer waits for a poll
    assert (slots.held, slots.free, slots.busy) == (0, 1, 1)
    assert metrics.in_flight._value.get() == 0
    assert slots.try_acquire()  # the next request runs meanwhile
    assert not slots.park()  # at most `limit` parked: this one keeps its slot
    assert (slots.held, slots.busy) == (1, 2)
    slots.unpark()
    slots.release()
    assert (slots.held, slots.free, slots.busy) == (0, 1, 0)
    with pytest.raises(RuntimeError, match="not parked"):
        slots.unpark()
