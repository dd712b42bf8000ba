"""Sizes, counts and durations fixed by the NVCF wire protocol (reference §11.7, §14).

Both sides read these; a number that appears on the wire or bounds what the peer accepts lives here.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLIENT_GONE_GRACE_SECONDS",
    "DEFAULT_POLL_SECONDS",
    "DEFAULT_SSE_POLL_SECONDS",
    "HANDLER_TIMEOUT_SECONDS",
    "INLINE_BODY_BYTES",
    "MAX_DIRECT_RESPONSE_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_HEAD_HEADERS",
    "MAX_MESSAGE_BYTES",
    "MAX_POLL_SECONDS",
    "MIN_POLL_SECONDS",
    "MIN_POLL_WAIT_SECONDS",
    "NEGATIVE_BUDGET_TOLERANCE_SECONDS",
    "POLL_GRACE_SECONDS",
    "POLL_REPLY_TIMEOUT_SECONDS",
    "URL_FRESHNESS_SECONDS",
]

_KIB: Final = 1024
_MIB: Final = 1024 * _KIB

# --- bodies and messages (reference §5.1, §11.7) -------------------------------------------------
INLINE_BODY_BYTES: Final = 32 * _KIB
"""At most this much of the caller's body travels inside the work item (`requestBody`)."""

MAX_MESSAGE_BYTES: Final = 6 * _MIB
"""Cap on an encoded `WorkerInvokeFunctionRequest`; also the queue stream's max message size."""

MAX_DIRECT_RESPONSE_BYTES: Final = 5 * _MIB
"""`maxDirectResponseSizeBytes` the IS always sends (5 242 880); bigger goes zip + 302."""

# --- attach head parsing (reference §4) ----------------------------------------------------------
MAX_HEAD_BYTES: Final = 8 * _KIB + 100 * 4 * _KIB
"""A head inside an attach body must end within this many bytes (8 KiB + 400 KiB = 417 792)."""

MAX_HEAD_HEADERS: Final = 64
"""Header lines allowed in a head inside an attach body."""

# --- polling (reference §6, §11.3, §5.2 step 6) --------------------------------------------------
DEFAULT_POLL_SECONDS: Final = 60
DEFAULT_SSE_POLL_SECONDS: Final = 1200
"""Default when the caller's `Accept` is exactly `text/event-stream` (not for TLB)."""
MIN_POLL_SECONDS: Final = 1
MAX_POLL_SECONDS: Final = 3600
POLL_GRACE_SECONDS: Final = 2
"""The IS waits the poll duration plus this long for a response head before answering 504."""
HANDLER_TIMEOUT_SECONDS: Final = 3605
"""Whole-handler timeout of the IS (408)."""
POLL_REPLY_TIMEOUT_SECONDS: Final = 10
"""The IS's NATS request timeout on `rq_polling.<reqid>`; the worker must reply sooner."""
NEGATIVE_BUDGET_TOLERANCE_SECONDS: Final = 2
"""A worker budget below minus this many seconds fails the request instead of sending a 202."""
MIN_POLL_WAIT_SECONDS: Final = 10
"""The worker waits max(2 x poll seconds, this) for each next poll before giving up."""
CLIENT_GONE_GRACE_SECONDS: Final = 5
"""After failing to deliver a 202 with an exhausted budget, the worker waits this long for a poll."""

# --- presigned URLs (reference §5.2 step 3, §8) --------------------------------------------------
URL_FRESHNESS_SECONDS: Final = 30 * 60
"""A work item older than this gets its asset/upload URLs refreshed over gRPC before use."""
