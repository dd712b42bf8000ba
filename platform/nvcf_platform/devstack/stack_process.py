"""One child process of the local stack: its own process group, a log file, bounded stops.

`StackProcess` is what `LocalStack` hands out for the platform, each inference server and each
sidecar; `StackError` and `ChildExited` are the errors the stack raises. Standard library only.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Final, TextIO

from nvcf_platform.devstack.process_tree import DescendantTracker
from nvcf_platform.errors import PlatformError

__all__ = [
    "ChildExited",
    "StackError",
    "StackProcess",
    "http_status",
    "live_group_members",
    "signal_group",
    "stop_in_order",
    "wait_group_gone",
]

POLL_INTERVAL: Final = 0.25
"""Seconds between two polls of a health URL while waiting for it (4 a second)."""
_LOG_TAIL_LINES: Final = 40
_KILL_WAIT: Final = 5.0
_COPY_CHUNK: Final = 65536


class StackError(PlatformError):
    """The local stack could not start, or a process of it could not be stopped."""


class ChildExited(StackError):
    """A child process of the stack exited while the stack waited for it to become ready."""

    def __init__(self, name: str, returncode: int, log_path: Path, log_tail: str) -> None:
        self.name = name
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail
        super().__init__(
            f"{name} exited with status {returncode} during start-up; "
            f"log {log_path} ends with:\n{log_tail}"
        )


class StackProcess:
    """A command run in its own session, so that its whole process group can be signalled.

    Its stdout and stderr go to `log_path`; with a `log_stream` they are also copied there line
    by line as `[name] line` by a reader thread (`stream_lock` serialises the writers).
    `health_url` is polled by `wait_ready`; `metrics_url` is set for sidecars. `cwd` is the
    working directory of the command (None: this process's). `pass_fds` are descriptors the
    child inherits (the platform's listening socket, which the stack keeps across restarts).

    Its descendants are remembered whenever `note_descendants()` runs (signals and stops do),
    so a helper that left the group (PyTriton's `tritonserver`) is signalled and waited for too.
    With `graceful_descendants` False, a SIGTERM reaches its group only: its descendants are its
    own to stop, in their order (the platform drains its instances' sidecars before their
    servers); they are still waited for, and SIGKILLed with it.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        health_url: str | None = None,
        metrics_url: str | None = None,
        log_stream: TextIO | None = None,
        stream_lock: threading.Lock | None = None,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
        graceful_descendants: bool = True,
    ) -> None:
        self.name = name
        self.pass_fds = tuple(pass_fds)
        self.graceful_descendants = graceful_descendants
        self.command = list(command)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.health_url = health_url
        self.metrics_url = metrics_url
        self._log_stream = log_stream
        self._stream_lock = stream_lock or threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tree = DescendantTracker()
        self.last_answer: int | None = None
        """The status `health_url` last answered (None: nothing answered, or not polled yet)."""

    def __repr__(self) -> str:
        return f"<StackProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        """The process id, which is also its process-group id."""
        if self._process is None:
            raise StackError(f"{self.name} has not been started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        return None if self._process is None else self._process.poll()

    @property
    def running(self) -> bool:
        """Whether the main process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> StackProcess:
        """Start the command in a new session; raises StackError if it cannot be executed."""
        if self._process is not None:
            raise StackError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log if self._log_stream is None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                pass_fds=self.pass_fds,
            )
        except OSError as error:
            log.close()
            raise StackError(f"{self.name}: cannot run {self.command[0]!r}: {error}") from error
        if self._log_stream is None or self._process.stdout is None:
            log.close()  # the child holds its own descriptor
        else:
            self._reader = threading.Thread(
                target=self._copy_output,
                args=(self._process.stdout, log, self._log_stream),
                name=f"log {self.name}",
                daemon=True,
            )
            self._reader.start()
        return self

    def respawn(self) -> StackProcess:
        """A new process with this one's name, command, environment, directory, log and URLs,
        started; this one must have exited (its log file is appended to)."""
        if self._process is None or self._process.poll() is None:
            raise StackError(f"{self.name} is still running (or was never started)")
        clone = StackProcess(
            self.name,
            self.command,
            env=self.env,
            log_path=self.log_path,
            health_url=self.health_url,
            metrics_url=self.metrics_url,
            log_stream=self._log_stream,
            stream_lock=self._stream_lock,
            cwd=self.cwd,
            pass_fds=self.pass_fds,
            graceful_descendants=self.graceful_descendants,
        )
        return clone.start()

    def _copy_output(self, pipe: IO[bytes], log: IO[bytes], stream: TextIO) -> None:
        """Copy the child's output to its log file and, line by line with the prefix, to the
        stream: a chunk at a time, so a busy child costs one write to each per read, not two
        writes and two flushes per line."""
        prefix = f"[{self.name}] "
        partial = b""
        with pipe, log:
            fd = pipe.fileno()
            while chunk := os.read(fd, _COPY_CHUNK):
                log.write(chunk)
                log.flush()
                *lines, partial = (partial + chunk).split(b"\n")
                if lines:
                    self._echo(stream, prefix, lines)
            if partial:
                self._echo(stream, prefix, [partial])

    def _echo(self, stream: TextIO, prefix: str, lines: list[bytes]) -> None:
        text = "".join(
            f"{prefix}{line.decode(errors='replace').rstrip(chr(13))}\n" for line in lines
        )
        try:
            with self._stream_lock:
                stream.write(text)
                stream.flush()
        except (OSError, ValueError):  # the stream was closed; the log file goes on
            pass

    # -- signals and waits --------------------------------------------------------------------

    def terminate(self) -> None:
        """Send SIGTERM to the process group (a graceful stop for the sidecar and the platform)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the process group."""
        self._signal(signal.SIGKILL)

    def note_descendants(self) -> None:
        """Remember the processes this one started (and they started) that run now."""
        if self._process is not None:
            self._tree.note(self._process.pid if self.running else None)

    def descendants(self) -> list[int]:
        """The remembered descendants still running, inside its group or not."""
        return self._tree.alive()

    def _signal(self, signum: signal.Signals) -> None:
        self.note_descendants()
        if self.returncode is None or live_group_members(self.pid):
            # Reaped and empty, the id may already belong to another group: not signalled.
            signal_group(self.pid, signum)
        if signum == signal.SIGKILL or self.graceful_descendants:
            self._tree.signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the main process to exit; its status, or None."""
        if self._process is None:
            raise StackError(f"{self.name} has not been started")
        try:
            return self._process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to `timeout` s, then SIGKILL; returns the exit status.

        Returns once no live process of the group, nor any remembered descendant, is left;
        idempotent. Raises StackError if one survives SIGKILL for 5 s.
        """
        if self._process is None:
            return None
        self.terminate()
        self.finish_stop(time.monotonic() + timeout)
        return self.returncode

    def finish_stop(self, deadline: float) -> None:
        """After `terminate()`: wait for the group until `deadline`, then SIGKILL what is left."""
        if self._process is None:
            return
        if not self._wait_group_gone(deadline):
            self.kill()
            if not self._wait_group_gone(time.monotonic() + _KILL_WAIT):
                left = sorted({*live_group_members(self.pid), *self.descendants()})
                raise StackError(f"{self.name}: processes {left} survived SIGKILL")
        if self._reader is not None:
            self._reader.join(timeout=_KILL_WAIT)

    def _wait_group_gone(self, deadline: float) -> bool:
        assert self._process is not None
        while wait_group_gone(self._process, deadline):
            self.note_descendants()
            if not self.descendants():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return False

    # -- readiness and logs -------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Whether GET `health_url` answers 200 right now (kept as `last_answer`)."""
        if self.health_url is None:
            raise StackError(f"{self.name} has no health URL")
        self.last_answer = http_status(self.health_url)
        return self.last_answer == 200

    def describe_answer(self) -> str:
        """What `health_url` last answered, as words: `answers 404`, `does not answer yet`."""
        if self.last_answer is None:
            return "does not answer yet"
        return f"answers {self.last_answer}"

    def check_running(self) -> None:
        """Raise ChildExited (with the log tail) if the process has exited."""
        code = self.returncode
        if code is not None:
            raise ChildExited(self.name, code, self.log_path, self.log_tail())

    def wait_ready(self, timeout: float) -> None:
        """Poll `health_url` until it answers 200; ChildExited if the process exits first,
        StackError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            if self.is_ready():
                return
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{self.name} was not ready within {timeout:g} s ({self.health_url} "
                    f"{self.describe_answer()}); log {self.log_path} ends with:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines the process wrote ('' before it wrote anything)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def stop_in_order(groups: Sequence[Sequence[StackProcess]], timeout: float) -> list[StackError]:
    """Stop group after group: SIGTERM to each process of a group, `timeout` s for all of
    them, then SIGKILL; the errors of processes that survived even that."""
    errors: list[StackError] = []
    for group in groups:
        for process in group:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in group:
            try:
                process.finish_stop(deadline)
            except StackError as error:
                errors.append(error)
    return errors


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of GET `url` (a loopback http:// URL, no proxy), or None if nothing answers."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def live_group_members(group: int) -> list[int]:
    """Pids of processes in process group `group` that are not zombies."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: "does the group exist at all"
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [group]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[2] == str(group) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def signal_group(group: int, signum: signal.Signals) -> None:
    """Send `signum` to process group `group`; a group that is already gone is not an error."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def wait_group_gone(process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Reap `process` (a group leader) and wait for the rest of its group; False at `deadline`."""
    while True:
        process.poll()
        if process.returncode is not None and not live_group_members(process.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
