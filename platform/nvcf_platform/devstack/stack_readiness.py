"""Waiting for the stack's children to be ready, telling what each health URL answers meanwhile.

`wait_all_ready` is what `LocalStack.start` (and so `nvcf-sidecar dev`) waits in: it polls
`POLL_INTERVAL` apart, reports answers as they change and names the last answer when it gives up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from nvcf_platform.devstack.stack_process import POLL_INTERVAL, StackError, StackProcess

__all__ = ["wait_all_ready"]

_STILL_WAITING_EVERY: Final = 10.0  # seconds between "still waiting for ..." progress lines


def _answer(process: StackProcess) -> str:
    return f"{process.health_url} {process.describe_answer()}"


def wait_all_ready(
    processes: Sequence[StackProcess],
    *,
    also_report: Sequence[StackProcess] = (),
    check_alive: Callable[[], None],
    deadline: float,
    timeout: float,
    progress: Callable[[str], None],
) -> None:
    """Poll the `health_url` of every process until each answered 200 once.

    `progress` hears what is awaited, each process as it becomes ready (and each of
    `also_report`, polled only for that, as it becomes healthy), every status code an
    `also_report` URL answers as it changes (a server's 404 shows at once) and, every 10 s,
    what is still awaited with its last answer. `check_alive` runs every round and raises to
    fail fast (e.g. `ChildExited`); StackError at `deadline`, naming the processes not ready and
    the unhealthy `also_report` ones, each with its URL and last answer.
    """
    pending = list(processes)
    unhealthy = list(also_report)
    for process in [*unhealthy, *pending]:
        progress(f"waiting for {process.name}: {process.health_url}")
    report_at = time.monotonic() + _STILL_WAITING_EVERY
    while pending:
        check_alive()
        ready = []
        for process in [*unhealthy, *pending]:
            before = process.last_answer
            if process.is_ready():
                ready.append(process)
            elif process in unhealthy and process.last_answer not in (before, None):
                progress(f"{process.name}: {_answer(process)}")
        for process in ready:
            progress(f"{process.name} {'ready' if process in pending else 'healthy'}")
        unhealthy = [process for process in unhealthy if process not in ready]
        pending = [process for process in pending if process not in ready]
        if not pending:
            return
        now = time.monotonic()
        if now >= deadline:
            waiting = "; ".join(f"{p.name} ({_answer(p)})" for p in [*unhealthy, *pending])
            culprit = unhealthy[0] if unhealthy else pending[0]
            raise StackError(
                f"not ready within {timeout:g} s: {waiting}; log of {culprit.name} "
                f"ends with:\n{culprit.log_tail()}"
            )
        if now >= report_at:
            report_at = now + _STILL_WAITING_EVERY
            waiting = ", ".join(f"{p.name} ({_answer(p)})" for p in [*unhealthy, *pending])
            progress(f"still waiting for {waiting} ({deadline - now:.0f} s left)")
        time.sleep(POLL_INTERVAL)
