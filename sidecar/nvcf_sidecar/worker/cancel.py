"""Upstream cancels: `nvcf.cancel.<fvid>` carries a request id; the instance running it stops it (§10).

Every worker of the version receives every cancel (no queue group); those that do not run the
request remember it for a while (`RecentCancels`), so a copy of the item delivered later never runs.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nvcf_sidecar.protocol import cancel_subject
from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = ["CANCELLED_MEMORY_SECONDS", "CANCELLED_MEMORY_SIZE", "CancelListener", "RecentCancels"]

logger = logging.getLogger(__name__)

CANCELLED_MEMORY_SECONDS: Final = 600.0
"""How long a cancel for a request this sidecar does not run is remembered: a copy of that item
delivered later (a redelivery after another worker died, a purge that lost the race with a
pull) is acked without running."""
CANCELLED_MEMORY_SIZE: Final = 10_000


class RecentCancels:
    """Request ids cancelled while not running here, for `CANCELLED_MEMORY_SECONDS` (at most
    `CANCELLED_MEMORY_SIZE`, oldest forgotten first)."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: OrderedDict[str, float] = OrderedDict()

    def remember(self, request_id: str) -> None:
        now = time.monotonic()
        self._at[request_id] = now
        self._at.move_to_end(request_id)
        horizon = now - CANCELLED_MEMORY_SECONDS
        while self._at and (
            len(self._at) > CANCELLED_MEMORY_SIZE or next(iter(self._at.values())) < horizon
        ):
            self._at.popitem(last=False)

    def __contains__(self, request_id: object) -> bool:
        at = self._at.get(request_id) if isinstance(request_id, str) else None
        return at is not None and at >= time.monotonic() - CANCELLED_MEMORY_SECONDS


class CancelListener:
    """Subscribes to `nvcf.cancel.<fvid>` for the life of its `async with` block.

    `cancel(request_id)` is called for each broadcast and returns whether a request was
    cancelled; `metrics.cancels` counts broadcasts by that answer.
    """

    def __init__(
        self,
        nc: NATS,
        function_version_id: str,
        cancel: Callable[[str], bool],
        metrics: WorkerMetrics,
    ) -> None:
        self._nc = nc
        self._subject = cancel_subject(function_version_id)
        self._cancel = cancel
        self._metrics = metrics
        self._subscription: Subscription | None = None

    @property
    def subject(self) -> str:
        """The subject listened on."""
        return self._subject

    async def __aenter__(self) -> CancelListener:
        self._subscription = await self._nc.subscribe(self._subject, cb=self._on_cancel)
        logger.info("listening for cancels", extra={"subject": self._subject})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None and not self._nc.is_closed:
            try:
                await subscription.unsubscribe()
            except Exception as error:
                logger.warning("could not unsubscribe from cancels", extra={"error": str(error)})

    async def _on_cancel(self, msg: Msg) -> None:
        request_id = msg.data.decode("utf-8", errors="replace").strip()
        matched = bool(request_id) and self._cancel(request_id)
        self._metrics.cancels.labels("true" if matched else "false").inc()
        if matched:
            logger.info(
                "upstream cancel received; cancelling the request", extra={"request_id": request_id}
            )
        else:
            logger.debug("cancel for a request not run here", extra={"request_id": request_id})
