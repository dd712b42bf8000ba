"""The per-request directories: `<BASE_RESPONSE_DIR>/<reqid>` and `<BASE_ASSET_DIR>/<reqid>`.

Created world-writable like NVIDIA's worker (the container may run as any user and must write its
outputs there), removed when the request ends, whatever is left in them.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Final

__all__ = ["DIRECTORY_MODE", "create_request_directory", "remove_request_directory"]

DIRECTORY_MODE: Final = 0o777


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK: Final = _read_umask()  # read once at import, before any request thread exists


def create_request_directory(path: str | os.PathLike[str]) -> None:
    """Create `path` with mode 0777 (the base too, if missing); an existing one is fine.

    Raises OSError when it cannot be created.
    """
    # One mkdir in the common case (the base exists); makedirs only for a missing base.
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileNotFoundError:
        os.makedirs(path, mode=DIRECTORY_MODE, exist_ok=True)
    except FileExistsError:
        pass
    if _UMASK & DIRECTORY_MODE:
        os.chmod(path, DIRECTORY_MODE)  # mkdir's mode is narrowed by the umask


def remove_request_directory(path: str | os.PathLike[str], log: logging.LoggerAdapter[Any]) -> None:
    """Remove `path` and everything in it; a missing one is fine. Never raises (logs instead)."""
    # Most containers write nothing: one rmdir, and the tree walk only when files are left.
    try:
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot remove %s: %s", path, error)
