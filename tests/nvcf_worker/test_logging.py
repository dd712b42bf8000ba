"""NVCF-format container logs with the request id bound per invocation."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from nvcf_worker import bind_request_id, configure_logging, current_request_id
from nvcf_worker.logging import LOG_FORMAT, RequestIdFilter

LINE = re.compile(
    r"(?P<time>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) \[(?P<level>[A-Z]+)\] \[INFERENCE\] "
    r"\[(?P<reqid>[^\]]+)\] (?P<message>.*)"
)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own, so the root logger and other tests are untouched."""
    dedicated = logging.getLogger(f"test_nvcf_worker_logging.{uuid.uuid4().hex}")
    dedicated.propagate = False
    yield dedicated
    # Only what configure_logging added: pytest attaches its own capture handlers here too.
    for handler in nvcf_handlers(dedicated):
        dedicated.removeHandler(handler)
        handler.close()
    dedicated.setLevel(logging.NOTSET)


def nvcf_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [handler for handler in logger.handlers if handler.get_name() == "nvcf_worker"]


def lines(stream: io.StringIO) -> list[re.Match[str]]:
    result = []
    for line in stream.getvalue().splitlines():
        match = LINE.fullmatch(line)
        assert match is not None, f"not in the NVCF format: {line!r}"
        result.append(match)
    return result


def test_log_format_is_nvidias_with_the_request_id_added() -> None:
    assert LOG_FORMAT == "%(asctime)s [%(levelname)s] [INFERENCE] [%(request_id)s] %(message)s"


def test_a_record_inside_bind_request_id_carries_the_id(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger)
    with bind_request_id("req-1"):
        logger.info("hello %s", "world")
    [line] = lines(stream)
    assert line["level"] == "INFO"
    assert line["reqid"] == "req-1"
    assert line["message"] == "hello world"


def test_a_record_without_a_bound_id_shows_a_dash(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger)
    logger.warning("no request")
    [line] = lines(stream)
    assert line["level"] == "WARNING"
    assert line["reqid"] == "-"


def test_an_explicit_request_id_in_extra_wins_over_the_bound_one(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger)
    with bind_request_id("bound"):
        logger.info("m", extra={"request_id": "explicit"})
    assert [line["reqid"] for line in lines(stream)] == ["explicit"]


def test_records_of_child_loggers_get_the_id_too(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger)
    with bind_request_id("req-2"):
        logging.getLogger(f"{logger.name}.child").error("from a child")
    [line] = lines(stream)
    assert line["reqid"] == "req-2"
    assert line["level"] == "ERROR"


def test_configure_logging_sets_the_level(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging("WARNING", stream=stream, logger=logger)
    logger.info("dropped")
    logger.warning("kept")
    assert [line["message"] for line in lines(stream)] == ["kept"]
    assert logger.level == logging.WARNING


def test_configure_logging_accepts_a_custom_format(logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger, fmt="%(request_id)s|%(message)s")
    with bind_request_id("r9"):
        logger.info("x")
    assert stream.getvalue() == "r9|x\n"


def test_configure_logging_twice_leaves_one_handler_writing_to_the_new_stream(
    logger: logging.Logger,
) -> None:
    first, second = io.StringIO(), io.StringIO()
    other = logging.NullHandler()
    logger.addHandler(other)
    try:
        configure_logging(stream=first, logger=logger)
        handler = configure_logging(stream=second, logger=logger)
        assert nvcf_handlers(logger) == [handler]
        assert other in logger.handlers
        logger.info("once")
    finally:
        logger.removeHandler(other)
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_configure_logging_writes_to_stdout_by_default(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = configure_logging(logger=logger)
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stdout
    logger.info("to stdout")
    out = capsys.readouterr().out
    assert LINE.fullmatch(out.rstrip("\n"))


def test_configure_logging_without_a_logger_configures_the_root_logger() -> None:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    try:
        handler = configure_logging(stream=stream)
        assert handler in root.handlers
        assert root.level == logging.INFO
    finally:
        for existing in list(root.handlers):
            if existing not in handlers:
                root.removeHandler(existing)
        root.setLevel(level)


def test_request_id_filter_never_drops_a_record() -> None:
    record = logging.LogRecord("n", logging.INFO, __file__, 1, "m", None, None)
    assert RequestIdFilter().filter(record) is True
    assert record.request_id == "-"


# -- bind_request_id --------------------------------------------------------------------------


def test_bind_request_id_nests_and_restores_the_outer_id() -> None:
    assert current_request_id() is None
    with bind_request_id("outer"):
        assert current_request_id() == "outer"
        with bind_request_id("inner"):
            assert current_request_id() == "inner"
        assert current_request_id() == "outer"
    assert current_request_id() is None


def test_bind_request_id_resets_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), bind_request_id("failing"):
        raise RuntimeError
    assert current_request_id() is None


async def test_concurrent_asyncio_tasks_each_see_their_own_request_id(
    logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, logger=logger)
    a_bound, b_bound = asyncio.Event(), asyncio.Event()

    async def serve(request_id: str, mine: asyncio.Event, theirs: asyncio.Event) -> str | None:
        with bind_request_id(request_id):
            mine.set()
            await asyncio.wait_for(theirs.wait(), timeout=5)  # both ids are bound now
            logger.info("serving %s", request_id)
            return current_request_id()

    seen = await asyncio.gather(serve("a", a_bound, b_bound), serve("b", b_bound, a_bound))
    assert seen == ["a", "b"]
    assert current_request_id() is None
    assert sorted((line["reqid"], line["message"]) for line in lines(stream)) == [
        ("a", "serving a"),
        ("b", "serving b"),
    ]


def test_a_new_thread_does_not_inherit_the_bound_id() -> None:
    seen: list[str | None] = []
    with bind_request_id("main"):
        thread = threading.Thread(target=lambda: seen.append(current_request_id()))
        thread.start()
        thread.join(5)
    assert seen == [None]
