"""The 400 answer the HTTP integrations give for invalid `NVCF-*` headers, in one place.

An `application/problem+json` body naming the header and the value, shared by the aiohttp and
ASGI integrations.
"""

from __future__ import annotations

import json

from nvcf_worker.errors import InvalidHeader

__all__ = ["PROBLEM_CONTENT_TYPE", "invalid_header_problem"]

PROBLEM_CONTENT_TYPE = "application/problem+json"


def invalid_header_problem(error: InvalidHeader) -> bytes:
    """`{"title", "status": 400, "detail", "header", "value"}`; no `type` means about:blank."""
    problem = {
        "title": "Bad Request",
        "status": 400,
        "detail": str(error),
        "header": error.header,
        "value": error.value if error.value is None else str(error.value),
    }
    return json.dumps(problem).encode()
