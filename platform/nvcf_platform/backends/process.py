"""One child process of a local instance, run by asyncio: its own process group, a log file,
bounded stops that leave no member of the group (nor a helper that left it) behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from nvcf_platform.backends.leftovers import record_start
from nvcf_platform.devstack.process_tree import DescendantTracker
from nvcf_platform.devstack.stack_process import live_group_members, signal_group

__all__ = ["ChildProcess", "read_log_tail"]

_KILL_WAIT: Final = 5.0
_GROUP_POLL: Final = 0.05


def read_log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of the log at `path` ('' if there is none yet)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            data = file.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class ChildProcess:
    """A command run (and re-run) in a new session, stdout and stderr appended to `log_path`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.spawn_error: str | None = None
        """Why the latest start could not execute the command (None: it could)."""
        self._process: asyncio.subprocess.Process | None = None
        self._tree = DescendantTracker()

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int | None:
        """The pid of the latest start, which is also its process-group id."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status of the latest start once it has exited (negative: by that signal)."""
        return None if self._process is None else self._process.returncode

    @property
    def exited(self) -> bool:
        """Whether the latest start has exited, or could not execute the command."""
        return self.spawn_error is not None or self.returncode is not None

    async def start(self) -> None:
        """Start (again) in a new session; a command that cannot be executed sets `spawn_error`
        instead of raising (the supervisor treats it like an exit)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.spawn_error = None
        self._tree = DescendantTracker()
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start {self.name} ---\n".encode())
            log.flush()
            try:
                self._process = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
                record_start(self.log_path.parent, self.name, self._process.pid)
            except OSError as error:
                self._process = None
                self.spawn_error = f"cannot run {self.command[0]!r}: {error.strerror or error}"
                log.write(f"{self.spawn_error}\n".encode())

    def describe_exit(self) -> str:
        """`server exited with status 3` / `... killed by SIGKILL` / `cannot run ...`."""
        if self.spawn_error is not None:
            return f"{self.name} {self.spawn_error}"
        code = self.returncode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"{self.name} was killed by {signal.Signals(-code).name}"
        return f"{self.name} exited with status {code}"

    def log_tail(self, lines: int = 10) -> str:
        return read_log_tail(self.log_path, lines)

    def note_descendants(self) -> None:
        """Remember the processes the latest start started (and they started) that run now:
        a helper in a session of its own (PyTriton's tritonserver) is then stopped with it."""
        process = self._process
        if process is not None and process.returncode is None:
            self._tree.note(process.pid)

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to the process group and to every descendant seen (also those that
        left the group)."""
        process = self._process
        if process is None:
            return
        self._tree.note(process.pid if process.returncode is None else None)
        if process.returncode is None or live_group_members(process.pid):
            signal_group(process.pid, signum)  # reaped and empty: the id may be reused, skip
        self._tree.signal(signum)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the group, wait up to `grace` s for it to be gone, then SIGKILL and wait up
        to 5 s more; the exit status. Idempotent. Returns also if something survived SIGKILL
        (the caller logs `survivors()`)."""
        if self._process is None:
            return None
        self.signal(signal.SIGTERM)
        if not await self._wait_gone(time.monotonic() + grace):
            self.signal(signal.SIGKILL)
            await self._wait_gone(time.monotonic() + _KILL_WAIT)
        return self.returncode

    def kill_now(self) -> None:
        """SIGKILL the group without waiting (the last resort of a cancelled supervisor)."""
        self.signal(signal.SIGKILL)

    def survivors(self) -> list[int]:
        """Pids of the group and remembered descendants still alive."""
        if self._process is None:
            return []
        return sorted({*live_group_members(self._process.pid), *self._tree.alive()})

    async def _wait_gone(self, deadline: float) -> bool:
        process = self._process
        assert process is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), max(0.0, deadline - time.monotonic()))
        while True:
            # The members have no exit event to await: the group is polled (Linux /proc).
            self._tree.note(None)
            if process.returncode is not None and not self.survivors():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_GROUP_POLL)
