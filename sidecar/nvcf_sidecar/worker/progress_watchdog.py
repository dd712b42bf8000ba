"""The progress monitor's watcher where inotify is not read by the loop: watchdog's observer
thread, which hands events on files named `progress` to the loop.

Its own module so that watchdog (about 1 MiB of resident imports) is loaded only when this
watcher is used: on Linux the monitor reads inotify itself (`inotify.DirectoryEvents`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Final

from watchdog import events
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from nvcf_worker.outputs import PROGRESS_FILE_NAME

__all__ = ["start_observer", "stop_observer"]

logger = logging.getLogger(__name__)

_EVENTS: Final[list[type[events.FileSystemEvent]]] = [
    events.FileCreatedEvent, events.FileModifiedEvent, events.FileClosedEvent, events.FileMovedEvent
]  # fmt: skip


class _EventForwarder(events.FileSystemEventHandler):
    """On watchdog's thread: hands events on files named `progress` to the loop, drops the rest."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_event: Callable[[str, bool], None]
    ) -> None:
        self._loop = loop
        self._on_event = on_event

    def dispatch(self, event: events.FileSystemEvent) -> None:
        moved = event.event_type == events.EVENT_TYPE_MOVED
        path = os.fsdecode(event.dest_path if moved else event.src_path)
        if event.is_directory or os.path.basename(path) != PROGRESS_FILE_NAME:
            return
        # A closed-after-write or renamed-into file is whole: read it now; other events debounce.
        immediate = moved or event.event_type == events.EVENT_TYPE_CLOSED
        try:
            self._loop.call_soon_threadsafe(self._on_event, path, immediate)
        except RuntimeError:
            logger.debug("progress event after the event loop closed", extra={"path": path})


def start_observer(
    base: str, loop: asyncio.AbstractEventLoop, on_event: Callable[[str, bool], None]
) -> BaseObserver:
    """A started observer of `base` (recursive) calling `on_event(path, immediate)` in `loop`;
    blocking, so run it off the loop."""
    observer = Observer()
    try:
        observer.schedule(
            _EventForwarder(loop, on_event), base, recursive=True, event_filter=_EVENTS
        )
        observer.start()
    except BaseException:
        observer.stop()
        raise
    return observer


def stop_observer(observer: BaseObserver, timeout: float) -> None:
    """Stop `observer` and wait up to `timeout` seconds for its thread; blocking."""
    observer.stop()
    observer.join(timeout)
    if observer.is_alive():
        logger.warning("the progress watcher did not stop in time", extra={"timeout": timeout})
