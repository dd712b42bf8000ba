"""The sidecar's structured logs: one JSON object per line with every bound and extra field."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from nvcf_sidecar.worker.logs import (
    JsonLogFormatter,
    bind_log_fields,
    configure_worker_logging,
    parse_log_level,
)

_RECORD_SWITCHES = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    switches = {name: getattr(logging, name) for name in _RECORD_SWITCHES}
    handler = configure_worker_logging("debug", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    for name, value in switches.items():
        setattr(logging, name, value)


def events(stream: io.StringIO) -> list[dict[str, object]]:
    """The test's own records (asyncio logs at debug level too)."""
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [event for event in parsed if event["logger"] == "nvcf.test"]


def test_one_json_object_per_line_with_extra_fields(captured: io.StringIO) -> None:
    logging.getLogger("nvcf.test").info(
        "request %s finished", "r1", extra={"request_id": "r1", "status": 200}
    )
    [event] = events(captured)
    assert event["level"] == "INFO"
    assert event["logger"] == "nvcf.test"
    assert event["message"] == "request r1 finished"
    assert event["request_id"] == "r1"
    assert event["status"] == 200
    assert str(event["time"]).endswith("+00:00")
    assert "args" not in event
    assert "msg" not in event


def test_bound_fields_reach_every_record_of_the_task_and_its_children(
    captured: io.StringIO,
) -> None:
    log = logging.getLogger("nvcf.test")

    async def child() -> None:
        log.info("from a child task")

    async def serve() -> None:
        with bind_log_fields(request_id="r2", function_version_id="v"):
            log.info("bound")
            await asyncio.create_task(child())
            log.info("explicit wins", extra={"request_id": "other"})
        log.info("unbound")

    asyncio.run(serve())
    bound, from_child, explicit, unbound = events(captured)
    assert bound["request_id"] == "r2"
    assert bound["function_version_id"] == "v"
    assert from_child["request_id"] == "r2"
    assert explicit["request_id"] == "other"
    assert "request_id" not in unbound


def test_exceptions_and_odd_values_are_serialised(captured: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("nvcf.test").exception("failed", extra={"path": object()})
    [event] = events(captured)
    assert "ValueError: boom" in str(event["exception"])
    assert str(event["path"]).startswith("<object object")


def test_log_levels_by_name_or_number() -> None:
    assert parse_log_level("debug") == logging.DEBUG
    assert parse_log_level("WARNING") == logging.WARNING
    assert parse_log_level("15") == 15
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        parse_log_level("loud")


@pytest.mark.parametrize(
    "created",
    [1_767_323_045.0, 1_767_323_045.5, 1_767_323_045.678, 1_767_323_045.9995, 1_767_323_046.0004],
)
def test_time_is_utc_iso_8601_with_milliseconds(created: float) -> None:
    formatter = JsonLogFormatter()
    record = logging.LogRecord("nvcf.test", logging.INFO, __file__, 1, "m", None, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    text = str(json.loads(formatter.format(record))["time"])
    assert text.endswith("+00:00")
    assert len(text.split(".")[1]) == len("678+00:00")
    stamp = datetime.fromisoformat(text)
    assert stamp.tzinfo == UTC
    assert 0 <= created - stamp.timestamp() < 0.001


def test_the_time_follows_each_second() -> None:
    formatter = JsonLogFormatter()
    times = []
    for created in (1_767_323_045.75, 1_767_323_046.125, 1_767_323_045.5, 1_798_761_600.25):
        record = logging.LogRecord("nvcf.test", logging.INFO, __file__, 1, "m", None, None)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        times.append(json.loads(formatter.format(record))["time"])
    assert times == [
        "2026-01-02T03:04:05.750+00:00",
        "2026-01-02T03:04:06.125+00:00",
        "2026-01-02T03:04:05.500+00:00",
        "2027-01-01T00:00:00.250+00:00",
    ]


def test_records_skip_what_no_line_prints(captured: io.StringIO) -> None:
    """No line prints the caller's frame, thread or process, so records do not gather them."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("nvcf.test")
    logger.addHandler(handler)
    try:
        logger.info("cheap")
    finally:
        logger.removeHandler(handler)
    [record] = records
    assert (record.lineno, record.thread, record.process) == (0, None, None)
    assert [event["message"] for event in events(captured)] == ["cheap"]
