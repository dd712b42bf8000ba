"""Clean-up work that outlives the request that started it, owned by the platform service.

A caller that leaves mid-wait cancels its handler; the cancel broadcast and purge then run here,
and the service waits for them (bounded) before it closes the NATS connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundTasks"]

_log = logging.getLogger(__name__)


class BackgroundTasks:
    """A set of tasks with one owner: started with `spawn`, awaited (then cancelled) by `aclose`.

    Unlike `asyncio.TaskGroup`, a failing task never cancels its siblings or the owner: its
    exception is logged. Works whichever task calls `spawn` and `aclose`.
    """

    __slots__ = ("_closed", "_tasks")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run `coroutine` in the background; after `aclose` began it is closed unrun."""
        if self._closed:
            coroutine.close()
            _log.warning("background task refused during shutdown", extra={"task": name})
            return
        task = asyncio.get_running_loop().create_task(self._run(coroutine, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, grace: float) -> None:
        """Refuse new tasks, wait up to `grace` seconds for the running ones, cancel the rest."""
        self._closed = True
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still_running = await asyncio.wait(pending, timeout=grace)
        for task in still_running:
            task.cancel()
        if still_running:
            _log.warning(
                "background tasks cancelled at shutdown", extra={"count": len(still_running)}
            )
            await asyncio.wait(still_running)

    @staticmethod
    async def _run(coroutine: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("background task failed", extra={"task": name})
