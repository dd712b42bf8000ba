"""The descendants of a stack child, also those that left its process group.

A server may start helpers in their own session (PyTriton runs `tritonserver` that way), so
signalling the child's group misses them; `DescendantTracker` remembers every descendant seen
(pid and start time, so a reused pid is never signalled) until each is gone. Linux (/proc) only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = ["DescendantTracker", "adopt_orphans", "descendants", "stop_orphans"]

_PROC: Final = Path("/proc")
_PR_SET_CHILD_SUBREAPER: Final = 36


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process."""
    found: dict[int, int] = {}
    if not _PROC.is_dir():
        return found
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and len(fields) > 1 and fields[0] != "Z":
                found[int(entry.name)] = int(fields[1])
    return found


def _start_time(pid: int) -> str | None:
    """The start time of a live process (clock ticks since boot), None if gone or a zombie."""
    fields = _stat(pid)
    if fields is None or len(fields) < 20 or fields[0] == "Z":
        return None
    return fields[19]


def descendants(roots: Iterable[int]) -> list[int]:
    """Live descendants of `roots` (children, their children, ...), not the roots themselves."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    queue = list(roots)
    while queue:
        for child in children.get(queue.pop(), ()):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


class DescendantTracker:
    """Every descendant of one child process seen so far, until it is gone."""

    def __init__(self) -> None:
        self._seen: dict[int, str] = {}  # pid -> start time

    def note(self, root: int | None) -> None:
        """Remember the descendants of `root` (None: the root is gone) and of those already seen:
        a helper whose parent died was re-parented, but its own children are found still."""
        roots = [] if root is None else [root]
        for pid in descendants([*roots, *self.alive()]):
            start = _start_time(pid)
            if start is not None:
                self._seen.setdefault(pid, start)

    def alive(self) -> list[int]:
        """The remembered descendants still running (same pid and start time); reaps any that
        this process inherited as a subreaper and that have exited."""
        living = []
        for pid, start in list(self._seen.items()):
            if _start_time(pid) == start:
                living.append(pid)
                continue
            del self._seen[pid]
            _reap(pid)
        return living

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to every remembered descendant still running."""
        for pid in self.alive():
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status if it became our child (orphans re-parent to a subreaper)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def adopt_orphans() -> bool:
    """Make this process the subreaper of its descendants (Linux): a grandchild whose parent
    dies is re-parented here instead of to init, so it stays a descendant that can be found.
    False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def stop_orphans(timeout: float) -> list[int]:
    """SIGKILL every process still descending from this one and wait up to `timeout` s for
    them to go (reaping those re-parented here): the last step of a stop, after every child
    was stopped in order. The pids still alive after that ([] normally)."""
    tracker = DescendantTracker()
    tracker.note(os.getpid())
    tracker.signal(signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while (left := tracker.alive()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left
