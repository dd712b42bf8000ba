"""Container calls that outlast a container restart: a refused connection holds the request.

A connection the container refuses carried nothing to it, so the request is not failed: the
container is marked unhealthy at once (the consumer stops fetching) and the call is sent again as
soon as a health check passes, within the request's deadline. A call that broke after it reached
the container is never repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final, Protocol

import aiohttp

from nvcf_sidecar.worker.forward import (
    ContainerCall,
    ContainerCallError,
    ForwardedBody,
    open_container,
)
from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = ["RETRY_PAUSE_SECONDS", "ContainerDown", "ContainerGate", "ContainerWatch", "refused"]

RETRY_PAUSE_SECONDS: Final = 0.1
"""Least time between two sends of one held call (a health check that passes while the
inference port still refuses must not make the sidecar spin)."""


class ContainerDown(ContainerCallError):
    """The container refused every try until the request's deadline (answered as a refusal)."""

    def __init__(self, held: float, cause: Exception) -> None:
        super().__init__(cause)
        self.held = held
        self.args = (
            f"the container refused connections for {held:.1f} s, up to the request's deadline "
            f"(last: {type(cause).__name__}: {cause})",
        )


class ContainerWatch(Protocol):
    """What the gate needs of the container's health (`health.ContainerHealth`)."""

    def report_refused(self, reason: str) -> None: ...

    async def wait_healthy(self) -> None: ...


def refused(error: BaseException) -> bool:
    """Whether a failed call never reached the container: the connection was not established."""
    return isinstance(error, aiohttp.ClientConnectorError)


def _resendable(call: ContainerCall) -> bool:
    # A streamed body is read only once the connection exists; nothing read means nothing lost.
    return not isinstance(call.body, ForwardedBody) or (call.body.sent == 0 and not call.body.error)


class ContainerGate:
    """Opens container calls, holding those the container refuses until it is healthy again.

    Without a `watch` (a sidecar that does not measure health) it is `open_container` as is.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics: WorkerMetrics,
        watch: ContainerWatch | None = None,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._watch = watch

    async def open(
        self,
        call: ContainerCall,
        *,
        deadline: float | None,
        log: logging.LoggerAdapter[Any],
    ) -> aiohttp.ClientResponse:
        """The container's response head to `call`.

        `deadline` (`time.monotonic()`; None: no limit but cancellation) is when an answer can no
        longer be answered. Raises `ContainerCallError` for a call that failed after it reached
        the container (or cannot be sent again), and its subclass `ContainerDown` when the
        container still refuses at the deadline.
        """
        watch = self._watch
        held_since: float | None = None
        while True:
            try:
                response = await open_container(self._session, call)
            except ContainerCallError as error:
                if watch is None or not refused(error.cause) or not _resendable(call):
                    raise
                now = time.monotonic()
                if held_since is None:
                    held_since = now
                    self._metrics.container_refusals.inc()
                    log.warning(
                        "the container refused the connection; holding the request until it is "
                        "healthy",
                        extra={"error": str(error.cause)},
                    )
                watch.report_refused(f"call refused: {error.cause}")
                if deadline is not None and now >= deadline:
                    raise ContainerDown(now - held_since, error.cause) from error
                try:
                    async with asyncio.timeout(None if deadline is None else deadline - now):
                        await watch.wait_healthy()
                        await asyncio.sleep(RETRY_PAUSE_SECONDS)
                except TimeoutError:
                    raise ContainerDown(time.monotonic() - held_since, error.cause) from error
                continue
            if held_since is not None:
                held = time.monotonic() - held_since
                self._metrics.container_hold.observe(held)
                log.info("the container is back; request sent after %.2f s", held)
            return response
