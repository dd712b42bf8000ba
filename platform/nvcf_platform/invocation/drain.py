"""A graceful stop of the invocation service: callers already waiting get their answers.

On SIGTERM (a restart, a deploy) the platform keeps listening, so workers can still POST the
answers of requests in flight, while every new caller request is refused at once with a 503
problem and `Connection: close` — a clean, retryable answer instead of a dropped connection.
When no caller request is left (or the drain grace is over) the platform stops for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from nvcf_platform.invocation.problems import unavailable_response

__all__ = ["DRAINING_DETAIL", "CallerDrain"]

DRAINING_DETAIL: Final = "the invocation service is restarting; retry"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = logging.getLogger(__name__)


class CallerDrain:
    """Counts caller requests in progress on the routes it guards; `begin()` starts refusing."""

    __slots__ = ("_draining", "_idle", "_in_progress")

    def __init__(self) -> None:
        self._draining = False
        self._in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_progress(self) -> int:
        """Caller requests being served on the guarded routes."""
        return self._in_progress

    async def admit(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Serve one caller request with `handler`, counted; once draining, the 503 (with
        `Connection: close`) instead."""
        if self._draining:
            response = unavailable_response(DRAINING_DETAIL)
            response.force_close()
            return response
        self._in_progress += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._in_progress -= 1
            if self._in_progress == 0:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new caller requests and wait up to `grace` s for those in progress to end.

        True when none is left; False when the grace ran out first (the caller then stops the
        service, which answers the rest 503).
        """
        self._draining = True
        if self._in_progress:
            _log.info(
                "draining: waiting for callers' answers",
                extra={"in_progress": self._in_progress, "grace_seconds": grace},
            )
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            _log.warning("drain grace over", extra={"in_progress": self._in_progress})
            return False
        return True
