"""The sidecar's structured logs: one JSON object per line with every bound and extra field."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from nvcf_sidecar.worker.logs import bind_log_fields, configure_worker_logging, parse_log_level


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_worker_logging("debug", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


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
