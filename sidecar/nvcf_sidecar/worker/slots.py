"""The `MAX_REQUEST_CONCURRENCY` request slots, and the signal that wakes whoever waits on them.

A request holds a slot from receipt to ack; the fetch loops never ask for more messages than there
are free slots (§2.3, §10).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = ["RequestSlots", "StateSignal"]


class StateSignal:
    """Wakes every waiter whose condition may have changed (single event loop, no lock).

    Whoever changes shared state calls `notify()`; waiters re-check their own predicate, so one
    signal serves any number of conditions.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every `wait_for` so it re-checks its predicate."""
        self._event.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` is true (at once if it already is)."""
        while not predicate():
            self._event.clear()
            await self._event.wait()


class RequestSlots:
    """`MAX_REQUEST_CONCURRENCY` slots: a request holds one from receipt to ack.

    Never more than `limit` are held; `metrics.in_flight` follows the held count, and every
    release notifies `changed`. A request whose container call is over but whose answer waits
    for its caller's next poll may `park()`: its slot is freed for new work while it lives on
    (at most `limit` parked at once), and it `unpark()`s at its end instead of releasing.
    """

    def __init__(self, limit: int, metrics: WorkerMetrics, changed: StateSignal) -> None:
        self.limit = limit
        self._held = 0
        self._parked = 0
        self._metrics = metrics
        self._changed = changed

    @property
    def held(self) -> int:
        """Slots taken by requests now."""
        return self._held

    @property
    def busy(self) -> int:
        """Requests alive: holding a slot, or parked waiting for a poll."""
        return self._held + self._parked

    def park(self) -> bool:
        """Free a held slot for a request that lives on without using the container; False
        (nothing changes) when `limit` requests are parked already."""
        if self._parked >= self.limit or self._held <= 0:
            return False
        self._held -= 1
        self._parked += 1
        self._metrics.in_flight.set(self._held)
        self._changed.notify()
        return True

    def unpark(self) -> None:
        """A parked request ended."""
        if self._parked <= 0:
            raise RuntimeError("unparked a request that was not parked")
        self._parked -= 1
        self._changed.notify()

    @property
    def free(self) -> int:
        """Slots a fetch may ask for now."""
        return self.limit - self._held

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        if self._held >= self.limit:
            return False
        self._held += 1
        self._metrics.in_flight.set(self._held)
        return True

    def release(self) -> None:
        """Give a slot back and wake the fetch loops."""
        if self._held <= 0:
            raise RuntimeError("released a request slot that was not held")
        self._held -= 1
        self._metrics.in_flight.set(self._held)
        self._changed.notify()
