"""One progress file (§7) read and checked: what a single version of `<reqid>/progress` says.

Beyond NVIDIA's reader: symbolic links are never followed, a file over 250,000 bytes or malformed
is refused with a problem that says what is wrong, a fractional percent is relayed rounded down,
and the NVCF Tasks form is accepted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Any, Final

import orjson

from nvcf_worker.progress import MAX_PROGRESS_FILE_BYTES

__all__ = ["REJECTED", "TORN", "UPDATE", "FileRead", "Version", "read_progress_file", "refuse"]

UPDATE: Final = "update"
REJECTED: Final = "rejected"
TORN: Final = "torn"
"""Empty, changing or not JSON: maybe caught mid-write, so worth reading again."""
Version = tuple[int, bytes]
"""(size, digest): tells apart versions that share an mtime."""

_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_JSON_TYPES: Final[dict[type, str]] = {
    dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"
}  # fmt: skip
_SYMLINK_PROBLEM: Final = "progress file is a symbolic link; links are not followed"
_NON_FINITE_PROBLEM: Final = "NaN and Infinity are not JSON numbers (Python's json writes them)"
_NON_FINITE_TOKENS: Final = (b"NaN", b"Infinity", b"-Infinity")


@dataclass(frozen=True, slots=True)
class FileRead:
    """How one read of a progress file ended: an update, a refusal, or a torn version."""

    outcome: str
    mtime_ns: int = 0
    version: Version = (0, b"")
    request_id: str | None = None
    percent: int = 0
    body: bytes = b""
    reason: str = ""  # the `progress_rejected` label
    problem: str = ""


def refuse(reason: str, problem: str, mtime_ns: int = 0, version: Version = (0, b"")) -> FileRead:
    """A refusal counted under `reason`, reported to the request as `problem`."""
    return FileRead(REJECTED, mtime_ns, version, reason=reason, problem=problem)


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), "a number")


def _percent(document: dict[str, Any], field: str) -> int:
    """A number from 0 to 100, relayed as its integer part: 55.5 is 55 (NVIDIA's worker drops a
    file whose percent is not an unsigned integer; functions that compute it get floats)."""
    if field not in document:
        raise ValueError(f"{field!r} is missing")
    value = document[field]
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return int(value)  # truncation is the floor here; orjson never yields NaN or infinity
    scalar = isinstance(value, int | float | str) and not isinstance(value, bool)
    shown = repr(value)[:80] if scalar else _json_type(value)
    raise ValueError(f"{field!r} must be a number from 0 to 100, not {shown}")


def _object(document: dict[str, Any], field: str) -> bytes:
    value = document.get(field)
    if value is None:
        return b"{}"
    if not isinstance(value, dict):
        raise ValueError(f"{field!r} must be a JSON object, not {_json_type(value)}")
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as error:  # e.g. nested deeper than orjson writes
        raise ValueError(f"{field!r} cannot be re-encoded ({error})") from None


def _parse(document: object) -> tuple[str | None, int, bytes]:
    """(request id, percent, body) of a parsed progress document; ValueError says what is wrong."""
    if not isinstance(document, dict):
        raise ValueError(f"progress file must hold a JSON object, not {_json_type(document)}")
    if "progress" in document or "id" in document:  # NVCF form
        request_id = document.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise ValueError(f"'id' must be a string, not {_json_type(request_id)}")
        return request_id, _percent(document, "progress"), _object(document, "partialResponse")
    if "percentComplete" in document:  # NVCF Tasks form: `taskId` is no request id
        return None, _percent(document, "percentComplete"), _object(document, "metadata")
    raise ValueError("progress file has neither 'progress' (NVCF) nor 'percentComplete' (NVCT)")


def read_progress_file(path: str) -> FileRead | None:
    """Read and check one progress file, following no link and loading at most the limit + 1
    bytes; None when it (or its directory) is gone. Runs in a worker thread."""
    directory, name = os.path.split(path)
    try:
        dir_fd = os.open(directory, _DIR_FLAGS)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)  # O_NONBLOCK: a FIFO cannot hang us
        except OSError as error:
            if isinstance(error, FileNotFoundError):
                raise
            if error.errno in (errno.ELOOP, errno.EMLINK):  # no mtime: reported at each event
                return refuse("malformed", _SYMLINK_PROBLEM)
            return refuse("unreadable", f"progress file could not be read ({error.strerror})")
        finally:
            os.close(dir_fd)
        try:
            return _read_open_file(fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        return refuse("unreadable", f"progress file could not be read ({error.strerror})")


def _read_open_file(fd: int) -> FileRead:
    before = os.fstat(fd)
    mtime = before.st_mtime_ns
    if not stat.S_ISREG(before.st_mode):
        return refuse("malformed", "progress file is not a regular file", mtime)
    if before.st_size > MAX_PROGRESS_FILE_BYTES:
        return refuse("too_large", _too_large(before.st_size), mtime, (before.st_size, b""))
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_PROGRESS_FILE_BYTES and (
        chunk := os.read(fd, MAX_PROGRESS_FILE_BYTES + 1 - size)
    ):
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    version = (size, hashlib.blake2b(data, digest_size=16).digest())
    if size > MAX_PROGRESS_FILE_BYTES:  # it grew while being read
        return refuse("too_large", _too_large(os.fstat(fd).st_size), mtime, version)
    after = os.fstat(fd)
    if (after.st_mtime_ns, after.st_size) != (mtime, size):
        return FileRead(TORN, mtime, version, problem="progress file kept changing")
    if not data:
        return FileRead(TORN, mtime, version, problem="progress file is empty")
    try:
        request_id, percent, body = _parse(orjson.loads(data))
    except orjson.JSONDecodeError as error:
        problem = f"progress file is not valid JSON ({error})"
        if _non_finite(data, error):  # a whole file, not one caught mid-write: refuse it now
            return refuse("malformed", f"{problem}; {_NON_FINITE_PROBLEM}", mtime, version)
        return FileRead(TORN, mtime, version, problem=problem)
    except ValueError as error:
        return refuse("malformed", str(error), mtime, version)
    return FileRead(UPDATE, mtime, version, request_id, percent, body)


def _non_finite(data: bytes, error: orjson.JSONDecodeError) -> bool:
    """Whether parsing stopped at NaN or +-Infinity, or at a number too large for a double."""
    return data.startswith(_NON_FINITE_TOKENS, error.pos) or "infinity" in error.msg


def _too_large(size: int) -> str:
    return f"progress file of {size} bytes exceeds the {MAX_PROGRESS_FILE_BYTES}-byte limit"
