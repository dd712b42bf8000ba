"""Where local instances keep their per-request directories (`BASE_RESPONSE_DIR`, `BASE_ASSET_DIR`).

A sidecar makes and removes one directory per request. On a disk file system each `mkdir` and
`rmdir` is a journaled metadata write: about 60 µs each on the reference machine, a fifth of the
sidecar's CPU per request. On tmpfs they cost a few µs. So local instances get these directories
in a fresh directory on `/dev/shm` when it has room for large outputs (2 GiB free; a container's
default `/dev/shm` of 64 MiB has not), else under the work directory. `NVCF_SCRATCH_DIR=PATH`
chooses the directory instead (a disk path keeps them on disk); it is created if missing, and one
that cannot be written is a `ConfigError` at start, naming the variable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

from nvcf_platform.errors import ConfigError

__all__ = ["MIN_FREE_BYTES", "SCRATCH_ENV", "Scratch"]

SCRATCH_ENV: Final = "NVCF_SCRATCH_DIR"
MIN_FREE_BYTES: Final = 2 * 1024**3
_SHM: Final = Path("/dev/shm")


def _roomy(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize >= MIN_FREE_BYTES and os.access(directory, os.W_OK)


class Scratch:
    """The root of the per-request directories: chosen by `open`, removed by `close` only when
    `open` made it (a directory on /dev/shm)."""

    def __init__(self, root: Path, *, owned: bool = False) -> None:
        self.root = root
        self.owned = owned

    def __repr__(self) -> str:
        return f"<Scratch {self.root} owned={self.owned}>"

    @classmethod
    def open(cls, fallback: Path, *, memory: Path = _SHM) -> Scratch:
        """`NVCF_SCRATCH_DIR` when set (created if missing; ConfigError when it cannot be, or
        cannot be written); else a new directory in `memory` when it has `MIN_FREE_BYTES` free
        and is writable; else `fallback`."""
        chosen = os.environ.get(SCRATCH_ENV)
        if chosen:
            root = Path(chosen)
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(
                    f"{SCRATCH_ENV}={chosen}: cannot create it: {error.strerror or error}"
                ) from None
            if not os.access(root, os.W_OK | os.X_OK):
                raise ConfigError(f"{SCRATCH_ENV}={chosen}: not writable")
            return cls(root)
        if memory.is_dir() and _roomy(memory):
            try:
                return cls(Path(tempfile.mkdtemp(prefix="nvcf-", dir=memory)), owned=True)
            except OSError:
                pass
        return cls(fallback)

    def close(self) -> None:
        """Remove the root when `open` made it (whatever is left in it); idempotent."""
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
            self.owned = False
