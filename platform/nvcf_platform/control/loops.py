"""Ending the control plane's background loops (reconciler, autoscaler) without `cancel()`.

The loops await nats-py calls, and on Python 3.11 nats-py's `asyncio.wait_for` can swallow a
cancellation (see `nvcf_sidecar.cancellation`): a cancelled loop would then run on and its
`await task` never return. So a loop checks a flag each round; `stop_loop` sets it, wakes the
loop, waits a bounded time, and only then cancels (bounded again).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

__all__ = ["STOP_GRACE", "stop_loop"]

STOP_GRACE: Final = 10.0
"""Seconds a loop gets to finish its round (NATS calls are bounded by 5-10 s)."""
_log = logging.getLogger(__name__)


async def stop_loop(
    task: asyncio.Task[None],
    stopping: asyncio.Event,
    wake: asyncio.Event,
    *,
    grace: float = STOP_GRACE,
) -> None:
    """Set `stopping`, wake the loop and wait for `task` to end; cancel it after `grace`."""
    stopping.set()
    wake.set()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        _log.warning(
            "background loop did not stop in time; cancelling", extra={"task": task.get_name()}
        )
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=grace)
    if task in done and not task.cancelled() and task.exception() is not None:
        _log.error(
            "background loop failed",
            extra={"task": task.get_name(), "error": repr(task.exception())},
        )
