"""NATS stream, consumer and subject names of the NVCF queue, polling and cancel paths (reference §2).

Every name is built here from validated tokens, so a region or id can never add a level or a wildcard.
"""

from __future__ import annotations

import re
from typing import Final

from nvcf_sidecar.protocol.errors import InvalidSubjectToken

__all__ = [
    "cancel_subject",
    "consumer_name",
    "polling_subject",
    "request_stream_name",
    "request_subject",
    "request_subject_filter",
    "session_lookup_stream_name",
    "session_lookup_subject",
    "session_lookup_subject_filter",
    "session_reconnect_subject",
    "tracking_stream_name",
    "tracking_subject",
    "tracking_subject_filter",
]

# A subject token may not hold the level separator, a wildcard, whitespace or control characters.
_BAD_IN_SUBJECT: Final = re.compile(r"[.*>\s\x00-\x1f\x7f]")
# A stream or consumer name additionally may not hold path separators (JetStream stores by name).
_BAD_IN_NAME: Final = re.compile(r"[.*>\s\x00-\x1f\x7f/\\]")


def _token(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not value:
        raise InvalidSubjectToken(kind, value, "must not be empty")
    bad = pattern.search(value)
    if bad is not None:
        raise InvalidSubjectToken(kind, value, f"contains {bad.group()!r} at index {bad.start()}")
    return value


def _region(region: str) -> str:
    return _token("region", region, _BAD_IN_NAME)


def _version(function_version_id: str) -> str:
    return _token("function version id", function_version_id, _BAD_IN_NAME)


def _request(request_id: str) -> str:
    return _token("request id", request_id, _BAD_IN_SUBJECT)


# --- work queue (reference §2.1, §2.2) -----------------------------------------------------------


def request_stream_name(region: str, function_version_id: str) -> str:
    """The work-queue stream of one function version in one region: `rq_<region>_<fvid>`."""
    return f"rq_{_region(region)}_{_version(function_version_id)}"


def request_subject_filter(region: str, function_version_id: str) -> str:
    """The subjects the work-queue stream captures: `rq.<region>.<fvid>.>`."""
    return f"rq.{_region(region)}.{_version(function_version_id)}.>"


def request_subject(region: str, function_version_id: str, request_id: str) -> str:
    """Where the IS publishes one work item: `rq.<region>.<fvid>.<reqid>` (one message each)."""
    return f"rq.{_region(region)}.{_version(function_version_id)}.{_request(request_id)}"


def consumer_name(region: str, function_version_id: str) -> str:
    """The durable pull consumer every worker of the version binds to: `rq_<region>_<fvid>_workers`."""
    return f"rq_{_region(region)}_{_version(function_version_id)}_workers"


# --- core NATS (reference §2.5) ------------------------------------------------------------------


def polling_subject(request_id: str) -> str:
    """Where the IS sends a status poll as a request and the worker replies: `rq_polling.<reqid>`."""
    return f"rq_polling.{_request(request_id)}"


def cancel_subject(function_version_id: str) -> str:
    """Where the IS broadcasts a cancelled reqid to every worker of a version: `nvcf.cancel.<fvid>`."""
    return f"nvcf.cancel.{_version(function_version_id)}"


# --- request tracking for polls (reference §2.4) -------------------------------------------------


def tracking_stream_name(region: str) -> str:
    """The IS's reqid -> version tracking stream: `requestToFunctionVersion_<region>`."""
    return f"requestToFunctionVersion_{_region(region)}"


def tracking_subject_filter(region: str) -> str:
    """The subjects the tracking stream captures: `requestToFunctionVersion.<region>.>`."""
    return f"requestToFunctionVersion.{_region(region)}.>"


def tracking_subject(region: str, request_id: str) -> str:
    """The tracking record of one request: `requestToFunctionVersion.<region>.<reqid>`."""
    return f"requestToFunctionVersion.{_region(region)}.{_request(request_id)}"


# --- stateful (gRPC) sessions (nvcf-grpc-sessions §2, §4) ----------------------------------------


def session_reconnect_subject(request_id: str) -> str:
    """Where the gRPC proxy asks a session's worker to dial back again (core NATS):
    `stateful_session.reconnect.<reqid>`."""
    return f"stateful_session.reconnect.{_request(request_id)}"


def session_lookup_stream_name(region: str) -> str:
    """The stream of live sessions' registrations: `stateful_session_lookup_<region>`."""
    return f"stateful_session_lookup_{_region(region)}"


def session_lookup_subject_filter(region: str) -> str:
    """The subjects the session lookup stream captures: `stateful_session.lookup.<region>.>`."""
    return f"stateful_session.lookup.{_region(region)}.>"


def session_lookup_subject(region: str, function_version_id: str, request_id: str) -> str:
    """A session's registration: `stateful_session.lookup.<region>.<fvid>.<reqid>`."""
    return (
        f"stateful_session.lookup.{_region(region)}.{_version(function_version_id)}"
        f".{_request(request_id)}"
    )
