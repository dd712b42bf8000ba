"""The exceptions of `nvcf-sidecar invoke`, each carrying the exit status it ends the command with.

`InvokeError` is the base; `http_error` turns a failed HTTP answer into the right subclass, with
the problem+json `detail` (or the body's first line) as the reason.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import orjson

__all__ = [
    "EXIT_CALLER",
    "EXIT_CONNECTION",
    "EXIT_FUNCTION",
    "EXIT_INTERRUPTED",
    "EXIT_LOCAL",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CallerError",
    "FunctionFailed",
    "InvokeError",
    "InvokeTimeout",
    "LocalFileError",
    "PlatformUnreachable",
    "http_error",
    "problem_detail",
]

EXIT_OK: Final = 0
EXIT_LOCAL: Final = 1
"""A local file could not be read or written."""
EXIT_USAGE: Final = 2
"""Bad flags (argparse's status)."""
EXIT_CALLER: Final = 3
EXIT_FUNCTION: Final = 4
EXIT_TIMEOUT: Final = 5
EXIT_CONNECTION: Final = 6
EXIT_INTERRUPTED: Final = 130
"""Ctrl-C, as a shell reports SIGINT."""

_DETAIL_CHARS: Final = 300


class InvokeError(Exception):
    """Base class of every error `nvcf-sidecar invoke` ends with; the message is one line."""

    exit_status: ClassVar[int] = EXIT_LOCAL


class LocalFileError(InvokeError):
    """An input file could not be read, or the output could not be written."""


class CallerError(InvokeError):
    """The platform or the function refused the call (HTTP 4xx but 408)."""

    exit_status = EXIT_CALLER


class FunctionFailed(InvokeError):
    """The function, its worker or the platform failed (HTTP 5xx but 504), or answered something
    unusable (a broken body, a 202 without a request id, an unsafe zip)."""

    exit_status = EXIT_FUNCTION


class InvokeTimeout(InvokeError):
    """No final answer in time: HTTP 504 or 408, or `--timeout` passed."""

    exit_status = EXIT_TIMEOUT


class PlatformUnreachable(InvokeError):
    """The platform could not be connected to, or dropped the connection."""

    exit_status = EXIT_CONNECTION


def http_error(
    status: int, reason: str | None, body: bytes, request_id: str | None = None, what: str = ""
) -> InvokeError:
    """The error for a failed answer: `HTTP 404 Not Found: <detail> (request <id>)`."""
    kind: type[InvokeError]
    if status in (408, 504):
        kind = InvokeTimeout
    elif 400 <= status < 500:
        kind = CallerError
    else:
        kind = FunctionFailed
    message = f"HTTP {status}" + (f" {reason}" if reason else "")
    if what:
        message = f"{what}: {message}"
    detail = problem_detail(body)
    if detail:
        message += f": {detail}"
    if request_id:
        message += f" (request {request_id})"
    return kind(message)


def problem_detail(body: bytes) -> str:
    """The reason a failed answer gives: problem+json `detail` (else `title`), a container's
    `{"error": ...}`, or the first line of a text body; shortened to one line."""
    text = ""
    document: Any = None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip().split("\n", 1)[0]
    if isinstance(document, dict):
        for key in ("detail", "error", "message", "title"):
            if isinstance(document.get(key), str) and document[key]:
                text = document[key]
                break
        else:
            text = orjson.dumps(document).decode()
    elif document is not None:
        text = orjson.dumps(document).decode()
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"
