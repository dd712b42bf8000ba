"""Progress monitoring (§7): one watcher of the response base dir turns each new version of
`<BASE_RESPONSE_DIR>/<reqid>/progress` into a `ProgressUpdate` for the request that waits on it.
The watcher is inotify read by the event loop on Linux (`inotify.DirectoryEvents`), watchdog's
observer thread elsewhere or when asked for (`progress_watchdog`, imported only then).

Beyond NVIDIA's watcher: a file written in place is read only once whole (debounce, re-reads), and
files are routed by directory as well as by `id`. Reading and checking one file is `progress_file`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final

from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.inotify import DirectoryEvents, inotify_available
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.progress_file import (
    TORN,
    UPDATE,
    FileRead,
    Version,
    read_progress_file,
    refuse,
)
from nvcf_worker.outputs import PROGRESS_FILE_NAME

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

__all__ = ["ProgressMonitor", "ProgressMonitorError", "ProgressUpdate", "ProgressWatch"]

logger = logging.getLogger(__name__)

MAX_WAIT_FACTOR: Final = 8
"""A file that never goes quiet is still read `debounce * MAX_WAIT_FACTOR` after its first event."""
RETRY_DELAYS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.4)
"""Re-reads of an empty or unparsable file that has not changed since; then it is malformed.
Longer in all than watchdog's 0.5 s hold on move events, which can delay the next write's event."""
STOP_TIMEOUT: Final = 5.0


class ProgressMonitorError(WorkerError):
    """The monitor is used outside its lifetime, or a watch is registered twice or misplaced."""


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """One version of a request's progress file, ready to answer as a 202."""

    percent: int
    body: bytes
    """The partial response (NVCT: the metadata) as compact JSON; `{}` when absent."""
    mtime_ns: int
    """The file's mtime; nudged 1 ns past the previous update when the clock did not advance."""


@dataclass(slots=True)
class _FileState:
    """Where one `progress` file is between its events and its reads."""

    timer: asyncio.TimerHandle | None = None
    first_event: float | None = None
    reading: bool = False
    dirty: bool = False  # an event arrived during the read
    dirty_immediate: bool = False
    attempts: int = 0  # re-reads of the same torn version
    torn: tuple[int, Version] | None = None


