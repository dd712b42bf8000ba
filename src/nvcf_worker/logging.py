"""Container logs in the format NVCF collects, with the request id on every record.

`configure_logging()` installs one stdout handler; `bind_request_id()` scopes the id to the code
that serves one invocation (integrations do this for you).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

__all__ = [
    "LOG_FORMAT",
    "RequestIdFilter",
    "bind_request_id",
    "configure_logging",
    "current_request_id",
    "is_configured",
]

#: NVIDIA's helper format (`<time> [LEVEL] [INFERENCE] message`) with the request id added.
LOG_FORMAT = "%(asctime)s [%(levelname)s] [INFERENCE] [%(request_id)s] %(message)s"
_NO_REQUEST = "-"

_request_id: ContextVar[str | None] = ContextVar("nvcf_request_id", default=None)


def current_request_id() -> str | None:
    """The request id bound in the current context, if any."""
    return _request_id.get()


@contextmanager
def bind_request_id(request_id: str) -> Iterator[None]:
    """Attach `request_id` to every log record emitted inside the block (this task/thread)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Sets `record.request_id` from the bound context unless the record already has one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get() or _NO_REQUEST
        return True


_HANDLER_NAME = "nvcf_worker"


def is_configured(logger: logging.Logger | None = None) -> bool:
    """True when `configure_logging` installed its handler on `logger` (default: the root)."""
    target = logger if logger is not None else logging.getLogger()
    return any(handler.get_name() == _HANDLER_NAME for handler in target.handlers)


def configure_logging(
    level: int | str = logging.INFO,
    *,
    stream: TextIO | None = None,
    fmt: str = LOG_FORMAT,
    logger: logging.Logger | None = None,
) -> logging.Handler:
    """Log to stdout (or `stream`) in the NVCF container format; calling it again replaces it.

    Configures the root logger unless `logger` is given, and returns the installed handler.
    """
    target = logger if logger is not None else logging.getLogger()
    for existing in list(target.handlers):
        if existing.get_name() == _HANDLER_NAME:
            target.removeHandler(existing)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(fmt))
    target.addHandler(handler)
    target.setLevel(level)
    return handler
