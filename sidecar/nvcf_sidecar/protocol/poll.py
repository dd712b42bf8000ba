"""How long a response head may take: the IS's NVCF-POLL-SECONDS rule and the worker's budget.

The IS parses the caller's header once (reference §11.3); the worker shifts the same number by the
age of the work item to know when to answer 202 (reference §5.2 steps 5-6, §6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from nvcf_sidecar.protocol.errors import PollSecondsTooLarge, UnparsablePollSeconds
from nvcf_sidecar.protocol.headers import EVENT_STREAM
from nvcf_sidecar.protocol.limits import (
    DEFAULT_POLL_SECONDS,
    DEFAULT_SSE_POLL_SECONDS,
    MAX_POLL_SECONDS,
    MIN_POLL_SECONDS,
    MIN_POLL_WAIT_SECONDS,
    NEGATIVE_BUDGET_TOLERANCE_SECONDS,
)

__all__ = ["PollBudget", "parse_poll_seconds", "shift_poll_budget"]

# What the IS accepts: an unsigned decimal (Rust's u64 parser, which allows a leading "+").
_UNSIGNED: Final = re.compile(r"\+?[0-9]+")
# What the worker accepts: a signed decimal (Go's strconv.Atoi).
_SIGNED: Final = re.compile(r"[+-]?[0-9]+")
# A header value the IS can read as text at all: visible ASCII, space and tab.
_VISIBLE: Final = re.compile(r"[\t\x20-\x7e]*")
_U64_MAX: Final = 2**64 - 1
_I64_RANGE: Final = (-(2**63), 2**63 - 1)


def parse_poll_seconds(value: str | None, accept: str | None, *, tlb: bool = False) -> int:
    """The IS's wait for a response head, in seconds, from the caller's headers.

    `value` is the first NVCF-POLL-SECONDS value and `accept` the first Accept value (None when
    absent). Absent means 60 s, or 1200 s when Accept is exactly `text/event-stream` on a
    non-TLB route; 0 becomes 1. A value that is not an unsigned integer raises
    `UnparsablePollSeconds`, one above 3600 `PollSecondsTooLarge` (both answered 400). A value
    that is not visible ASCII counts as absent, as it does for NVIDIA's IS.
    """
    if value is None or not _VISIBLE.fullmatch(value):
        if not tlb and accept == EVENT_STREAM:
            return DEFAULT_SSE_POLL_SECONDS
        return DEFAULT_POLL_SECONDS
    parsed = _bounded_int(value, _UNSIGNED, 0, _U64_MAX)
    if parsed is None:
        raise UnparsablePollSeconds(value, "not an unsigned 64-bit integer number of seconds")
    seconds = max(parsed, MIN_POLL_SECONDS)
    if seconds > MAX_POLL_SECONDS:
        raise PollSecondsTooLarge(value, f"must be <= {MAX_POLL_SECONDS}")
    return seconds


@dataclass(frozen=True, slots=True)
class PollBudget:
    """The worker's view of one work item's deadline for a response head."""

    target: float
    """Seconds the caller asked to wait (its NVCF-POLL-SECONDS, default 60)."""
    shifted: float
    """`target` minus the age of the work item: seconds left now; zero or negative when spent."""

    @property
    def header_value(self) -> str:
        """The `NVCF-POLL-SECONDS` value forwarded to the container: whole seconds toward zero."""
        return str(int(self.shifted))

    @property
    def too_late(self) -> bool:
        """True when the budget ran out so long ago that a 202 would arrive after the IS gave up."""
        return self.shifted < -NEGATIVE_BUDGET_TOLERANCE_SECONDS

    @property
    def next_poll_timeout(self) -> float:
        """How long the worker waits for each next poll before it gives the request up."""
        return max(2 * self.target, MIN_POLL_WAIT_SECONDS)


def shift_poll_budget(poll_seconds: str | None, request_time: float, now: float) -> PollBudget:
    """The worker's budget for a work item (reference §5.2 step 5).

    `poll_seconds` is the first NVCF-POLL-SECONDS value among the item's `requestHeaders`;
    `request_time` and `now` are Unix times in seconds. The worker does not re-validate the
    header: anything that is not a signed integer means the 60 s default, and no clamping applies.
    """
    seconds = None if poll_seconds is None else _bounded_int(poll_seconds, _SIGNED, *_I64_RANGE)
    target = float(DEFAULT_POLL_SECONDS if seconds is None else seconds)
    return PollBudget(target=target, shifted=target - (now - request_time))


def _bounded_int(text: str, pattern: re.Pattern[str], low: int, high: int) -> int | None:
    """`text` as an integer if it matches `pattern` and lies in [low, high], else None."""
    if not pattern.fullmatch(text):
        return None
    # Strip sign and leading zeros before int(): it refuses very long digit strings.
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 20:
        return None
    number = int(digits or "0")
    if text.startswith("-"):
        number = -number
    return number if low <= number <= high else None
