"""Progress and results for NVCF Tasks (NVCT), the batch sibling of cloud functions.

A task reports `{"taskId", "percentComplete", "name", "lastUpdatedAt", "metadata"}` to the file
named by `NVCT_PROGRESS_FILE_PATH` and leaves results under `NVCT_RESULTS_DIR`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from nvcf_worker.errors import InvalidProgress, ProgressTooLarge
from nvcf_worker.outputs import open_output
from nvcf_worker.progress import MAX_PROGRESS_FILE_BYTES, _check_percent, write_file_atomically

__all__ = [
    "DEFAULT_RESULTS_DIR",
    "PROGRESS_FILE_PATH_ENV",
    "RESULTS_DIR_ENV",
    "TASK_ID_ENV",
    "TaskProgressWriter",
]

RESULTS_DIR_ENV = "NVCT_RESULTS_DIR"
PROGRESS_FILE_PATH_ENV = "NVCT_PROGRESS_FILE_PATH"
TASK_ID_ENV = "NVCT_TASK_ID"
#: Where the task runtime mounts results when `NVCT_RESULTS_DIR` is not set.
DEFAULT_RESULTS_DIR = Path("/var/task/results")


class TaskProgressWriter:
    """Writes the NVCF Tasks progress file atomically and opens result files safely.

    Everything defaults to the task runtime's environment variables; pass values to override.
    """

    def __init__(
        self,
        *,
        task_id: str | None = None,
        progress_file: str | os.PathLike[str] | None = None,
        results_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.task_id = task_id if task_id is not None else env.get(TASK_ID_ENV, "")
        self.results_dir = Path(
            results_dir
            if results_dir is not None
            else env.get(RESULTS_DIR_ENV, DEFAULT_RESULTS_DIR)
        )
        self.progress_file = Path(
            progress_file
            if progress_file is not None
            else env.get(PROGRESS_FILE_PATH_ENV, self.results_dir / "progress")
        )

    def encode(
        self, percent: int, *, name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> bytes:
        """Encode one report; `lastUpdatedAt` is now, in RFC 3339 with nanosecond digits."""
        value = _check_percent(percent)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidProgress(f"metadata must be a JSON object, not {type(metadata).__name__}")
        now = datetime.now(UTC)
        document: dict[str, Any] = {
            "taskId": self.task_id,
            "percentComplete": value,
            "lastUpdatedAt": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond * 1000:09d}Z",
        }
        if name is not None:
            document["name"] = name
        if metadata is not None:
            document["metadata"] = metadata if isinstance(metadata, dict) else dict(metadata)
        try:
            encoded = json.dumps(
                document, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidProgress(f"metadata is not JSON-serialisable: {exc}") from None
        if len(encoded) >= MAX_PROGRESS_FILE_BYTES:
            raise ProgressTooLarge(len(encoded), MAX_PROGRESS_FILE_BYTES)
        return encoded

    def report(
        self, percent: int, *, name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Atomically replace the progress file; `name` names the result folder to upload."""
        write_file_atomically(
            self.progress_file, self.encode(percent, name=name, metadata=metadata)
        )
        return self.progress_file

    def open_result(self, name: str, mode: str = "wb") -> AbstractContextManager[IO[Any]]:
        """Open a result file under `results_dir` with the `.partial`-then-rename guarantee."""
        return open_output(self.results_dir, name, mode)
