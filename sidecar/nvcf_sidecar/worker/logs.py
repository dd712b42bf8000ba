"""The sidecar's structured logs: one JSON object per line, with fields bound per request.

`configure_worker_logging()` installs the formatter on the root logger; `bind_log_fields()` adds
fields (`request_id=...`) to every record emitted in the current task and the tasks it starts.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

import orjson

__all__ = [
    "JsonLogFormatter",
    "bind_log_fields",
    "configure_worker_logging",
    "parse_log_level",
]

_HANDLER_NAME = "nvcf_sidecar"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)

_bound_fields: ContextVar[Mapping[str, Any]] = ContextVar(
    "nvcf_sidecar_log_fields", default=MappingProxyType({})
)


@contextmanager
def bind_log_fields(**fields: Any) -> Iterator[None]:
    """Add `fields` to every record logged inside the block (this task and tasks it creates).

    Fields given in a call's `extra=` win over bound ones of the same name.
    """
    token = _bound_fields.set({**_bound_fields.get(), **fields})
    try:
        yield
    finally:
        _bound_fields.reset(token)


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, then every field.

    `time` is UTC in ISO 8601 with milliseconds (`2026-01-02T03:04:05.678+00:00`); its
    date-and-seconds part is formatted once per second.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event.update(_bound_fields.get())
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                event[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            event["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            event["stack"] = record.stack_info
        return orjson.dumps(event, default=str).decode()


def parse_log_level(value: str | int) -> int:
    """A logging level from a name (`debug`, `INFO`, ...) or a number; ValueError if unknown."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {value!r}: use debug, info, warning or error")
    return level


def configure_worker_logging(
    level: str | int = logging.INFO, *, stream: TextIO | None = None
) -> logging.Handler:
    """Log JSON lines to stderr (or `stream`) from the root logger; calling again replaces it.

    Returns the installed handler. Noisy third-party loggers stay at WARNING unless `level`
    is DEBUG. Records stop gathering what no line prints (the caller's frame, thread and
    process): a third of a record's cost, for the process (the sidecar's) that calls this.
    """
    numeric = parse_log_level(level)
    # What a record would gather and no line prints: the caller's frame, thread, process.
    logging._srcfile = None  # the logging HOWTO's "Optimization" switch for findCaller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonLogFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    quiet = logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    for name in ("nats", "aiohttp.access", "grpc"):
        logging.getLogger(name).setLevel(max(quiet, numeric))
    return handler