class ProgressWatch:
    """One request's view of its progress file; `with` registers it, leaving unregisters it."""

    def __init__(self, monitor: ProgressMonitor, request_id: str, response_dir: str) -> None:
        self.request_id = request_id
        self.response_dir = response_dir
        self._monitor = monitor
        self._key = ""  # the resolved directory, set on registration
        self._closed = False
        self._newest: ProgressUpdate | None = None
        self._problem: str | None = None
        self._arrived = asyncio.Event()
        self._listeners: list[Callable[[], object]] = []
        self._last: tuple[int, Version] | None = None
        self._last_stamp = -1
        self._last_content: tuple[int, bytes] | None = None
        self._refusals: dict[str, int] = {}  # by reason: only the first is logged as a warning

    def __enter__(self) -> ProgressWatch:
        self._monitor._register(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._monitor._unregister(self)
        self._closed = True
        self._signal()

    async def next_update(self) -> ProgressUpdate:
        """Wait for an update not yet returned; the newest when several arrived. Safe to cancel."""
        while True:
            update = self.pending()
            if update is not None:
                return update
            if self._closed:
                raise ProgressMonitorError(f"progress watch of request {self.request_id} is closed")
            self._arrived.clear()
            await self._arrived.wait()

    def on_arrival(self, listener: Callable[[], object]) -> None:
        """Call `listener` once, at the next update or when the watch closes (at once if it is
        closed): a wait on several things at once needs no task of its own. `forget` undoes it."""
        if self._closed:
            listener()
        else:
            self._listeners.append(listener)

    def forget(self, listener: Callable[[], object]) -> None:
        """Drop `listener` if `on_arrival` still holds it."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _signal(self) -> None:
        self._arrived.set()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()

    def pending(self) -> ProgressUpdate | None:
        """The newest update not yet returned, now (and marks it returned), or None."""
        update, self._newest = self._newest, None
        return update

    def take_problem(self) -> str | None:
        """The newest rejection of the progress file since the last call, then cleared."""
        problem, self._problem = self._problem, None
        return problem

    def _offer(self, read: FileRead, path: str, metrics: WorkerMetrics) -> None:
        marker = (read.mtime_ns, read.version)
        if (
            self._last is not None
            and read.mtime_ns
            and (read.mtime_ns < self._last[0] or marker == self._last)
        ):
            return  # not newer than the version already processed
        self._last = marker
        if read.outcome == UPDATE:
            content = (read.percent, read.body)
            if content == self._last_content:
                return  # rewritten with the same percent and partial response: not news
            self._last_content = content
            self._last_stamp = max(read.mtime_ns, self._last_stamp + 1)
            self._newest = ProgressUpdate(read.percent, read.body, self._last_stamp)
            self._signal()
            metrics.progress_updates.inc()
            return
        self._problem = read.problem
        metrics.progress_rejected.labels(read.reason).inc()
        # A function refused once is usually refused at every write: warn once per reason and
        # request, the rest at DEBUG; the metric counts them all.
        refusals = self._refusals[read.reason] = self._refusals.get(read.reason, 0) + 1
        logger.log(
            logging.WARNING if refusals == 1 else logging.DEBUG,
            "progress file refused" if refusals == 1 else "progress file refused again",
            extra={"request_id": self.request_id, "reason": read.reason, "problem": read.problem,
                   "path": path, "refusals": refusals},
        )  # fmt: skip


class ProgressMonitor:
    """Watches `base_dir` (recursively, one observer) for the life of its `async with` block.

    Events are debounced by `debounce` seconds of quiet per file (a close after writing or a
    rename into place is read at once); files are read off the loop, at most 250,000 bytes.
    `source` picks the watcher: `auto` (inotify where the system has it, else watchdog),
    `inotify` or `watchdog`.
    """

    def __init__(
        self,
        base_dir: Path,
        metrics: WorkerMetrics,
        *,
        debounce: float = 0.025,
        source: str = "auto",
    ) -> None:
        if not debounce >= 0:  # also refuses NaN
            raise ValueError(f"debounce must not be negative, not {debounce!r}")
        if source not in ("auto", "inotify", "watchdog"):
            raise ValueError(f"source must be auto, inotify or watchdog, not {source!r}")
        self._source = source
        self._events: DirectoryEvents | None = None
        self._running = False
        self._base_dir = Path(base_dir)
        self._base_dir_text = os.fspath(self._base_dir)
        self._metrics = metrics
        self._debounce = debounce
        self._base = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: BaseObserver | None = None
        self._by_id: dict[str, ProgressWatch] = {}
        self._by_dir: dict[str, ProgressWatch] = {}
        self._files: dict[str, _FileState] = {}
        self._reads: set[asyncio.Task[FileRead | None]] = set()

    @property
    def watched(self) -> int:
        """Requests currently watched."""
        return len(self._by_id)

    @property
    def source(self) -> str:
        """The watcher in use: `inotify` or `watchdog` (`auto` before the start)."""
        return self._source

    async def __aenter__(self) -> ProgressMonitor:
        if self._running:
            raise ProgressMonitorError("the progress monitor is already running")
        self._loop = asyncio.get_running_loop()
        use_inotify = self._source == "inotify" or (self._source == "auto" and inotify_available())
        try:
            if use_inotify:
                self._base = await asyncio.to_thread(self._make_base)
                try:
                    self._events = DirectoryEvents(self._base, self._on_file)
                    self._events.open()
                except OSError as error:
                    if self._source == "inotify":
                        raise
                    logger.warning(  # e.g. out of inotify instances: watchdog polls then
                        "inotify unavailable; watching progress files with watchdog",
                        extra={"error": str(error)},
                    )
                    self._events, use_inotify = None, False
            if not use_inotify:
                self._base, self._observer = await asyncio.to_thread(
                    self._start_observer, self._loop
                )
        except OSError as error:
            raise ProgressMonitorError(
                f"cannot watch {self._base_dir} for progress files: {error}"
            ) from error
        self._source = "inotify" if use_inotify else "watchdog"
        self._running = True
        logger.info("watching progress files", extra={"path": self._base, "source": self._source})
        return self

    def _make_base(self) -> str:
        self._base_dir.mkdir(parents=True, exist_ok=True)
        return os.path.realpath(self._base_dir)

    def _on_file(self, path: str, immediate: bool) -> None:
        """An inotify event (in the loop): only files named `progress` matter."""
        if os.path.basename(path) == PROGRESS_FILE_NAME:
            self._on_event(path, immediate)

    def _start_observer(self, loop: asyncio.AbstractEventLoop) -> tuple[str, BaseObserver]:
        from nvcf_sidecar.worker.progress_watchdog import start_observer

        base = self._make_base()
        return base, start_observer(base, loop, self._on_event)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        observer, self._observer = self._observer, None
        events, self._events = self._events, None
        self._running = False
        if events is not None:
            events.close()
        for state in self._files.values():
            if state.timer is not None:
                state.timer.cancel()
        self._files.clear()
        for task in self._reads:
            task.cancel()
        if self._reads:
            await asyncio.wait(self._reads, timeout=STOP_TIMEOUT)
        self._reads.clear()
        if observer is not None:
            from nvcf_sidecar.worker.progress_watchdog import stop_observer

            await asyncio.to_thread(stop_observer, observer, STOP_TIMEOUT)

    def watch(self, request_id: str, response_dir: str | os.PathLike[str]) -> ProgressWatch:
        """A watch for `request_id`, whose progress file is `<response_dir>/progress`."""
        return ProgressWatch(self, request_id, os.fspath(response_dir))

    def _register(self, watch: ProgressWatch) -> None:
        if not self._running:
            raise ProgressMonitorError("the progress monitor is not running")
        key, in_base = self._key_of(watch.response_dir)
        if not in_base and (
            key == self._base or os.path.commonpath([key, self._base]) != self._base
        ):
            raise ProgressMonitorError(
                f"response directory {watch.response_dir} is not inside {self._base}"
            )
        if watch.request_id in self._by_id or key in self._by_dir:
            raise ProgressMonitorError(
                f"request {watch.request_id} or directory {key} is already watched"
            )
        watch._key = key
        self._by_id[watch.request_id] = watch
        self._by_dir[key] = watch
        if in_base and self._events is not None:
            self._events.watch_directory(key)  # now, not when the base's event is read
        path = os.path.join(key, PROGRESS_FILE_NAME)
        if os.path.lexists(path):  # written before the watch: read it once now
            self._on_event(path, True)

    def _key_of(self, directory: str) -> tuple[str, bool]:
        """The real path of a request directory, and whether it is known to lie directly in the
        base: for `<base dir>/<name>` that is a directory (not a link), the real base joined
        with the name, from one lstat; else `os.path.realpath` (and False: check it)."""
        parent, name = os.path.split(directory)
        if parent == self._base_dir_text and name not in ("", ".", ".."):
            try:
                if stat.S_ISDIR(os.lstat(directory).st_mode):
                    return os.path.join(self._base, name), True
            except OSError:
                pass
        return os.path.realpath(directory), False

    def _unregister(self, watch: ProgressWatch) -> None:
        if self._by_id.get(watch.request_id) is watch:
            del self._by_id[watch.request_id]
        if self._by_dir.get(watch._key) is watch:
            del self._by_dir[watch._key]

    def _on_event(self, path: str, immediate: bool) -> None:
        if not self._running:
            return
        parent = os.path.dirname(path)
        if parent not in self._by_dir and os.path.dirname(parent) != self._base:
            return  # an output file of that name deeper in a response directory
        state = self._files.setdefault(path, _FileState())
        if state.reading:
            state.dirty = True
            state.dirty_immediate |= immediate
        else:
            self._arm(path, state, immediate=immediate)

    def _arm(self, path: str, state: _FileState, *, immediate: bool) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if state.first_event is None:
            state.first_event = now
        latest = state.first_event + self._debounce * MAX_WAIT_FACTOR - now
        delay = 0.0 if immediate else max(0.0, min(self._debounce, latest))
        if state.timer is not None:
            state.timer.cancel()
        state.timer = self._loop.call_later(delay, self._start_read, path, state)

    def _start_read(self, path: str, state: _FileState) -> None:
        assert self._loop is not None
        state.timer, state.first_event, state.reading = None, None, True
        task = self._loop.create_task(asyncio.to_thread(read_progress_file, path))
        self._reads.add(task)
        task.add_done_callback(lambda done: self._read_done(path, state, done))

    def _read_done(self, path: str, state: _FileState, task: asyncio.Task[FileRead | None]) -> None:
        self._reads.discard(task)
        state.reading = False
        if task.cancelled() or not self._running or self._loop is None:
            return
        read: FileRead | None = None
        if (error := task.exception()) is not None:
            logger.error("reading a progress file failed", exc_info=error, extra={"path": path})
        else:
            read = task.result()
        if read is not None and read.outcome == TORN and not state.dirty:
            if (read.mtime_ns, read.version) != state.torn:  # changed since: a fresh budget
                state.torn, state.attempts = (read.mtime_ns, read.version), 0
            if state.attempts < len(RETRY_DELAYS):
                delay = RETRY_DELAYS[state.attempts]
                state.attempts += 1
                state.timer = self._loop.call_later(delay, self._start_read, path, state)
                return
            read = refuse("malformed", read.problem, read.mtime_ns, read.version)
        if read is not None and read.outcome != TORN:
            state.torn, state.attempts = None, 0
            self._deliver(path, read)
        if state.dirty:
            state.dirty = False
            self._arm(path, state, immediate=state.dirty_immediate)
            state.dirty_immediate = False
        elif state.timer is None:
            self._files.pop(path, None)

    def _deliver(self, path: str, read: FileRead) -> None:
        by_dir = self._by_dir.get(os.path.dirname(path))
        by_id = self._by_id.get(read.request_id) if read.request_id is not None else None
        # NVIDIA routes by `id`; a file whose `id` names no watched request goes by its directory.
        watch = by_id or by_dir
        if watch is None:
            self._metrics.progress_rejected.labels("unknown_request").inc()
            logger.debug(
                "progress file of no watched request",
                extra={"request_id": read.request_id, "path": path},
            )
            return
        if by_dir is not None and watch is not by_dir:
            logger.debug(
                "progress file routed by its id to another request",
                extra={"request_id": watch.request_id, "path": path},
            )
        watch._offer(read, path, self._metrics)
