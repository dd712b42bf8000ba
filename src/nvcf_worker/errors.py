"""The exception hierarchy of the in-container library.

Every error raised on purpose by `nvcf_worker` derives from `NVCFWorkerError`, and each one says
which input was wrong and with which value.
"""

from __future__ import annotations

__all__ = [
    "AssetNotFound",
    "InvalidHeader",
    "InvalidOutputName",
    "InvalidProgress",
    "NVCFWorkerError",
    "ProgressTooLarge",
    "SecretsError",
    "SecretsNotFound",
]


class NVCFWorkerError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidHeader(NVCFWorkerError, ValueError):
    """An `NVCF-*` header (or Triton request parameter) carries a value the contract forbids."""

    def __init__(self, header: str, value: object, reason: str) -> None:
        self.header = header
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {header} header {value!r}: {reason}")


class InvalidOutputName(NVCFWorkerError, ValueError):
    """An output file name would escape the output directory or clash with a reserved name."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid output name {name!r}: {reason}")


class ProgressTooLarge(NVCFWorkerError, ValueError):
    """The encoded progress file would reach the platform's size limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"progress file would be {size} bytes; it must stay below {limit} bytes "
            "(shrink partial_response, or write the data as an output file)"
        )


class SecretsError(NVCFWorkerError):
    """The NVCF secrets file is missing, unreadable or not a JSON object."""


class SecretsNotFound(SecretsError, FileNotFoundError):
    """There is no secrets file (also a `FileNotFoundError`, as NVIDIA's helper raises)."""


class InvalidProgress(NVCFWorkerError, ValueError):
    """A progress value is not an integer from 0 to 100, or the partial response is not an object."""


class AssetNotFound(NVCFWorkerError, FileNotFoundError):
    """An asset id the request declares has no file in the asset directory."""

    def __init__(self, asset_id: str, directory: object) -> None:
        self.asset_id = asset_id
        self.directory = directory
        super().__init__(
            f"asset {asset_id!r} is declared by the request but missing in {directory}"
        )
