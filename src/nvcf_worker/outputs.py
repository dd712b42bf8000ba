"""Output files in the large-output directory, written so the worker never ships half a file.

Each output is written as `<name>.partial`, flushed and fsynced, then renamed to `<name>`; the
worker ignores `*.partial` files, so a reader sees either nothing or the whole file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from nvcf_worker.errors import InvalidOutputName

__all__ = [
    "PARTIAL_SUFFIX",
    "PROGRESS_FILE_NAME",
    "open_output",
    "validate_output_name",
    "write_output",
]

PARTIAL_SUFFIX = ".partial"
PROGRESS_FILE_NAME = "progress"
_MAX_NAME_BYTES = 255

_OPEN_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_TRUNC
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def validate_output_name(name: str) -> PurePosixPath:
    """Check an output name and return it as a relative path.

    Sub-directories are allowed (`images/0.png`); absolute paths, `..`, empty or `.` segments,
    back-slashes, NUL bytes, the reserved name `progress` and names ending in `.partial` are not.
    """
    if not isinstance(name, str) or not name:
        raise InvalidOutputName(name, "must be a non-empty string")
    if "\x00" in name or "\\" in name:
        raise InvalidOutputName(name, "must not contain NUL or back-slash characters")
    if name.startswith("/"):
        raise InvalidOutputName(name, "must be relative to the output directory")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidOutputName(name, "must not contain empty, '.' or '..' segments")
        try:
            size = len(part.encode())
        except UnicodeEncodeError:
            raise InvalidOutputName(name, "is not valid UTF-8") from None
        if size + len(PARTIAL_SUFFIX) > _MAX_NAME_BYTES:
            raise InvalidOutputName(name, f"a segment is longer than {_MAX_NAME_BYTES} bytes")
    if parts[0] == PROGRESS_FILE_NAME:
        raise InvalidOutputName(name, "'progress' is reserved for progress reports")
    if parts[-1].endswith(PARTIAL_SUFFIX):
        raise InvalidOutputName(name, "names ending in '.partial' are never shipped")
    return PurePosixPath(name)


def _prepare_target(output_dir: Path, name: str) -> Path:
    relative = validate_output_name(name)
    output_dir.mkdir(parents=True, exist_ok=True)
    root = output_dir.resolve()
    # Walk the sub-directories one at a time and create each only once its parent is known to be
    # inside the output directory: a symlinked sub-directory must not lead us to mkdir outside.
    current = output_dir
    for part in relative.parts[:-1]:
        current = current / part
        if current.is_symlink() or current.exists():
            resolved = current.resolve()
            if resolved != root and root not in resolved.parents:
                raise InvalidOutputName(name, "resolves outside the output directory")
            if not resolved.is_dir():
                raise InvalidOutputName(name, f"{part!r} exists and is not a directory")
        else:
            current.mkdir(exist_ok=True)
    return output_dir / relative


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


@contextmanager
def open_output(
    output_dir: str | os.PathLike[str], name: str, mode: str = "wb", *, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open `<output_dir>/<name>` for writing, atomically.

    Writes go to `<name>.partial`; on a clean exit the file is flushed, fsynced and renamed to
    `<name>`; on an exception the partial file is removed and the exception propagates.
    `mode` is `"wb"` (bytes) or `"w"` (text in `encoding`). Symlinks are never followed, and
    the block must not close the stream itself.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', not {mode!r}")
    target = _prepare_target(Path(output_dir), name)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    fd = os.open(partial, _OPEN_FLAGS, 0o644)
    raw = os.fdopen(fd, "wb")
    stream: IO[Any] = raw if mode == "wb" else io.TextIOWrapper(raw, encoding=encoding)
    try:
        yield stream
        stream.flush()
        os.fsync(raw.fileno())
    except BaseException:
        stream.close()
        partial.unlink(missing_ok=True)
        raise
    stream.close()
    os.replace(partial, target)
    _fsync_dir(target.parent)


def write_output(output_dir: str | os.PathLike[str], name: str, data: bytes | str) -> Path:
    """Write a whole output file atomically; returns the final path."""
    if isinstance(data, str):
        with open_output(output_dir, name, "w") as stream:
            stream.write(data)
    else:
        with open_output(output_dir, name, "wb") as stream:
            stream.write(data)
    return Path(output_dir) / name
