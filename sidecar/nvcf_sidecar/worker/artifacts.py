"""The files a request left in its output directory, checked before they may ship in a zip (§8).

Only final regular files inside the directory ship: never the `progress` report, `*.partial`,
symlinks, special files or anything reached through a link; every refusal is logged and counted.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_worker.outputs import PARTIAL_SUFFIX, PROGRESS_FILE_NAME

__all__ = [
    "Artifact",
    "ArtifactRefused",
    "RefusalReason",
    "holds_no_outputs",
    "open_artifact",
    "record_refusal",
    "removed_if_empty",
    "scan_artifacts",
]

_DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the lstat must not block the open; fstat then refuses it.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RefusalReason(enum.StrEnum):
    """Why a file in an output directory is left out of the zip (the metric's `reason` label)."""

    #: A `*.partial` file: an output still being written.
    PARTIAL = "partial"
    #: A symbolic link, to a file or a directory, inside or outside the output directory.
    SYMLINK = "symlink"
    #: A FIFO, socket or device, or anything else that is not a regular file.
    SPECIAL = "special"
    #: The path no longer leads to a place inside the directory (a directory on it was swapped
    #: for a link after the scan).
    OUTSIDE = "outside"
    #: The file (or a directory above it) cannot be opened or read, vanished, or has a name
    #: that is not valid UTF-8 (a zip entry name must be).
    UNREADABLE = "unreadable"


class ArtifactRefused(WorkerError):
    """An output file may not ship; `reason` says why, `relative` which file."""

    def __init__(
        self, relative: str, reason: RefusalReason, detail: str, *, vanished: bool = False
    ) -> None:
        self.relative = relative
        self.reason = reason
        self.detail = detail
        self.vanished = vanished
        """True when the file (or a directory above it) no longer exists."""
        super().__init__(f"output file {relative!r} refused ({reason}): {detail}")


@dataclass(frozen=True)
class Artifact:
    """One final output file, as found by `scan_artifacts`."""

    relative: str
    """Path relative to the output directory, with POSIX separators: the zip entry name."""
    path: Path
    """The output directory joined with `relative` (for logs; open it with `open_artifact`)."""
    size: int
    """Size in bytes when scanned."""


def holds_no_outputs(response_dir: str | os.PathLike[str]) -> bool:
    """Whether `response_dir` is missing or holds nothing but the progress report: most
    requests' case, answered with one directory listing on the caller's thread instead of a
    `scan_artifacts` walk on a worker thread. False when it cannot tell (a symlink, an error):
    the full scan then reports it."""
    try:
        descriptor = os.open(response_dir, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        names = os.listdir(descriptor)
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return not names or names == [PROGRESS_FILE_NAME]


def removed_if_empty(response_dir: str | os.PathLike[str]) -> bool:
    """Remove `response_dir` if it is an empty directory, and say whether it is gone (missing
    counts): a final answer's check for outputs in one `rmdir`, and the request's clean-up
    done with it. False for anything else (files left, a symlink, an error): ask
    `holds_no_outputs` then. Only for a final answer: the container may not write there
    afterwards."""
    try:
        os.rmdir(response_dir)  # never follows a symlink: that is ENOTDIR
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def scan_artifacts(
    response_dir: str | os.PathLike[str],
    *,
    log: logging.LoggerAdapter[Any],
    metrics: WorkerMetrics,
) -> list[Artifact]:
    """The final output files under `response_dir`, sorted by relative path.

    Blocking (call it through `asyncio.to_thread`). The directory is walked through directory
    descriptors opened with O_NOFOLLOW, so no symlink is ever followed, not even one swapped in
    during the walk. The progress report (`progress` at the top; deeper, it is an ordinary
    output) is skipped silently; `*.partial` files, symlinks, special files and unreadable
    entries are refused: each refusal is logged with the request id and counted in
    `artifacts_refused`. Empty directories contribute nothing; a missing directory gives [].
    """
    base = Path(response_dir)
    try:
        root = os.open(response_dir, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        return []
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(response_dir):
            refusal = ArtifactRefused(
                ".", RefusalReason.SYMLINK, "the output directory itself is a symbolic link"
            )
        elif error.errno == errno.ENOTDIR:
            refusal = ArtifactRefused(
                ".", RefusalReason.SPECIAL, "the output directory is not a directory"
            )
        else:
            refusal = _refusal_of(".", error, directory=True)
        record_refusal(refusal, log, metrics)
        return []
    found: list[Artifact] = []
    try:
        pending: list[tuple[str, ...]] = [()]
        while pending:
            parts = pending.pop()
            try:
                directory = _open_directory_beneath(root, parts)
            except OSError as error:
                refusal = _refusal_of("/".join(parts), error, directory=True)
                if not refusal.vanished:
                    record_refusal(refusal, log, metrics)
                continue
            try:
                pending.extend(
                    _scan_directory(directory, parts, base, found, log=log, metrics=metrics)
                )
            except OSError as error:  # the listing itself failed
                record_refusal(_refusal_of("/".join(parts) or ".", error), log, metrics)
            finally:
                os.close(directory)
    finally:
        os.close(root)
    found.sort(key=lambda artifact: artifact.relative)
    return found


def open_artifact(artifact: Artifact) -> tuple[int, os.stat_result]:
    """Open `artifact` for reading and return the descriptor with its `fstat`.

    The output directory and every directory below it are opened with O_NOFOLLOW, the file
    itself with O_NOFOLLOW | O_NONBLOCK, and the opened object must be a regular file: a file or
    directory swapped for a symlink or a FIFO after the scan is refused, never followed. Raises
    `ArtifactRefused`; the caller closes the descriptor.
    """
    parts = tuple(artifact.relative.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        raise ArtifactRefused(artifact.relative, RefusalReason.OUTSIDE, "not a path below it")
    root_path = artifact.path.parents[len(parts) - 1]
    try:
        root = os.open(root_path, _DIRECTORY_FLAGS)
    except OSError as error:
        raise _refusal_of(artifact.relative, error, directory=True, moved=True) from None
    try:
        try:
            directory = _open_directory_beneath(root, parts[:-1])
        except OSError as error:
            raise _refusal_of(artifact.relative, error, directory=True, moved=True) from None
        try:
            return _open_file_at(directory, parts[-1], artifact.relative)
        finally:
            os.close(directory)
    finally:
        os.close(root)


def _scan_directory(
    directory: int,
    parts: tuple[str, ...],
    response_dir: Path,
    found: list[Artifact],
    *,
    log: logging.LoggerAdapter[Any],
    metrics: WorkerMetrics,
) -> list[tuple[str, ...]]:
    """Add the shippable files of one directory to `found`; return its sub-directories."""
    subdirectories: list[tuple[str, ...]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            relative_parts = (*parts, entry.name)
            relative = "/".join(relative_parts)
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing: nothing to ship, nothing to refuse
            except OSError as error:
                record_refusal(_refusal_of(relative, error), log, metrics)
                continue
            if stat.S_ISDIR(info.st_mode):
                subdirectories.append(relative_parts)
                continue
            if not parts and entry.name == PROGRESS_FILE_NAME:
                # The progress report; deeper down it is an ordinary output, as for the watcher.
                continue
            try:
                size = _check_file(directory, entry.name, relative, info)
            except ArtifactRefused as refusal:
                if not refusal.vanished:  # removed since the listing: nothing to ship
                    record_refusal(refusal, log, metrics)
                continue
            found.append(Artifact(relative, response_dir.joinpath(*relative_parts), size))
    return subdirectories


def _check_file(directory: int, name: str, relative: str, info: os.stat_result) -> int:
    """The size of a file that may ship, after opening it once; raises `ArtifactRefused`."""
    if stat.S_ISLNK(info.st_mode):
        raise ArtifactRefused(relative, RefusalReason.SYMLINK, "links never ship")
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactRefused(
            relative, RefusalReason.SPECIAL, f"not a regular file ({_kind(info)})"
        )
    if name.endswith(PARTIAL_SUFFIX):
        raise ArtifactRefused(
            relative, RefusalReason.PARTIAL, f"'{PARTIAL_SUFFIX}' files are still being written"
        )
    try:
        relative.encode()
    except UnicodeEncodeError:
        raise ArtifactRefused(
            relative, RefusalReason.UNREADABLE, "the file name is not valid UTF-8"
        ) from None
    descriptor, opened = _open_file_at(directory, name, relative)
    os.close(descriptor)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        raise ArtifactRefused(relative, RefusalReason.UNREADABLE, "replaced while being scanned")
    return opened.st_size


def _open_file_at(directory: int, name: str, relative: str) -> tuple[int, os.stat_result]:
    """Open `name` in `directory` without following a link; it must be a regular file."""
    try:
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except OSError as error:
        raise _refusal_of(relative, error) from None
    if stat.S_ISLNK(info.st_mode):
        raise ArtifactRefused(relative, RefusalReason.SYMLINK, "links never ship")
    if not stat.S_ISREG(info.st_mode):
        # Refused before open(): opening a device can have side effects.
        raise ArtifactRefused(
            relative, RefusalReason.SPECIAL, f"not a regular file ({_kind(info)})"
        )
    try:
        descriptor = os.open(name, _FILE_FLAGS, dir_fd=directory)
    except OSError as error:
        raise _refusal_of(relative, error) from None
    try:
        opened = os.fstat(descriptor)
    except OSError as error:
        os.close(descriptor)
        raise _refusal_of(relative, error) from None
    if not stat.S_ISREG(opened.st_mode):
        os.close(descriptor)
        raise ArtifactRefused(
            relative, RefusalReason.SPECIAL, f"not a regular file ({_kind(opened)})"
        )
    return descriptor, opened


def _open_directory_beneath(root: int, parts: Sequence[str]) -> int:
    """A new descriptor of `root/parts...`, each step opened with O_NOFOLLOW; raises OSError."""
    current = os.dup(root)
    try:
        for part in parts:
            child = os.open(part, _DIRECTORY_FLAGS, dir_fd=current)
            os.close(current)
            current = child
    except BaseException:
        os.close(current)
        raise
    return current


def _refusal_of(
    relative: str, error: OSError, *, directory: bool = False, moved: bool = False
) -> ArtifactRefused:
    """The refusal an OSError from open/stat stands for.

    O_NOFOLLOW fails with ELOOP on a symlink. When re-opening a scanned file (`moved`), a
    directory on its path that is now a link or a file means the path leads elsewhere.
    """
    code = error.errno
    if code == errno.ENOENT:
        return ArtifactRefused(relative, RefusalReason.UNREADABLE, "vanished", vanished=True)
    if code in (errno.ELOOP, errno.ENOTDIR) and moved:
        return ArtifactRefused(
            relative,
            RefusalReason.OUTSIDE,
            f"a directory on its path was replaced by a link or a file ({os.strerror(code)})",
        )
    if code in (errno.ELOOP, errno.ENOTDIR) and directory:
        # O_DIRECTORY | O_NOFOLLOW fails so on a link: the directory listed was swapped since.
        return ArtifactRefused(
            relative, RefusalReason.SYMLINK, "a directory replaced by a link; not followed"
        )
    if code == errno.ELOOP:
        return ArtifactRefused(relative, RefusalReason.SYMLINK, "links never ship")
    if code == errno.ENXIO:  # open() of a socket
        return ArtifactRefused(relative, RefusalReason.SPECIAL, "not a regular file (socket)")
    return ArtifactRefused(
        relative, RefusalReason.UNREADABLE, os.strerror(code) if code else str(error)
    )


def record_refusal(
    refusal: ArtifactRefused, log: logging.LoggerAdapter[Any], metrics: WorkerMetrics
) -> None:
    """Log a refused output file (a warning with `file` and `reason`) and count it."""
    metrics.artifacts_refused.labels(refusal.reason.value).inc()
    log.warning(
        "output file not shipped: %s",
        refusal,
        extra={"file": refusal.relative, "reason": refusal.reason.value},
    )


def _kind(info: os.stat_result) -> str:
    mode = info.st_mode
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "directory"
    return f"mode {stat.filemode(mode)}"
