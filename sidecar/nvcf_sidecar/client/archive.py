"""Unpacking a large response (a zip behind a 302) into a directory, refusing unsafe entries.

An entry is written only when its path stays inside the directory after every existing symlink
is followed; absolute names, drive letters, backslashes and `..` are refused, never rewritten.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from nvcf_sidecar.client.errors import FunctionFailed, LocalFileError

__all__ = ["Extracted", "extract_zip", "member_path"]

_COPY_BYTES: Final = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Extracted:
    """What `extract_zip` did: the files written (in archive order) and the names refused."""

    files: tuple[Path, ...]
    refused: tuple[str, ...]


def member_path(name: str) -> PurePosixPath | None:
    """The relative path an entry name stands for, or None when it must not be written.

    Refused: empty names, absolute paths, drive letters, backslashes, NUL and any `..` part;
    empty and `.` parts are dropped (`a//./b` is `a/b`).
    """
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or _DRIVE.match(name):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return PurePosixPath(*parts)


def extract_zip(archive: Path, destination: Path) -> Extracted:
    """Write the safe entries of `archive` under `destination` (created if missing), streamed.

    Entries whose path is refused by `member_path`, or that would land outside `destination`
    through a symlink already there, are skipped and named in `Extracted.refused`. A file that is
    not a zip, or a damaged entry, raises `FunctionFailed`; a write that fails, `LocalFileError`.
    """
    try:
        destination.mkdir(parents=True, exist_ok=True)
        root = destination.resolve()
    except OSError as error:
        raise LocalFileError(f"cannot create {destination}: {error}") from error
    files: list[Path] = []
    refused: list[str] = []
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                relative = member_path(info.filename)
                target = None if relative is None else _inside(root, relative)
                if target is None:
                    refused.append(info.filename)
                elif info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(info) as source, target.open("wb") as sink:
                        shutil.copyfileobj(source, sink, _COPY_BYTES)
                    files.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise FunctionFailed(f"the large response is not a readable zip: {error}") from error
    except OSError as error:
        raise LocalFileError(f"cannot write the large response into {root}: {error}") from error
    return Extracted(tuple(files), tuple(refused))


def _inside(root: Path, relative: PurePosixPath) -> Path | None:
    """`root / relative` when it resolves inside `root`, else None."""
    target = (root / relative).resolve()
    return target if target != root and target.is_relative_to(root) else None
