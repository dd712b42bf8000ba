"""HTTP reason phrases as they appear in NVCF's problem types, titles and attach status lines.

Python's `http.HTTPStatus` phrases, pinned where they differ from Go's `net/http` (whose text the
worker turns into problem `type` URNs) or change between Python versions, so the wire stays stable.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

__all__ = ["reason_phrase"]

# Go's spelling for the codes whose HTTPStatus phrase differs from it in some Python version.
_PINNED: Final[dict[int, str]] = {
    413: "Request Entity Too Large",
    414: "Request URI Too Long",
    416: "Requested Range Not Satisfiable",
    418: "I'm a teapot",
    422: "Unprocessable Entity",
}

_PHRASES: Final[dict[int, str]] = {status.value: status.phrase for status in HTTPStatus} | _PINNED


def reason_phrase(status: int) -> str:
    """The canonical reason phrase of `status`, or `""` for a code without one (as Go answers)."""
    return _PHRASES.get(status, "")
