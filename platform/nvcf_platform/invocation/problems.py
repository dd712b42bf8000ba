"""The invocation service's error answers: problem+json bodies and the plain-text 401 (§11.5).

Every route answers errors through these helpers so the shapes stay NVIDIA's.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from nvcf_sidecar.protocol import PROBLEM_CONTENT_TYPE, invocation_problem

__all__ = [
    "MISSING_AUTHORIZATION",
    "RETRY_AFTER_SECONDS",
    "UNAUTHORIZED_CLIENT",
    "abort_response",
    "missing_authorization",
    "problem_response",
    "unavailable_response",
]

MISSING_AUTHORIZATION: Final = "Header of type `authorization` was missing"
"""Plain-text body of the 401 for a request without an Authorization header."""
UNAUTHORIZED_CLIENT: Final = "client is unauthorized"
"""Detail of the 401 problem for a caller whose bearer is not an accepted API key."""
RETRY_AFTER_SECONDS: Final = 5
"""`Retry-After` of a 503 while NATS is down: a restarted nats-server is back within seconds."""


def problem_response(
    status: int, detail: str | None = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    """An `application/problem+json` answer `{status, title[, detail]}` (no `type`)."""
    response = web.Response(status=status, body=invocation_problem(status, detail), headers=headers)
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def unavailable_response(detail: str) -> web.Response:
    """The 503 problem for a call that needs NATS while it is down, with `Retry-After`."""
    return problem_response(503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def missing_authorization() -> web.Response:
    """The 401 NVIDIA's auth middleware answers when no Authorization header was sent."""
    return web.Response(status=401, text=MISSING_AUTHORIZATION)


def abort_response(request: web.BaseRequest) -> None:
    """Drop the connection of a response whose body cannot be completed.

    Ending it normally would hand the peer a truncated body that looks whole (a final empty
    chunk, or a short read it may not notice); aborting makes the failure visible, as hyper does.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
