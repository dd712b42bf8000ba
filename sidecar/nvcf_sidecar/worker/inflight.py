"""One delivered request while it holds a slot: its handler, its keepalives, its cancellation (§9, §10).

`InFlightRequest.run` runs the data path with `+WPI` beside it and says how it ended; the consumer
owns the slot and the ack around it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from nats.aio.msg import Msg

from nvcf_sidecar.protocol import WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics

__all__ = ["MAX_KEEPALIVE_FAILURES", "InFlightRequest", "RequestHandler"]

logger = logging.getLogger(__name__)

MAX_KEEPALIVE_FAILURES: Final = 10
"""Consecutive `+WPI` failures after which a request is cancelled (the platform lost it)."""


class RequestHandler(Protocol):
    """Runs one invocation to its end (the data path's `RequestRunner`)."""

    async def run(
        self,
        request: WorkerInvokeFunctionRequest,
        *,
        redelivered: bool = False,
        container_done: Callable[[], None] | None = None,
    ) -> Outcome:
        """Never raises except asyncio.CancelledError (then it has cleaned up). `redelivered`:
        the message was delivered before (an earlier worker may have answered it).
        `container_done()`, if called, says the container no longer works on the request (its
        answer waits for a poll): the consumer may free its slot for new work."""
        ...


@dataclass
class InFlightRequest:
    """One delivered request from receipt to ack; `cancel()` may come at any time."""

    request_id: str
    msg: Msg
    task: asyncio.Task[object] | None = None
    """The task running the handler (the consumer's task of this request), once it started."""
    cancel_reason: str | None = None
    finished: bool = False
    """The handler is over: a cancel now has nothing to stop (the consumer is acking)."""
    keepalives: int = 0
    """`+WPI` sent so far."""
    redelivered: bool = False
    """JetStream delivered this message before (its metadata's delivery count is above 1)."""

    def cancelled(self) -> bool:
        """Whether `cancel()` took effect."""
        return self.cancel_reason is not None

    def cancel(self, reason: str) -> bool:
        """Cancel the request; one not started yet will not start. False if already over."""
        if self.cancel_reason is not None or self.finished:
            return False
        self.cancel_reason = reason
        if self.task is not None:
            self.task.cancel()
        return True

    async def run(
        self,
        handler: RequestHandler,
        request: WorkerInvokeFunctionRequest,
        *,
        keepalive_interval: float,
        metrics: WorkerMetrics,
        container_done: Callable[[], None] | None = None,
    ) -> Outcome:
        """Run `handler` on `request` in this task, with `+WPI` every `keepalive_interval`
        seconds beside it.

        Returns the handler's outcome; CANCELLED after `cancel()`, WORKER_ERROR if the handler
        raised. Raises only asyncio.CancelledError when this task is cancelled by anyone else.
        The keepalives get a task of their own only once a request outlives the first
        interval: most end before, and cost one timer instead of a task.
        """
        loop = asyncio.get_running_loop()
        keepalive: asyncio.Task[None] | None = None

        def start_keepalive() -> None:
            nonlocal keepalive
            keepalive = loop.create_task(self._keep_alive(keepalive_interval, metrics))

        timer = loop.call_later(keepalive_interval, start_keepalive)
        try:
            return await self._handle(handler, request, container_done)
        finally:
            self.finished = True
            timer.cancel()
            if keepalive is not None:
                keepalive.cancel()
                await asyncio.wait({keepalive})

    async def _handle(
        self,
        handler: RequestHandler,
        request: WorkerInvokeFunctionRequest,
        container_done: Callable[[], None] | None,
    ) -> Outcome:
        # Cancellable only from here on: a cancel that came earlier is seen by the check below.
        task = self.task = asyncio.current_task()
        if self.cancel_reason is not None:
            logger.info("request cancelled before it started", extra={"reason": self.cancel_reason})
            return Outcome.CANCELLED
        try:
            return await handler.run(
                request, redelivered=self.redelivered, container_done=container_done
            )
        except asyncio.CancelledError:
            # Ours only if `cancel()` asked and nobody else did too (a shutdown goes on).
            if not self.cancelled() or task is None or task.uncancel() > 0:
                raise
            logger.info("request cancelled", extra={"reason": self.cancel_reason})
            return Outcome.CANCELLED
        except Exception:
            logger.exception("request handler raised; counted as a worker error")
            return Outcome.WORKER_ERROR

    async def _keep_alive(self, interval: float, metrics: WorkerMetrics) -> None:
        """`+WPI` now and every `interval` seconds after; cancels the request after 10 failures
        in a row."""
        failures = 0
        while True:
            try:
                await self.msg.in_progress()
            except Exception as error:
                failures += 1
                metrics.keepalive_failures.inc()
                logger.warning(
                    "keepalive failed", extra={"error": str(error), "failures": failures}
                )
                if failures >= MAX_KEEPALIVE_FAILURES:
                    self.cancel(f"keepalive failed {failures} times: {error}")
                    return
            else:
                failures = 0
                self.keepalives += 1
            await asyncio.sleep(interval)
