"""Child processes for tests: own process group, log file, bounded waits, certain cleanup.

`ManagedProcess` runs one command; the `start_process` fixture starts any number of them and
stops every one at teardown, also when the test failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

import pytest

from harness.http import http_request
from nvcf_platform.devstack.stack_process import signal_group, wait_group_gone

__all__ = [
    "HarnessError",
    "ManagedProcess",
    "ProcessExited",
    "StartProcess",
    "start_process",
    "wait_until",
]

_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 60


class HarnessError(AssertionError):
    """A harness wait failed; the message carries the process's log tail."""


class ProcessExited(HarnessError):
    """The process exited while the test was waiting for it to become ready."""


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = _POLL_INTERVAL,
) -> None:
    """Poll `condition` until it returns True; raise `HarnessError` naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class ManagedProcess:
    """One command run in its own session (so its whole process group can be signalled).

    stdout and stderr go to `log_path`. `env` is the complete environment of the child (None:
    inherit this process's). Call `start()` once, then `stop()`; both are idempotent.
    """

    def __init__(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.command = [os.fspath(part) for part in command]
        self.log_path = log_path
        self.name = name or Path(self.command[0]).name
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int | None:
        """The process id (also its process-group id) once started."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited, else None."""
        return None if self._process is None else self._process.poll()

    @property
    def running(self) -> bool:
        """Whether the main process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> ManagedProcess:
        """Start the command; returns self."""
        if self._process is not None:
            raise HarnessError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines the process wrote."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _failure(self, message: str) -> str:
        return f"{self.name}: {message}; log {self.log_path} ends with:\n{self.log_tail()}"

    def check_running(self) -> None:
        """Raise `ProcessExited` (with the log tail) if the process is not running."""
        if self._process is None:
            raise HarnessError(f"{self.name} was never started")
        code = self._process.poll()
        if code is not None:
            raise ProcessExited(self._failure(f"exited with status {code}"))

    def wait_for(self, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll `condition` until True; fail fast if the process exits, or after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            if condition():
                return
            if time.monotonic() >= deadline:
                raise HarnessError(
                    self._failure(f"timed out after {timeout:g} s waiting for {what}")
                )
            time.sleep(_POLL_INTERVAL)

    def wait_http_ok(self, url: str, *, timeout: float = 30.0, status: int = 200) -> None:
        """Poll GET `url` until it answers `status`; fail fast if the process exits."""
        last: list[str] = ["no answer yet"]

        def answered() -> bool:
            try:
                response = http_request("GET", url, timeout=min(2.0, timeout))
            except OSError as error:
                last[0] = f"{type(error).__name__}: {error}"
                return False
            last[0] = f"status {response.status}"
            return response.status == status

        try:
            self.wait_for(answered, timeout=timeout, what=f"GET {url} -> {status}")
        except ProcessExited:
            raise
        except HarnessError as error:
            raise HarnessError(f"{error}\n(last attempt: {last[0]})") from None

    def wait_for_log(self, text: str, *, timeout: float = 30.0) -> None:
        """Wait until `text` appears in the log; fail fast if the process exits."""
        self.wait_for(lambda: text in self.log_text(), timeout=timeout, what=f"{text!r} in log")

    def wait_exit(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the main process to exit; return its status."""
        if self._process is None:
            raise HarnessError(f"{self.name} was never started")
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(self._failure(f"still running after {timeout:g} s")) from None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to `timeout` s, then SIGKILL what is left.

        Waits until no live process of the group remains (children included); returns the main
        process's exit status (None if it was never started).
        """
        process = self._process
        if process is None:
            return None
        if self._stopped:
            return process.returncode
        group = process.pid
        try:
            signal_group(group, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            if not wait_group_gone(process, deadline):
                signal_group(group, signal.SIGKILL)
                if not wait_group_gone(process, time.monotonic() + 5.0):
                    raise HarnessError(
                        self._failure(f"process group {group} survived SIGKILL for 5 s")
                    )
            self._stopped = True
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return process.returncode


class StartProcess(Protocol):
    """The callable the `start_process` fixture yields."""

    def __call__(
        self,
        command: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ManagedProcess: ...


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[StartProcess]:
    """Factory: `start_process(command, name=..., env=..., cwd=...) -> ManagedProcess` (started).

    `env` is added to (and overrides) this process's environment; `PYTHONUNBUFFERED=1` is set so
    Python children log promptly. Logs go to `<tmp_path>/logs/<name>.log`. At teardown every
    process is stopped in reverse start order, and each log tail is printed (pytest shows it
    for failed tests).
    """
    started: list[ManagedProcess] = []
    names: set[str] = set()

    def start(
        command: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ManagedProcess:
        base = name or Path(os.fspath(command[0])).name
        unique, counter = base, 1
        while unique in names:
            counter += 1
            unique = f"{base}-{counter}"
        names.add(unique)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        process = ManagedProcess(
            command,
            name=unique,
            env=full_env,
            cwd=cwd,
            log_path=tmp_path / "logs" / f"{unique}.log",
        )
        started.append(process)
        return process.start()

    yield start

    errors: list[BaseException] = []
    for process in reversed(started):
        try:
            code = process.stop()
        except BaseException as error:  # stop the others before reporting
            errors.append(error)
            code = None
        sys.stdout.write(
            f"\n----- {process.name} (pid {process.pid}, exit {code}) -----\n{process.log_tail()}\n"
        )
    if errors:
        raise errors[0]
