"""What `nvcf-sidecar dev` shows of the instances its platform runs (the versions deployed
through the API): each instance's output, and its processes as they start and restart.

The local backend lays an instance out in `<instances>/<instance id>/` (backends/local.py):
`instance.json` (its ids and function name), `server.log`, `sidecar.log` and a `<name>.pid`
record per start of each process. `InstanceFollower` reads them a few times a second, from a
thread of its own, and writes

- `[dev] instance hello-1: server pid 4711, sidecar pid 4712 (instance 6b5e4c0f-..., function
  hello version 6b5e..., logs in DIR)` once both processes run, `[dev] instance hello-1:
  server restarted (pid 4790)` whenever a process starts again, and `[dev] instance hello-1:
  ready` (then `ready again` after a restart) once its sidecar's `/v1/health/ready` says so;
- every line of the instance's logs, as `[server-hello-1] line` and `[sidecar-hello-1] line`.

An instance is named after its function and numbered in the order instances of that name
appeared. Instances described before the follower began (an earlier run on the same work
directory) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nvcf_platform.backends.instance_dir import read_instance_file
from nvcf_platform.backends.leftovers import recorded_pid
from nvcf_platform.devstack.stack_process import http_status
from nvcf_platform.devstack.stack_spec import HOST

__all__ = ["InstanceFollower"]

_INTERVAL: Final = 0.25
_PROCESSES: Final = ("server", "sidecar")
_PROBE_TIMEOUT: Final = 0.5
_READ_LIMIT: Final = 1 << 20
"""Bytes read from one log in one round at most (a flood is shown over several rounds)."""


@dataclass
class _Followed:
    label: str
    directory: Path
    document: dict[str, Any]
    offsets: dict[str, int] = field(default_factory=dict)
    partial: dict[str, bytes] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    announced: bool = False
    ready: bool = False
    restarted: bool = False


class InstanceFollower:
    """Follows every instance that appears under `root` (the backend's `instances` directory).

    `write` gets text ending in a newline (the instances' log lines); `say` a sentence for a
    `[dev]` line. `poll()` is one round; `start()` runs rounds every `interval` seconds until
    `stop()`, which runs a last one.
    """

    def __init__(
        self,
        root: Path,
        *,
        write: Callable[[str], None],
        say: Callable[[str], None],
        interval: float = _INTERVAL,
        since: float | None = None,
    ) -> None:
        self.root = root
        self._write = write
        self._say = say
        self._interval = interval
        self._since = time.time() if since is None else since
        self._followed: dict[str, _Followed] = {}
        self._ignored: set[str] = set()
        self._counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dev-instances", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the rounds, after a last one (what the instances wrote while stopping)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def labels(self) -> dict[str, str]:
        """Instance id -> the name dev shows it under (`hello-1`)."""
        return {key: followed.label for key, followed in self._followed.items()}

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()
        self.poll()
        for followed in self._followed.values():
            for process in _PROCESSES:
                rest = followed.partial.pop(process, b"")
                if rest:
                    self._echo(followed, process, [rest])

    def poll(self) -> None:
        """One round: new instances, restarted processes, new log lines."""
        try:
            entries = sorted(os.scandir(self.root), key=lambda entry: entry.name)
        except OSError:
            entries = []
        fresh = []
        for entry in entries:
            if entry.name in self._followed or entry.name in self._ignored:
                continue
            document = read_instance_file(Path(entry.path))
            if document is None:
                continue  # not laid out yet: next round
            created = document.get("createdAt")
            if not isinstance(created, int | float) or created < self._since:
                self._ignored.add(entry.name)
                continue
            fresh.append((created, entry.name, Path(entry.path), document))
        for _, name, directory, document in sorted(fresh, key=lambda item: item[0]):
            function = str(document.get("functionName") or "function")
            self._counts[function] = self._counts.get(function, 0) + 1
            label = f"{function}-{self._counts[function]}"
            self._followed[name] = _Followed(label, directory, document)
        for followed in self._followed.values():
            self._check_pids(followed)
            for process in _PROCESSES:
                self._tail(followed, process)
            if followed.announced and not followed.ready:
                self._check_ready(followed)

    def _check_ready(self, followed: _Followed) -> None:
        """Ready: its sidecar says so and, for an HTTP health check, its server answers it too
        (after a server's restart the sidecar may not have noticed the old one's end yet)."""
        document = followed.document
        ready = (
            http_status(
                f"http://{HOST}:{document.get('healthPort')}/v1/health/ready", _PROBE_TIMEOUT
            )
            == 200
        )
        server = document.get("serverHealthUrl")
        if ready and isinstance(server, str):
            ready = http_status(server, _PROBE_TIMEOUT) == document.get("serverHealthStatus", 200)
        if ready:
            followed.ready = True
            self._say(
                f"instance {followed.label}: ready" + (" again" if followed.restarted else "")
            )

    def _check_pids(self, followed: _Followed) -> None:
        current = {
            process: pid
            for process in _PROCESSES
            if (pid := recorded_pid(followed.directory, process)) is not None
        }
        if not followed.announced:
            if len(current) < len(_PROCESSES):
                return  # both processes first: the sidecar starts just after the server
            followed.announced = True
            followed.pids = current
            document = followed.document
            self._say(
                f"instance {followed.label}: server pid {current['server']}, sidecar pid "
                f"{current['sidecar']} (instance {document.get('instanceId')}, function "
                f"{document.get('functionName')} version {document.get('functionVersionId')}, "
                f"logs in {followed.directory})"
            )
            return
        for process, pid in current.items():
            if followed.pids.get(process) != pid:
                followed.pids[process] = pid
                followed.ready, followed.restarted = False, True
                self._say(f"instance {followed.label}: {process} restarted (pid {pid})")

    def _tail(self, followed: _Followed, process: str) -> None:
        path = followed.directory / f"{process}.log"
        offset = followed.offsets.get(process, 0)
        try:
            with path.open("rb") as file:
                file.seek(offset)
                chunk = file.read(_READ_LIMIT)
        except OSError:
            return
        if not chunk:
            return
        followed.offsets[process] = offset + len(chunk)
        *lines, rest = (followed.partial.get(process, b"") + chunk).split(b"\n")
        followed.partial[process] = rest
        if lines:
            self._echo(followed, process, lines)

    def _echo(self, followed: _Followed, process: str, lines: list[bytes]) -> None:
        prefix = f"[{process}-{followed.label}] "
        text = "".join(
            f"{prefix}{line.decode(errors='replace').rstrip(chr(13))}\n" for line in lines
        )
        with contextlib.suppress(OSError, ValueError):  # the stream is closed: nothing to show
            self._write(text)
