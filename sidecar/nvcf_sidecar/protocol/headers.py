"""HTTP header names both sides of the NVCF wire agree on, and the hop-by-hop rule they both apply.

Names are given in the spelling NVIDIA's services use; HTTP header names compare case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = [
    "ACCESS_CONTROL_EXPOSE_HEADERS",
    "EVENT_STREAM",
    "FEATURE_DISABLE_WORKER_COMPATIBILITY",
    "FEATURE_STREAM_FULL_REQUEST",
    "HOP_BY_HOP_HEADERS",
    "NVCF_INPUT_ASSET_REFERENCES",
    "NVCF_INVOCATION_REGION",
    "NVCF_PERCENT_COMPLETE",
    "NVCF_POLL_SECONDS",
    "NVCF_REQID",
    "NVCF_STATUS",
    "STATUS_ERRORED",
    "STATUS_FULFILLED",
    "STATUS_IN_PROGRESS",
    "nvcf_status",
    "strip_hop_by_hop",
]

# Caller -> IS -> worker (carried in `requestHeaders`).
NVCF_POLL_SECONDS: Final = "nvcf-poll-seconds"
NVCF_INPUT_ASSET_REFERENCES: Final = "nvcf-input-asset-references"
NVCF_INVOCATION_REGION: Final = "nvcf-invocation-region"
"""Set by the IS to its own region; the worker forwards it as `NVCF-INVOCATION-REGION`."""
FEATURE_DISABLE_WORKER_COMPATIBILITY: Final = "nvcf-feature-disable-worker-compatibility"
"""`true` switches the worker to passthrough mode; the IS sets it on every TLB request."""
FEATURE_STREAM_FULL_REQUEST: Final = "nvcf-feature-enable-only-stream-full-request"
"""`true` from the caller makes the IS send the whole request over GET attach (`+h1`)."""

# Worker -> IS -> caller.
NVCF_PERCENT_COMPLETE: Final = "NVCF-PERCENT-COMPLETE"
NVCF_REQID: Final = "nvcf-reqid"
NVCF_STATUS: Final = "nvcf-status"
ACCESS_CONTROL_EXPOSE_HEADERS: Final = "access-control-expose-headers"

STATUS_IN_PROGRESS: Final = "in-progress"
STATUS_FULFILLED: Final = "fulfilled"
STATUS_ERRORED: Final = "errored"

EVENT_STREAM: Final = "text/event-stream"
"""The media type that selects SSE: passthrough in the worker, a 1200 s default poll in the IS."""

HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Lower-case names removed before a header set crosses to the next hop (reference §4)."""


def nvcf_status(status: int) -> str:
    """The `nvcf-status` value the IS adds for a relayed status (reference §11.2)."""
    if status == 202:
        return STATUS_IN_PROGRESS
    if 200 <= status < 400:
        return STATUS_FULFILLED
    return STATUS_ERRORED


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop the hop-by-hop headers and every header the `Connection` header names.

    Order and duplicates of the remaining headers are kept.
    """
    pairs = headers if isinstance(headers, list) else list(headers)
    drop: set[str] = set(HOP_BY_HOP_HEADERS)
    for name, value in pairs:
        if name.lower() == "connection":
            drop.update(token for raw in value.split(",") if (token := raw.strip(" \t").lower()))
    return [(name, value) for name, value in pairs if name.lower() not in drop]
