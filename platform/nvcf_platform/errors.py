"""The exception hierarchy of the local platform.

Everything the platform raises on purpose derives from `PlatformError`; at the HTTP and gRPC edges
these become problem+json answers and status codes, never silent failures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the object store imports its errors from here
    from nvcf_platform.objects.objects import Bucket

__all__ = [
    "AssetNotFound",
    "ConfigError",
    "FunctionNotFound",
    "FunctionVersionNotFound",
    "InvalidObjectName",
    "InvalidSignature",
    "NatsUnavailable",
    "ObjectCorrupted",
    "ObjectNotFound",
    "ObjectTooLarge",
    "PlatformError",
    "PublishFailed",
    "QueueFull",
    "WorkerResponseFailed",
]


class PlatformError(Exception):
    """Base class of every error the platform raises on purpose."""


class ConfigError(PlatformError, ValueError):
    """A setting, flag, environment variable or function-registry entry is invalid.

    The message names the input (file and key, flag or variable) and the offending value.
    """


class FunctionNotFound(PlatformError, LookupError):
    """No function with this id is configured."""

    def __init__(self, function_id: str) -> None:
        self.function_id = function_id
        super().__init__(f"function {function_id!r} is not configured")


class FunctionVersionNotFound(PlatformError, LookupError):
    """The function exists but has no version with this id."""

    def __init__(self, function_id: str, function_version_id: str) -> None:
        self.function_id = function_id
        self.function_version_id = function_version_id
        super().__init__(
            f"function {function_id!r} has no version {function_version_id!r} configured"
        )


class QueueFull(PlatformError):
    """The work-queue stream refused a publish because it holds its maximum number of messages."""

    def __init__(self, stream: str, description: str) -> None:
        self.stream = stream
        self.description = description
        super().__init__(f"work queue {stream!r} is full: {description}")


class NatsUnavailable(PlatformError):
    """NATS (JetStream) cannot be reached now; callers are answered 503 with `Retry-After`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PublishFailed(PlatformError):
    """A work item could not be published after every retry."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"failed to publish the work item on {subject!r}: {reason}")


class WorkerResponseFailed(PlatformError):
    """The worker claimed the response token but its POST attach could not be read."""

    def __init__(self, request_id: str, detail: str) -> None:
        self.request_id = request_id
        self.detail = detail
        super().__init__(f"response of request {request_id} could not be read: {detail}")


class AssetNotFound(PlatformError, LookupError):
    """An invocation named an input asset that does not exist (or belongs to another caller)."""

    def __init__(self, asset_id: str) -> None:
        self.asset_id = asset_id
        super().__init__(f"NotFound error: failed to find asset {asset_id}")


class InvalidSignature(PlatformError):
    """A presigned URL is missing its query, expired, or signed for another method or key."""


class InvalidObjectName(PlatformError, ValueError):
    """An NCA id or object id cannot name an object (allowed: letters, digits, `._=-`)."""


class ObjectNotFound(PlatformError, LookupError):
    """No object (or only an asset placeholder, not yet uploaded) under this key."""

    def __init__(self, bucket: Bucket, name: str) -> None:
        self.bucket = bucket
        self.name = name
        super().__init__(f"no object {name!r} in {bucket.value}")


class ObjectTooLarge(PlatformError):
    """A PUT body exceeds the store's size limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"object larger than the limit of {limit} bytes")


class ObjectCorrupted(PlatformError):
    """The chunks read back do not add up to the stored size or SHA-256 digest."""
