"""Binding a region's durable work-queue consumer: look it up, provision it if missing (§2.2).

The worker's NATS permissions forbid creating streams and consumers, so binding only reads
`$JS.API.CONSUMER.INFO`; what it learns there (the ack wait) sets the keepalive period (§9).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from nvcf_sidecar.protocol import consumer_name, request_stream_name
from nvcf_sidecar.worker.api_client import ExponentialBackoff
from nvcf_sidecar.worker.errors import ConsumerError

__all__ = [
    "BIND_RETRY_SECONDS",
    "KEEPALIVES_PER_ACK_WAIT",
    "BindFailed",
    "Provisioner",
    "bind_consumer",
    "keepalive_interval_for",
]

logger = logging.getLogger(__name__)

BIND_RETRY_SECONDS: Final = 5.0
"""How long a region's consumer lookup (with provisioning) is retried."""
KEEPALIVES_PER_ACK_WAIT: Final = 3
"""NVIDIA sends `+WPI` every 10 s against a 30 s ack wait: a third of it, whatever the ack wait."""

Provisioner = Callable[[str], Awaitable[None]]
"""Asks the NVCF API to create a region's stream and consumer (ProvisionRegionalWorker)."""


class BindFailed(ConsumerError):
    """The durable consumer of a region could not be found, even after provisioning."""

    def __init__(self, region: str, stream: str, consumer: str, reason: str) -> None:
        self.region = region
        self.stream = stream
        self.consumer = consumer
        self.reason = reason
        super().__init__(
            f"cannot bind consumer {consumer!r} on stream {stream!r} (region {region!r}): {reason}"
        )


async def bind_consumer(
    nc: NATS,
    region: str,
    function_version_id: str,
    provision: Provisioner,
    *,
    max_elapsed: float = BIND_RETRY_SECONDS,
) -> ConsumerInfo:
    """Look up `rq_<region>_<fvid>_workers`; if it or its stream is missing, provision and retry.

    Only `$JS.API.CONSUMER.INFO` is used: the worker's NATS permissions forbid creating streams
    and consumers, so this never creates one. Raises BindFailed after `max_elapsed` seconds.
    """
    stream = request_stream_name(region, function_version_id)
    consumer = consumer_name(region, function_version_id)
    js = nc.jetstream()
    backoff = ExponentialBackoff(max_elapsed=max_elapsed)
    while True:
        try:
            try:
                info: ConsumerInfo = await js.consumer_info(stream, consumer)
                return info
            except NotFoundError as missing:
                logger.info(
                    "work-queue consumer missing; provisioning",
                    extra={"region": region, "stream": stream, "error": missing.description},
                )
                await provision(region)
                info = await js.consumer_info(stream, consumer)
                return info
        except asyncio.CancelledError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
        delay = backoff.next_delay()
        if delay is None:
            raise BindFailed(region, stream, consumer, reason)
        logger.debug("binding failed; retrying", extra={"region": region, "error": reason})
        await asyncio.sleep(delay)


def keepalive_interval_for(configured: float, ack_wait: float | None) -> float:
    """The `+WPI` period for a consumer whose ack wait is `ack_wait` seconds.

    The configured period, shortened to a third of the ack wait when that is shorter, so a
    request is never redelivered while it still runs (a test platform may shorten the ack wait
    far below NVIDIA's 30 s). An unknown or zero ack wait leaves the configured period.
    """
    if ack_wait is None or ack_wait <= 0:
        return configured
    return min(configured, ack_wait / KEEPALIVES_PER_ACK_WAIT)
