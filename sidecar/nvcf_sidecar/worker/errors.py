"""The root of the sidecar's exceptions, and the error families several of its modules share.

Every exception class defined in `nvcf_sidecar.worker` derives from `WorkerError`, so the process
edge can tell the sidecar's own failures from everything else with one `except`.
"""

from __future__ import annotations

__all__ = ["ConsumerError", "WorkerError"]


class WorkerError(Exception):
    """Base class of every error the sidecar raises."""


class ConsumerError(WorkerError):
    """Base class of the work-queue consumer's errors (binding, pulling)."""
