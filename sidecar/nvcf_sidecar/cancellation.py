"""Cancellations that a library swallowed, raised again before a long wait.

On Python 3.11, `asyncio.wait_for` returns the awaited result instead of raising when the task is
cancelled in the same loop iteration as that result arrives (fixed in 3.12, where `wait_for` is
built on `asyncio.timeout`). nats-py awaits every request and JetStream publish with `wait_for`,
so a caller who disconnects just as a worker acknowledges a poll cancels nothing: the handler
would then wait out the whole poll budget for a caller who is gone. The cancellation is still
counted on the task (`Task.cancelling()`), which is what `raise_if_cancelled` looks at.
"""

from __future__ import annotations

import asyncio

__all__ = ["raise_if_cancelled"]


def raise_if_cancelled() -> None:
    """Raise `CancelledError` when the current task was cancelled and the error got lost.

    Call it after awaiting code that may swallow a cancellation and before a wait that would
    otherwise outlive its caller. A task whose cancellation was handled on purpose calls
    `Task.uncancel()` (as `asyncio.timeout` does), so it is not raised again.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise asyncio.CancelledError
