"""What a NATS reconnect means for work items: acks to send again, items that may be answered.

A nats-server that dies takes the acks written just before with it, and one restarted from its
store can lose delivery counts: an item already answered then comes back as a first delivery.
`ReconnectMemory` keeps the latest acks (sent again after a reconnect; acking twice is harmless)
and the moment of the last reconnect (items published before it are checked before they run).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

from nats.aio.msg import Msg

from nvcf_sidecar.protocol import WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.deadline import request_time

__all__ = ["RECENT_ACK_SECONDS", "ReconnectMemory", "delivery_count"]

RECENT_ACK_SECONDS: Final = 10.0
"""Acks sent this recently are sent again after a reconnect."""
_RECENT_ACK_LIMIT: Final = 4096


def delivery_count(msg: Msg) -> int:
    """How many times JetStream delivered `msg` (1 for a first delivery; 1 when unknown)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # not a JetStream message (tests), or a reply subject of another shape
        return 1


class ReconnectMemory:
    """The latest acks and the last reconnect of one sidecar's NATS connection."""

    __slots__ = ("_acks", "_reconnected_at")

    def __init__(self) -> None:
        self._acks: deque[tuple[float, str]] = deque(maxlen=_RECENT_ACK_LIMIT)
        self._reconnected_at: float | None = None

    def acked(self, reply: str) -> None:
        """An ack was written to `reply` (a message's reply subject)."""
        self._acks.append((time.monotonic(), reply))

    def reconnected(self) -> list[str]:
        """Note a reconnect now; the reply subjects of the last `RECENT_ACK_SECONDS` of acks."""
        self._reconnected_at = time.time()
        horizon = time.monotonic() - RECENT_ACK_SECONDS
        return [reply for at, reply in self._acks if at >= horizon]

    def maybe_delivered_before(self, request: WorkerInvokeFunctionRequest, msg: Msg) -> bool:
        """A redelivery, or an item published before the last reconnect."""
        if delivery_count(msg) > 1:
            return True
        published = request_time(request)
        return (
            self._reconnected_at is not None
            and published is not None
            and published <= self._reconnected_at
        )
