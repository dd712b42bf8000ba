"""The attach endpoint of the invocation service: URL, content types, bearer tokens (reference §4).

GET attach streams the rest of a request to the worker; POST attach carries the response back.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTACH_LIVENESS_PATH",
    "ATTACH_PATH",
    "FORWARD_FAILED_DETAIL",
    "H1_CONTENT_TYPE",
    "INVALID_TOKEN_DETAIL",
    "OCTET_STREAM_CONTENT_TYPE",
    "attach_liveness_url",
    "attach_url",
    "bearer",
    "get_attach_accept",
    "parse_bearer",
    "post_attach_content_length",
]

ATTACH_PATH: Final = "/v2/nvcf/worker/request-attach"
ATTACH_LIVENESS_PATH: Final = ATTACH_PATH + "/liveness"
"""This platform's addition, not in NVIDIA's IS: GET with a response token answers 204 while a
caller still waits for that response, 410 once it was used or given up. Any other answer (NVIDIA's
IS: 404) says nothing. A worker asks it before running a redelivered work item."""
H1_CONTENT_TYPE: Final = "application/octet-stream+h1"
"""An HTTP/1.1 head followed by the raw body: every POST attach, and GET attach in stream-full mode."""
OCTET_STREAM_CONTENT_TYPE: Final = "application/octet-stream"
"""The raw rest of the request body (GET attach when the work item carries method and path)."""

INVALID_TOKEN_DETAIL: Final = "The provided authorization token is invalid or has expired"
"""Detail of the IS's 401 problem for an unknown, used or expired attach token."""
FORWARD_FAILED_DETAIL: Final = "Failed to forward response"
"""Detail of the IS's 500 when the caller-facing handler is already gone."""

_BEARER_PREFIX: Final = "bearer "


def attach_url(target_uri: str) -> str:
    """The attach URL of one IS pod, from `HTTP1ProtocolConfig.targetURI`."""
    return target_uri.rstrip("/") + ATTACH_PATH


def attach_liveness_url(target_uri: str) -> str:
    """The response-token liveness URL of one IS pod (see `ATTACH_LIVENESS_PATH`)."""
    return target_uri.rstrip("/") + ATTACH_LIVENESS_PATH


def bearer(token: str) -> str:
    """The `Authorization` value that presents an attach token."""
    return f"Bearer {token}"


def parse_bearer(authorization: str | None) -> str | None:
    """The token of a `Bearer <token>` header (scheme case-insensitive), or None."""
    if authorization is None or authorization[:7].lower() != _BEARER_PREFIX:
        return None
    token = authorization[7:].strip(" \t")
    return token or None


def get_attach_accept(request_method: str) -> str:
    """The `Accept` the worker sends on GET attach: `+h1` when the work item has no method."""
    return OCTET_STREAM_CONTENT_TYPE if request_method else H1_CONTENT_TYPE


def post_attach_content_length(head: bytes, body_length: int | None) -> int | None:
    """The outer Content-Length of a POST attach: head plus body, or None (chunked) if unknown."""
    return None if body_length is None else len(head) + body_length
