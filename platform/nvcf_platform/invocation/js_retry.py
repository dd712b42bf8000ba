"""A JetStream write carried through a cluster's leader election: one policy for every stream.

A replicated stream whose leader's node died answers nobody (no responders, or a timeout) until
the survivors elect a new leader, 4-9 s later; right after the election a write can still find
nobody for a moment. A single-node stream answers "no responders" when it was deleted. So a write
that finds no stream asks for it to be created once (which fails or hangs while a cluster elects;
that is logged, not fatal, and bounded), then is tried again: jittered backoff first, then every `RETRY_FLOOR` seconds,
until its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

from nats.errors import Error as NatsError
from nats.js.errors import NoStreamResponseError

__all__ = ["CREATE_WAIT", "MAX_ATTEMPTS", "RETRY_DELAYS", "RETRY_FLOOR", "write_through_elections"]

RETRY_DELAYS: Final = (0.1, 0.25, 0.5)
"""Upper bounds of the (full-jitter) pauses before the first retries. NVIDIA's IS backs off
1, 2, 4, 8, 16 s; here a caller waits on the write and an election ends 4-9 s after the node
died, so the write is tried every `RETRY_FLOOR` and lands within half a second of it."""
RETRY_FLOOR: Final = 0.5
"""Pause between retries once the backoff's are spent; also the time kept for the last attempt
when a pause would pass the deadline."""
CREATE_WAIT: Final = 2.0
"""How long the one creation of a missing stream may take. Longer, it waits for a cluster's meta
leader (the node that led it died too): the write is retried meanwhile, for the stream's own new
leader may come first."""
MAX_ATTEMPTS: Final = 40
"""Bound on the retries of one write (the deadline ends them sooner)."""

_log = logging.getLogger(__name__)

Attempt = Callable[[float], Awaitable[Exception | None]]
"""One try of the write, given the deadline (monotonic): None on success, else the retryable
error. Errors that must not be retried are raised."""


async def write_through_elections(
    attempt: Attempt,
    *,
    deadline: float,
    create_stream: Callable[[], Awaitable[None]],
    delays: Sequence[float] = RETRY_DELAYS,
    extra: Mapping[str, str],
) -> Exception | None:
    """Run `attempt` until it succeeds (None) or `deadline` (monotonic) passes (its last error).

    The first "no stream" answer calls `create_stream` once, for at most `CREATE_WAIT` seconds.
    """
    error = await attempt(deadline)
    if error is None:
        return None
    if isinstance(error, NoStreamResponseError):
        _log.warning("stream missing or electing its leader; creating it", extra=dict(extra))
        try:
            left = max(0.1, deadline - time.monotonic())
            await asyncio.wait_for(create_stream(), min(CREATE_WAIT, left))
        except (NatsError, TimeoutError) as failure:
            _log.warning(
                "stream not created; retrying the write",
                extra={**extra, "error": repr(failure)},
            )
    pauses = [bound * random.random() for bound in (0.0, *delays)]
    for retry in range(MAX_ATTEMPTS):
        left = deadline - time.monotonic()
        if left <= RETRY_FLOOR:
            break
        pause = pauses[retry] if retry < len(pauses) else RETRY_FLOOR
        await asyncio.sleep(min(pause, left - RETRY_FLOOR))
        error = await attempt(deadline)
        if error is None:
            return None
        _log.warning("write failed; retrying", extra={**extra, "error": repr(error)})
    return error
