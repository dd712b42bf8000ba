"""Instance processes a previous platform left running (it was killed before it could stop
them): each start records `<name>.pid` (pid and kernel start time) in the instance's directory,
and a new backend on the same work directory stops what is still alive of them.

The start time tells a live process from a later one that reused its pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Final

__all__ = ["record_start", "recorded_pid", "stop_leftovers"]

_PROC: Final = Path("/proc")
_SUFFIX: Final = ".pid"
_log = logging.getLogger(__name__)


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time since boot, in clock ticks); None if gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def record_start(directory: Path, name: str, pid: int) -> None:
    """Note that `name` of the instance in `directory` runs as process (group) `pid`."""
    started = _start_time(pid)
    if started is None:
        return  # already gone, or no /proc here: nothing a later platform could check
    path = directory / f"{name}{_SUFFIX}"
    with contextlib.suppress(OSError):
        path.write_text(f"{pid} {started}\n")


def recorded_pid(directory: Path, name: str) -> int | None:
    """The pid of the latest recorded start of `name` in `directory` (None: no record)."""
    try:
        return int((directory / f"{name}{_SUFFIX}").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_leftovers(instances_dir: Path) -> list[int]:
    """SIGKILL the process group of every recorded start under `instances_dir/*/` that is
    still the same process; the records are removed. The pids stopped."""
    stopped: list[int] = []
    if not instances_dir.is_dir():
        return stopped
    for record in sorted(instances_dir.glob(f"*/*{_SUFFIX}")):
        try:
            pid_text, started = record.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, started = 0, ""
        if pid > 0 and started and _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                stopped.append(pid)
                _log.warning(
                    "stopped an instance process a previous platform left running",
                    extra={"instance_id": record.parent.name, "child": record.stem, "pid": pid},
                )
        with contextlib.suppress(OSError):
            record.unlink()
    return stopped
