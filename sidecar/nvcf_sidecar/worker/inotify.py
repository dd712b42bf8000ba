"""Linux inotify read by the event loop itself: the progress monitor's event source where the
kernel has it (watchdog's observer thread elsewhere).

One inotify descriptor watches a base directory and each directory directly inside it, as
NVIDIA's worker watches the response base dir and the request directories it adds. Events are
read in the loop's own callback: no thread, no queue, one `read()` for many events. A directory
created inside the base gets its watch at once; a file that was written into it before the watch
existed is reported then (the kernel cannot).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["DirectoryEvents", "inotify_available"]

logger = logging.getLogger(__name__)

_IN_MODIFY: Final = 0x2
_IN_CLOSE_WRITE: Final = 0x8
_IN_MOVED_TO: Final = 0x80
_IN_CREATE: Final = 0x100
_IN_Q_OVERFLOW: Final = 0x4000
_IN_IGNORED: Final = 0x8000
_IN_ONLYDIR: Final = 0x01000000
_IN_ISDIR: Final = 0x40000000
_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC
_BASE_MASK: Final = _IN_CREATE | _IN_MOVED_TO | _IN_ONLYDIR
_CHILD_MASK: Final = _IN_CREATE | _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_ONLYDIR
_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE: Final = 64 * 1024

FileEvent = Callable[[str, bool], None]
"""(path of a file inside a child directory, whole: closed after writing or moved in)."""


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    if not all(
        hasattr(libc, n) for n in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch")
    ):
        return None
    libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    return libc


_LIBC: Final = _libc()


def inotify_available() -> bool:
    """Whether this system has inotify (Linux)."""
    return _LIBC is not None


class DirectoryEvents:
    """Files created, written, closed or moved in inside the directories directly in `base`.

    `open()` on the running loop starts it, `close()` stops it; `on_file` is called in the loop.
    OSError when inotify is missing or out of descriptors/watches.
    """

    def __init__(self, base: str, on_file: FileEvent) -> None:
        self._base = base
        self._on_file = on_file
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paths: dict[int, str] = {}  # watch descriptor -> directory
        self._children: dict[str, int] = {}  # directory in the base -> its watch descriptor
        self._base_wd = -1

    def open(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this system")
        fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        self._fd = fd
        try:
            self._base_wd = self._add(self._base, _BASE_MASK)
            self._scan()
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(fd, self._read)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        os.close(self._fd)
        self._fd = -1
        self._paths.clear()
        self._children.clear()

    def watch_directory(self, path: str) -> None:
        """Watch `path`, a directory directly in the base, now: its creator need not wait for
        the base's event. Files already in it are not reported (the caller looks for the ones
        it wants); a failure is logged, and the base's event tries again."""
        if self._fd >= 0:
            self._add_child(path)

    def drain(self) -> None:
        """Handle the events the kernel holds now, without waiting for the loop."""
        if self._fd >= 0:
            self._read()

    # -- inside ------------------------------------------------------------------------------

    def _add(self, path: str, mask: int) -> int:
        assert _LIBC is not None
        wd = int(_LIBC.inotify_add_watch(self._fd, os.fsencode(path), mask))
        if wd < 0:
            raise _os_error(f"inotify_add_watch {path}")
        self._paths[wd] = path
        return wd

    def _watch_child(self, path: str) -> None:
        """Watch a directory of the base, then report the files it already holds; one that
        `watch_directory` already watches is left as it is."""
        if path not in self._children and self._add_child(path):
            self._report_files(path)

    def _add_child(self, path: str) -> bool:
        try:
            self._children[path] = self._add(path, _CHILD_MASK)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENOTDIR):  # gone again: nothing to do
                logger.warning(
                    "cannot watch a response directory", extra={"path": path, "error": str(error)}
                )
            return False
        return True

    def _report_files(self, directory: str) -> None:
        """Report every file `directory` holds now, as whole (the kernel may not have)."""
        try:
            names = os.listdir(directory)
        except OSError:
            return
        for name in names:
            self._on_file(os.path.join(directory, name), True)

    def _scan(self) -> None:
        """Watch every directory in the base (at start, and after the kernel dropped events)."""
        with os.scandir(self._base) as entries:
            children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for child in children:
            self._watch_child(child)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            logger.error("reading inotify events failed", extra={"error": str(error)})
            return
        offset, size, header = 0, len(data), _HEADER.size
        overflow = False
        while offset + header <= size:
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            raw = data[offset + header : offset + header + length].rstrip(b"\0")
            offset += header + length
            if mask & _IN_Q_OVERFLOW:
                overflow = True
                continue
            if mask & _IN_IGNORED:  # the directory was removed: the kernel dropped the watch
                gone = self._paths.pop(wd, None)
                if gone is not None and self._children.get(gone) == wd:
                    del self._children[gone]  # not a newer directory of the same name
                continue
            directory = self._paths.get(wd)
            if directory is None or not raw:
                continue
            path = os.path.join(directory, os.fsdecode(raw))
            if wd == self._base_wd:
                if mask & _IN_ISDIR:
                    self._watch_child(path)
            elif not mask & _IN_ISDIR:
                self._on_file(path, bool(mask & (_IN_CLOSE_WRITE | _IN_MOVED_TO)))
        if overflow:
            logger.warning("inotify queue overflowed; scanning the response directories")
            self._rescan_files()

    def _rescan_files(self) -> None:
        """After lost events: the files of the directories already watched, then the
        directories the kernel did not announce (`_scan` reports theirs)."""
        for wd, path in list(self._paths.items()):
            if wd != self._base_wd:
                self._report_files(path)
        try:
            self._scan()
        except OSError as error:
            logger.error("scanning the response directories failed", extra={"error": str(error)})


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")
