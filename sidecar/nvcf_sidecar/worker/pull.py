"""One JetStream pull request on `$JS.API.CONSUMER.MSG.NEXT`: inbox, heartbeats, end, abandon (§2.3).

`PullRequest` asks a durable consumer for a batch and hands each message over as it arrives; an
abandoned pull is dropped by removing its inbox, and what it had already delivered is handed back.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nvcf_sidecar.protocol import consumer_name, request_stream_name
from nvcf_sidecar.worker.errors import ConsumerError

__all__ = [
    "DeliveryHandler",
    "PullFailed",
    "PullRequest",
    "PullResult",
    "parse_max_request_batch",
]

logger = logging.getLogger(__name__)

_DRAIN_TIMEOUT: Final = 5.0
_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_MAX_REQUEST_BATCH = re.compile(r"(?:nats: )?Exceeded MaxRequestBatch of (\d+)")

DeliveryHandler = Callable[[Msg], Awaitable[None]]
"""Takes one delivered work-queue message."""


class PullFailed(ConsumerError):
    """A pull request ended with an error status or went silent (missed heartbeats)."""

    def __init__(self, region: str, reason: str) -> None:
        self.region = region
        self.reason = reason
        super().__init__(f"pull request in region {region!r} failed: {reason}")


def parse_max_request_batch(description: str) -> int | None:
    """N from the server's "Exceeded MaxRequestBatch of N" (with or without Go's "nats: ")."""
    match = _MAX_REQUEST_BATCH.fullmatch(description.strip())
    if match is None:
        return None
    value = int(match.group(1))
    return value if value > 0 else None


@dataclass(frozen=True)
class PullResult:
    """How one pull request ended (short of failing)."""

    delivered: int
    """Messages handed to the delivery handler."""
    abandoned: bool = False
    """`abandon()` ended it; what arrived afterwards went to the abandoned-message handler."""
    max_batch: int | None = None
    """The server's MaxRequestBatch, when it refused the batch as too large (409)."""


def _is_status(msg: Msg) -> bool:
    return bool(msg.headers and msg.headers.get(_STATUS))


class PullRequest:
    """One pull request of a region's durable consumer; its inbox lives as long as `async with`.

    `run()` sends the request and hands each message to `deliver` as it arrives, until the batch
    is complete, the request expires, the server refuses it, or `abandon()` is called. Leaving
    the block removes the inbox, so the server drops a request still waiting there. After an
    abandon the inbox is drained first, and every message the server had already sent goes to
    `on_abandoned` (the consumer NAKs them for immediate redelivery, as NVIDIA's worker does on
    cancellation).

    nats-py's `fetch()` is not used: it returns only when the whole batch arrived or the request
    expired (delaying the first request by up to the long-poll time), and it hides the server's
    409 "Exceeded MaxRequestBatch" as a timeout.
    """

    def __init__(
        self, nc: NATS, region: str, function_version_id: str, *, on_abandoned: DeliveryHandler
    ) -> None:
        self.region = region
        stream = request_stream_name(region, function_version_id)
        consumer = consumer_name(region, function_version_id)
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._on_abandoned = on_abandoned
        # Messages as they arrive; None when the pull must be abandoned.
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._inbox: str | None = None
        self._subscription: Subscription | None = None
        self._abandon_requested = False
        self._abandoned = False

    async def __aenter__(self) -> PullRequest:
        self._inbox = self._nc.new_inbox()
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._receive)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        if self._abandoned:
            await self._drain_abandoned(subscription)
        else:
            await _unsubscribe(subscription)

    async def _receive(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    def abandon(self) -> None:
        """End `run()` now, or as soon as it starts; safe to call at any time, more than once."""
        self._abandon_requested = True
        self._queue.put_nowait(None)

    async def run(
        self, batch: int, *, expires: float, heartbeat: float, deliver: DeliveryHandler
    ) -> PullResult:
        """Ask for `batch` messages (long-polling up to `expires` s) and deliver them as they come.

        Raises PullFailed for an error status, or when neither a message nor the idle heartbeat
        (every `heartbeat` s) arrived for two heartbeat intervals.
        """
        if self._inbox is None:
            raise RuntimeError("PullRequest is not open; use `async with`")
        if self._abandon_requested:
            return PullResult(0, abandoned=True)  # nothing asked for, nothing to hand back
        request = {
            "batch": batch,
            "expires": int(expires * 1e9),
            "idle_heartbeat": int(heartbeat * 1e9),
        }
        await self._nc.publish(self._subject, orjson.dumps(request), reply=self._inbox)
        delivered = 0
        while delivered < batch:
            try:
                async with asyncio.timeout(2 * heartbeat):
                    msg = await self._queue.get()
            except TimeoutError:
                raise PullFailed(
                    self.region, "no message nor heartbeat for two intervals"
                ) from None
            if msg is None:
                self._abandoned = True
                return PullResult(delivered, abandoned=True)
            status = msg.headers.get(_STATUS) if msg.headers else None
            if not status:
                delivered += 1
                await deliver(msg)
                continue
            if status == "100":  # idle heartbeat
                continue
            if status in ("404", "408"):  # no messages / request expired
                return PullResult(delivered)
            description = (msg.headers or {}).get(_DESCRIPTION, "")
            limit = parse_max_request_batch(description)
            if status == "409" and limit is not None:
                return PullResult(delivered, max_batch=limit)
            raise PullFailed(self.region, f"{status} {description}".strip())
        return PullResult(delivered)

    async def _drain_abandoned(self, subscription: Subscription) -> None:
        # Without interest the server drops the waiting pull; whatever it sent before that is
        # handed back.
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                await subscription.drain()  # type: ignore[no-untyped-call]
        except Exception as error:
            logger.debug("pull inbox drain failed", extra={"error": str(error)})
            await _unsubscribe(subscription)
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is not None and not _is_status(msg):
                await self._on_abandoned(msg)


async def _unsubscribe(subscription: Subscription) -> None:
    try:
        await subscription.unsubscribe()
    except Exception as error:
        logger.debug("pull inbox unsubscribe failed", extra={"error": str(error)})
