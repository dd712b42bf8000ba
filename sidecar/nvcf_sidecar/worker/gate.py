"""Container calls that outlast a container restart: a refused connection holds the request.

A connection the container refuses carried nothing to it, so the request is not failed: the
container is marked unhealthy at once (the consumer stops fetching) and the call is sent again as
soon as a health check passes, within the request's deadline. A call that broke after it reached
the container is never repeated, but the container is probed at once: the calls that come next
wait for that probe, and are held as above when it fails (a killed server's sockets close over a
few milliseconds, long enough for the next call to be sent into it).
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
    ContainerClient,
    ContainerResponse,
    ForwardedBody,
    open_container,
)
from nvcf_sidecar.worker.lean_http import LeanClosedError, LeanConnectError, LeanResetError
from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = [
    "RETRY_PAUSE_SECONDS",
    "ContainerDown",
    "ContainerGate",
    "ContainerWatch",
    "dropped",
    "refused",
]

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

    @property
    def suspect(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    def report_refused(self, reason: str) -> None: ...

    def report_dropped(self, reason: str) -> None: ...

    async def wait_settled(self) -> bool: ...

    async def wait_healthy(self) -> None: ...


def refused(error: BaseException) -> bool:
    """Whether a failed call never reached the container: the connection was not established."""
    return isinstance(error, aiohttp.ClientConnectorError | LeanConnectError)


def dropped(error: BaseException) -> bool:
    """Whether a failed call lost an established connection (closed or reset by the container),
    as opposed to timing out or failing on our side."""
    return isinstance(
        error,
        aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | LeanClosedError | LeanResetError,
    ) and not refused(error)


def _resendable(call: ContainerCall) -> bool:
    # A streamed body is read only once the connection exists; nothing read means nothing lost.
    return not isinstance(call.body, ForwardedBody) or (call.body.sent == 0 and not call.body.error)


class ContainerGate:
    """Opens container calls, holding those the container refuses until it is healthy again.

    Without a `watch` (a sidecar that does not measure health) it is `open_container` as is.
    """

    def __init__(
        self,
        client: ContainerClient,
        metrics: WorkerMetrics,
        watch: ContainerWatch | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._watch = watch

    async def open(
        self,
        call: ContainerCall,
        *,
        deadline: float | None,
        log: logging.LoggerAdapter[Any],
    ) -> ContainerResponse:
        """The container's response head to `call`.

        `deadline` (`time.monotonic()`; None: no limit but cancellation) is when an answer can no
        longer be answered. Raises `ContainerCallError` for a call that failed after it reached
        the container (or cannot be sent again), and its subclass `ContainerDown` when the
        container still refuses at the deadline.
        """
        watch = self._watch
        held_since: float | None = None
        # A call just lost its connection: send nothing before the probe that follows says the
        # container is alive, and hold the call if it is not.
        if watch is not None and watch.suspect and not await _settled(watch, deadline):
            held_since = time.monotonic()
            cause: Exception = ConnectionError(f"the container is unhealthy: {watch.reason}")
            log.warning(
                "the container dropped a call and failed its health check; holding the request "
                "until it is healthy",
                extra={"error": watch.reason},
            )
            await _until_healthy(watch, deadline, held_since, cause)
        while True:
            try:
                response = await open_container(self._client, call)
            except ContainerCallError as error:
                if watch is None:
                    raise
                if not refused(error.cause):
                    if dropped(error.cause):
                        watch.report_dropped(f"a call lost its connection: {error.cause}")
                    raise
                if not _resendable(call):
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
                await _until_healthy(watch, deadline, held_since, error.cause)
                continue
            if held_since is not None:
                held = time.monotonic() - held_since
                self._metrics.container_hold.observe(held)
                log.info("the container is back; request sent after %.2f s", held)
            return response


async def _settled(watch: ContainerWatch, deadline: float | None) -> bool:
    """`watch.wait_settled()` within `deadline` (False when it passes first)."""
    remaining = None if deadline is None else deadline - time.monotonic()
    try:
        async with asyncio.timeout(remaining):
            return await watch.wait_settled()
    except TimeoutError:
        return False


async def _until_healthy(
    watch: ContainerWatch, deadline: float | None, held_since: float, cause: Exception
) -> None:
    """Return once the container is healthy again (plus a short pause); `ContainerDown` when the
    request's deadline comes first."""
    now = time.monotonic()
    if deadline is not None and now >= deadline:
        raise ContainerDown(now - held_since, cause) from cause
    try:
        async with asyncio.timeout(None if deadline is None else deadline - now):
            await watch.wait_healthy()
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
    except TimeoutError:
        raise ContainerDown(time.monotonic() - held_since, cause) from cause
