"""application/problem+json bodies of the invocation service and of the worker (reference §5.2, §11.5).

The IS answers `{status, title, detail}` with no `type`; the worker answers `{type, title, status,
detail}` with a `urn:<source>:problem-details:<reason>` type, as Go's protojson writes ErrorDetails.
"""

from __future__ import annotations

from typing import Final, Protocol

import orjson

from nvcf_sidecar.protocol.reasons import reason_phrase

__all__ = [
    "ASSET_DOWNLOAD_FAILED",
    "DEFAULT_INFERENCE_ERROR",
    "INFERENCE_CONNECTION",
    "INFERENCE_CONNECTION_FAILED",
    "INFERENCE_REQUEST_FAILED",
    "INFERENCE_SERVICE",
    "PREPARE_FAILED",
    "PROBLEM_CONTENT_TYPE",
    "WORKER_SERVICE",
    "GrpcStatusCode",
    "grpc_status_to_http",
    "inference_error_detail",
    "inference_error_problem",
    "invocation_problem",
    "problem_type",
    "worker_problem",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

# Sources in the worker's problem `type` URNs.
INFERENCE_SERVICE: Final = "inference-service"
"""The container answered with a status >= 400 (compatibility mode)."""
INFERENCE_CONNECTION: Final = "inference-connection"
"""The container could not be reached or timed out."""
WORKER_SERVICE: Final = "nvcf-worker-service"
"""The worker itself failed (assets, response directory, anything else)."""

# The worker's fixed details.
DEFAULT_INFERENCE_ERROR: Final = "Inference error"
ASSET_DOWNLOAD_FAILED: Final = "Internal error while downloading assets"
PREPARE_FAILED: Final = "Internal error while preparing for inference"
INFERENCE_REQUEST_FAILED: Final = "Internal error while making inference request"
INFERENCE_CONNECTION_FAILED: Final = "Inference connection error while making inference request"


def problem_type(source: str, status: int) -> str:
    """`urn:<source>:problem-details:<reason phrase, lower-case, spaces as hyphens>`."""
    return f"urn:{source}:problem-details:{reason_phrase(status).lower().replace(' ', '-')}"


def worker_problem(source: str, status: int, detail: str) -> bytes:
    """A worker-generated problem body (send it with `PROBLEM_CONTENT_TYPE` and `status`).

    Keys come in ErrorDetails field order; like protojson, empty strings are left out (a status
    without a reason phrase has no title).
    """
    fields = {
        "type": problem_type(source, status),
        "title": reason_phrase(status),
        "status": status,
        "detail": detail,
    }
    return orjson.dumps({key: value for key, value in fields.items() if value != ""})


def inference_error_detail(body: bytes) -> str:
    """The detail for a container error: its JSON `"error"` string, else "Inference error".

    `body` is what was buffered of the container's response. Like Go's JSON decoding into a
    struct, keys match case-insensitively and the last matching string wins; a non-string value
    is ignored and an empty string means the default.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return DEFAULT_INFERENCE_ERROR
    if not isinstance(document, dict):
        return DEFAULT_INFERENCE_ERROR
    found = ""
    for key, value in document.items():
        if key.lower() == "error" and isinstance(value, str):
            found = value
    return found or DEFAULT_INFERENCE_ERROR


def inference_error_problem(status: int, body: bytes) -> bytes:
    """The problem body that replaces a container error response in compatibility mode."""
    return worker_problem(INFERENCE_SERVICE, status, inference_error_detail(body))


def invocation_problem(status: int, detail: str | None = None) -> bytes:
    """An invocation-service problem body: status, canonical title and optional detail."""
    fields: dict[str, object] = {"status": status, "title": reason_phrase(status)}
    if detail is not None:
        fields["detail"] = detail
    return orjson.dumps(fields)


class GrpcStatusCode(Protocol):
    """What `grpc.StatusCode` members offer: `value` is (canonical number, name)."""

    @property
    def value(self) -> tuple[int, str]: ...


# Keyed by the canonical gRPC code number (OK=0 ... UNAUTHENTICATED=16).
_GRPC_TO_HTTP: Final[dict[int, int]] = {
    0: 200,  # OK
    1: 503,  # CANCELLED
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 503,  # RESOURCE_EXHAUSTED
    9: 412,  # FAILED_PRECONDITION
    10: 503,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    14: 503,  # UNAVAILABLE
    16: 401,  # UNAUTHENTICATED
}
_UNKNOWN: Final = 2
_CREDITS_EXPIRED: Final = "Cloud credits expired"


def grpc_status_to_http(code: int | GrpcStatusCode, message: str = "") -> int:
    """The HTTP status the IS answers for an NVCF API gRPC error (reference §11.5).

    `code` is a `grpc.StatusCode` or its canonical number. UNKNOWN whose message mentions
    expired cloud credits is 402; INTERNAL, DATA_LOSS and any other UNKNOWN are 500. The
    problem detail is the gRPC message.
    """
    number = code if isinstance(code, int) else code.value[0]
    if number == _UNKNOWN and _CREDITS_EXPIRED in message:
        return 402
    return _GRPC_TO_HTTP.get(number, 500)
