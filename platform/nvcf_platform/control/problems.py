"""The control plane's errors and NVCF's answer for them: RFC 9457 problem details.

NVIDIA's API answers `{type, title, status, detail, instance}`, `type` ending in the kebab-case
reason (`.../bad-request`), `title` the reason phrase and `detail` the message (reference §1).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

import orjson
from aiohttp import web

from nvcf_platform.errors import PlatformError

__all__ = ["PROBLEM_TYPE_BASE", "ControlError", "bad_request", "control_problem", "not_found"]

PROBLEM_TYPE_BASE: Final = "urn:nvcf-worker:problem-details:"
_CONTENT_TYPE: Final = "application/problem+json"


class ControlError(PlatformError):
    """A control-plane request refused with `status` and NVCF's `detail` message."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}")


def bad_request(detail: str) -> ControlError:
    """400 with `detail` (validation failures, forbidden transitions)."""
    return ControlError(400, detail)


def not_found(detail: str) -> ControlError:
    """404 with `detail` (unknown function, version or deployment)."""
    return ControlError(404, detail)


def control_problem(status: int, detail: str, instance: str) -> web.Response:
    """The problem+json answer NVIDIA's API gives for `status` on the request path `instance`."""
    phrase = HTTPStatus(status).phrase
    body = {
        "type": PROBLEM_TYPE_BASE + phrase.lower().replace(" ", "-").replace("'", ""),
        "title": phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type=_CONTENT_TYPE)
