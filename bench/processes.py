"""What the suites read about the stack's processes from /proc: CPU time and resident memory."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from nvcf_platform.devstack.stack import LocalStack

__all__ = [
    "CLOCK_TICKS",
    "CpuSnapshot",
    "memory_kib",
    "process_cpu_s",
    "process_cpu_split",
    "stack_roles",
]

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Ticks per second of /proc's CPU times: their resolution is 1 / CLOCK_TICKS s."""


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads) from /proc; None if gone."""
    split = process_cpu_split(pid)
    return None if split is None else split[0] + split[1]


def process_cpu_split(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of process `pid` (all its threads) from /proc; None if
    gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def memory_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A memory field of /proc/<pid>/status in KiB (`VmRSS` now, `VmHWM` the peak); None once
    the process is gone."""
    prefix = f"{field}:"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(prefix):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by this process (`client`) and by each role's processes."""

    seconds: Mapping[str, float]

    @staticmethod
    def take(processes: Mapping[str, Sequence[int]]) -> CpuSnapshot:
        seconds = {"client": time.process_time()}
        for name, pids in processes.items():
            seconds[name] = sum(process_cpu_s(pid) or 0.0 for pid in pids)
        return CpuSnapshot(seconds)

    def per_request_us(self, before: CpuSnapshot, answered: int) -> dict[str, float | None]:
        """Each role's CPU µs per answered request since `before`."""
        return {
            name: (value - before.seconds[name]) * 1e6 / answered if answered else None
            for name, value in self.seconds.items()
        }


def stack_roles(stack: LocalStack, version_id: str) -> dict[str, list[int]]:
    """The pids of a LocalStack whose CPU time is accounted, by role, for one version."""
    nats = stack.nats.pid
    return {
        "platform": [stack.platform.pid],
        "nats-server": [] if nats is None else [nats],
        "sidecar": [process.pid for process in stack.sidecars(version_id)],
        "server": [stack.container(version_id).pid],
    }
