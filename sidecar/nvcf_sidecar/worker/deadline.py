"""When a work item's answer is due: its request time, its poll budget, its deadline (§5.2 step 5).

The platform waits for a response head until the caller's poll seconds (plus 2 s of grace) have
passed since it accepted the item; an answer sent after that reaches nobody.
"""

from __future__ import annotations

import time

from nvcf_sidecar.protocol import (
    NVCF_POLL_SECONDS,
    Header,
    PollBudget,
    WorkerInvokeFunctionRequest,
    shift_poll_budget,
)
from nvcf_sidecar.worker.forward import first_header

__all__ = ["answer_deadline", "item_budget", "request_time"]


def request_time(item: WorkerInvokeFunctionRequest) -> float | None:
    """When the platform accepted a work item or poll (Unix seconds), if it says."""
    if not item.HasField("requestTime"):
        return None
    return item.requestTime.seconds + item.requestTime.nanos / 1e9


def item_budget(item: WorkerInvokeFunctionRequest, headers: list[Header]) -> PollBudget:
    """The poll budget of a work item or poll: its caller's NVCF-POLL-SECONDS (among `headers`)
    shifted by its age (reference §5.2 step 5)."""
    now = time.time()
    seconds = first_header(headers, NVCF_POLL_SECONDS)
    return shift_poll_budget(seconds, request_time(item) or now, now)


def answer_deadline(budget: PollBudget) -> float:
    """The `time.monotonic()` moment the budget runs out: past it, only a failure is worth
    sending (the platform still waits its 2 s of grace for one)."""
    return time.monotonic() + budget.shifted
