"""The `progress` file: exact encoding, validation, the size limit, atomic replacement, throttling."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from nvcf_worker.errors import InvalidProgress, NVCFWorkerError, ProgressTooLarge
from nvcf_worker.progress import (
    MAX_PROGRESS_FILE_BYTES,
    PROGRESS_FILE_NAME,
    ProgressReporter,
    encode_progress,
    write_file_atomically,
    write_progress,
)

THREAD_TIMEOUT_S = 20


class Index:
    """An integer-like value such as numpy's int64: usable through `__index__` only."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def read_progress(directory: Path) -> dict[str, Any]:
    document = json.loads((directory / "progress").read_bytes())
    assert isinstance(document, dict)
    return document


# -- encode_progress --------------------------------------------------------------------------


def test_encode_progress_writes_nvcfs_three_keys_compactly() -> None:
    assert (
        encode_progress("r1", 50, {"a": [1, 2], "b": None})
        == b'{"id":"r1","progress":50,"partialResponse":{"a":[1,2],"b":null}}'
    )


def test_encode_progress_defaults_partial_response_to_an_empty_object() -> None:
    assert encode_progress("r1", 7) == b'{"id":"r1","progress":7,"partialResponse":{}}'


def test_encode_progress_writes_non_ascii_as_utf8() -> None:
    assert encode_progress("r1", 1, {"t": "é"}) == (
        b'{"id":"r1","progress":1,"partialResponse":{"t":"\xc3\xa9"}}'
    )


@pytest.mark.parametrize("percent", [0, 1, 99, 100])
def test_encode_progress_accepts_every_integer_from_0_to_100(percent: int) -> None:
    assert json.loads(encode_progress("r1", percent))["progress"] == percent


def test_encode_progress_accepts_an_integer_like_value_through_index() -> None:
    assert json.loads(encode_progress("r1", Index(42)))["progress"] == 42  # type: ignore[arg-type]


def test_encode_progress_accepts_a_numpy_integer() -> None:
    numpy = pytest.importorskip("numpy")
    assert json.loads(encode_progress("r1", numpy.int64(64)))["progress"] == 64


@pytest.mark.parametrize("percent", [-1, 101, 50.5, 50.0, True, False, "50", None, Index(101)])
def test_encode_progress_refuses_a_percent_that_is_not_an_integer_from_0_to_100(
    percent: Any,
) -> None:
    with pytest.raises(InvalidProgress, match="0 to 100") as info:
        encode_progress("r1", percent)
    assert isinstance(info.value, NVCFWorkerError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("partial", [[1, 2], "text", 3, (("a", 1),)])
def test_encode_progress_refuses_a_partial_response_that_is_not_a_mapping(partial: Any) -> None:
    with pytest.raises(InvalidProgress, match="JSON object"):
        encode_progress("r1", 10, partial)


@pytest.mark.parametrize(
    "partial",
    [{"x": object()}, {"x": {1, 2}}, {(1, 2): "tuple key"}, {"x": b"bytes"}],
)
def test_encode_progress_refuses_a_partial_response_that_is_not_serialisable(
    partial: dict[Any, Any],
) -> None:
    with pytest.raises(InvalidProgress, match="JSON-serialisable"):
        encode_progress("r1", 10, partial)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_encode_progress_refuses_nan_and_infinity(number: float) -> None:
    with pytest.raises(InvalidProgress):
        encode_progress("r1", 10, {"loss": number})


def test_encode_progress_accepts_any_mapping_not_only_a_dict() -> None:
    encoded = encode_progress("r1", 10, MappingProxyType({"a": 1}))
    assert json.loads(encoded)["partialResponse"] == {"a": 1}


# -- the size limit ---------------------------------------------------------------------------


def padded(total_bytes: int) -> dict[str, str]:
    """A partial response whose report for request `r1` at 5 % encodes to `total_bytes` bytes."""
    overhead = len(encode_progress("r1", 5, {"k": ""}))
    return {"k": "x" * (total_bytes - overhead)}


def test_the_limit_is_250_kb_read_as_decimal() -> None:
    assert MAX_PROGRESS_FILE_BYTES == 250_000


def test_a_report_one_byte_below_the_limit_is_accepted() -> None:
    encoded = encode_progress("r1", 5, padded(MAX_PROGRESS_FILE_BYTES - 1))
    assert len(encoded) == MAX_PROGRESS_FILE_BYTES - 1


def test_a_report_of_exactly_the_limit_is_refused() -> None:
    with pytest.raises(ProgressTooLarge) as info:
        encode_progress("r1", 5, padded(MAX_PROGRESS_FILE_BYTES))
    assert info.value.size == MAX_PROGRESS_FILE_BYTES
    assert info.value.limit == MAX_PROGRESS_FILE_BYTES
    assert str(MAX_PROGRESS_FILE_BYTES) in str(info.value)
    assert isinstance(info.value, NVCFWorkerError)


def test_the_limit_counts_encoded_bytes_not_characters() -> None:
    # 125 000 two-byte characters: half the limit in characters, over it in bytes.
    with pytest.raises(ProgressTooLarge) as info:
        encode_progress("r1", 5, {"k": "é" * 125_000})
    assert info.value.size > MAX_PROGRESS_FILE_BYTES


def test_a_refused_report_leaves_the_progress_file_on_disk_untouched(tmp_path: Path) -> None:
    write_progress(tmp_path, "r1", 10, {"step": 1})
    before = (tmp_path / "progress").read_bytes()
    with pytest.raises(ProgressTooLarge):
        write_progress(tmp_path, "r1", 20, padded(MAX_PROGRESS_FILE_BYTES))
    with pytest.raises(InvalidProgress):
        write_progress(tmp_path, "r1", 101)
    assert (tmp_path / "progress").read_bytes() == before
    assert os.listdir(tmp_path) == ["progress"]


# -- write_progress and write_file_atomically -------------------------------------------------


def test_write_progress_writes_the_file_and_returns_its_path(tmp_path: Path) -> None:
    path = write_progress(tmp_path, "r1", 100, {"done": True})
    assert path == tmp_path / PROGRESS_FILE_NAME
    assert path.read_bytes() == b'{"id":"r1","progress":100,"partialResponse":{"done":true}}'


def test_write_progress_creates_a_missing_output_directory(tmp_path: Path) -> None:
    write_progress(tmp_path / "a" / "b", "r1", 0)
    assert read_progress(tmp_path / "a" / "b")["progress"] == 0


def test_write_progress_replaces_the_previous_report(tmp_path: Path) -> None:
    write_progress(tmp_path, "r1", 10, {"long": "x" * 1000})
    write_progress(tmp_path, "r1", 20)
    assert read_progress(tmp_path) == {"id": "r1", "progress": 20, "partialResponse": {}}
    assert os.listdir(tmp_path) == ["progress"]


def test_write_file_atomically_uses_a_partial_temp_and_removes_it_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def failing_replace(src: Any, dst: Any) -> None:
        seen.append(sorted(os.listdir(tmp_path)))
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename refused"):
        write_file_atomically(tmp_path / "progress", b"{}")
    assert len(seen) == 1
    [temp] = seen[0]
    assert temp.startswith("progress.")
    assert temp.endswith(".partial")
    assert os.listdir(tmp_path) == []


def test_write_file_atomically_does_not_write_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    out = tmp_path / "out"
    out.mkdir()
    (out / "progress").symlink_to(victim)
    write_file_atomically(out / "progress", b"{}")
    assert victim.read_bytes() == b"original"
    assert not (out / "progress").is_symlink()
    assert (out / "progress").read_bytes() == b"{}"


def run_threads(*targets: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # reported to the test below
                errors.append(error)

        return run

    threads = [threading.Thread(target=guard(target), daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
        assert not thread.is_alive(), "thread did not finish in time"
    if errors:
        raise errors[0]


def test_a_concurrent_reader_never_sees_a_torn_progress_file(tmp_path: Path) -> None:
    write_progress(tmp_path, "r1", 0)
    done = threading.Event()
    started = threading.Event()
    reads: list[int] = []

    def writer() -> None:
        started.wait(THREAD_TIMEOUT_S)
        try:
            for i in range(500):
                write_progress(tmp_path, "r1", i % 101, {"pad": "x" * ((i * 7919) % 20_000)})
        finally:
            done.set()

    def reader() -> None:
        started.set()
        count = 0
        while not done.is_set() and count < 1_000_000:
            data = (tmp_path / "progress").read_bytes()
            document = json.loads(data)  # a torn read raises here
            assert document["id"] == "r1"
            assert set(document) == {"id", "progress", "partialResponse"}
            count += 1
        reads.append(count)

    run_threads(writer, reader)
    assert reads[0] > 0
    assert read_progress(tmp_path)["progress"] == 499 % 101
    assert os.listdir(tmp_path) == ["progress"]


# -- ProgressReporter -------------------------------------------------------------------------


def reporter_at(tmp_path: Path, interval: float = 1.0) -> tuple[ProgressReporter, FakeClock]:
    clock = FakeClock()
    return ProgressReporter(tmp_path, "r1", min_interval=interval, clock=clock), clock


def test_reporter_writes_the_first_update_immediately(tmp_path: Path) -> None:
    reporter, _ = reporter_at(tmp_path)
    assert reporter.writes == 0
    assert reporter.last_written is None
    assert reporter.update(5, {"a": 1}) is True
    assert reporter.writes == 1
    assert reporter.last_written == 5
    assert read_progress(tmp_path) == {"id": "r1", "progress": 5, "partialResponse": {"a": 1}}


def test_reporter_coalesces_updates_within_the_interval(tmp_path: Path) -> None:
    reporter, clock = reporter_at(tmp_path)
    reporter.update(5)
    clock.now += 0.5
    assert reporter.update(6) is False
    assert reporter.update(7) is False
    assert reporter.writes == 1
    assert reporter.last_written == 5
    assert read_progress(tmp_path)["progress"] == 5


def test_reporter_writes_again_once_the_interval_has_passed(tmp_path: Path) -> None:
    reporter, clock = reporter_at(tmp_path)
    reporter.update(5)
    clock.now += 0.999
    assert reporter.update(6) is False
    clock.now += 0.001
    assert reporter.update(8) is True
    assert reporter.writes == 2
    assert read_progress(tmp_path)["progress"] == 8
    # The coalesced 6 was superseded by the write of 8; nothing remains to flush.
    reporter.flush()
    assert reporter.writes == 2


def test_reporter_measures_the_interval_from_the_last_write(tmp_path: Path) -> None:
    reporter, clock = reporter_at(tmp_path)
    reporter.update(1)
    clock.now += 1.5
    assert reporter.update(2) is True
    clock.now += 0.6
    assert reporter.update(3) is False


def test_reporter_writes_100_immediately_even_within_the_interval(tmp_path: Path) -> None:
    reporter, clock = reporter_at(tmp_path, interval=3600)
    reporter.update(5)
    clock.now += 0.01
    assert reporter.update(50) is False
    assert reporter.update(100, {"result": "done"}) is True
    assert reporter.last_written == 100
    assert read_progress(tmp_path)["partialResponse"] == {"result": "done"}
    reporter.flush()
    assert reporter.writes == 2


def test_reporter_flush_writes_the_latest_pending_report(tmp_path: Path) -> None:
    reporter, clock = reporter_at(tmp_path)
    reporter.update(5)
    clock.now += 0.1
    reporter.update(6, {"v": 6})
    reporter.update(7, {"v": 7})
    reporter.flush()
    assert reporter.writes == 2
    assert reporter.last_written == 7
    assert read_progress(tmp_path)["partialResponse"] == {"v": 7}


def test_reporter_flush_without_a_pending_report_writes_nothing(tmp_path: Path) -> None:
    reporter, _ = reporter_at(tmp_path)
    reporter.flush()
    assert reporter.writes == 0
    assert not (tmp_path / "progress").exists()
    reporter.update(5)
    reporter.flush()
    assert reporter.writes == 1


def test_reporter_close_flushes_and_the_reporter_stays_usable(tmp_path: Path) -> None:
    reporter, clock = reporter_at(tmp_path)
    reporter.update(5)
    reporter.update(6)
    reporter.close()
    assert reporter.last_written == 6
    clock.now += 10
    assert reporter.update(9) is True
    assert read_progress(tmp_path)["progress"] == 9


def test_reporter_context_exit_writes_the_pending_report(tmp_path: Path) -> None:
    reporter, _ = reporter_at(tmp_path)
    with reporter as entered:
        assert entered is reporter
        reporter.update(5)
        reporter.update(6)
        assert read_progress(tmp_path)["progress"] == 5
    assert read_progress(tmp_path)["progress"] == 6
    assert reporter.writes == 2


def test_reporter_context_exit_flushes_even_when_the_block_raises(tmp_path: Path) -> None:
    reporter, _ = reporter_at(tmp_path)

    def work() -> None:
        with reporter:
            reporter.update(5)
            reporter.update(6)
            raise RuntimeError("work failed")

    with pytest.raises(RuntimeError, match="work failed"):
        work()
    assert read_progress(tmp_path)["progress"] == 6


def test_reporter_raises_invalid_values_at_update_and_keeps_the_pending_one(
    tmp_path: Path,
) -> None:
    reporter, _ = reporter_at(tmp_path)
    reporter.update(5)
    reporter.update(6)
    with pytest.raises(InvalidProgress):
        reporter.update(101)
    with pytest.raises(InvalidProgress):
        reporter.update(7, ["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(ProgressTooLarge):
        reporter.update(8, padded(MAX_PROGRESS_FILE_BYTES + 10))
    assert reporter.writes == 1
    reporter.flush()
    assert read_progress(tmp_path)["progress"] == 6


def test_reporter_refuses_a_negative_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_interval"):
        ProgressReporter(tmp_path, "r1", min_interval=-0.1)


def test_reporter_with_zero_interval_writes_every_update(tmp_path: Path) -> None:
    reporter, _ = reporter_at(tmp_path, interval=0)
    assert all(reporter.update(percent) for percent in range(10))
    assert reporter.writes == 10


def test_reporter_uses_the_monotonic_clock_by_default(tmp_path: Path) -> None:
    reporter = ProgressReporter(tmp_path, "r1", min_interval=3600)
    assert reporter.update(1) is True
    assert reporter.update(2) is False


def test_reporter_is_safe_to_update_from_several_threads(tmp_path: Path) -> None:
    reporter = ProgressReporter(tmp_path, "r1", min_interval=0)
    per_thread = 100

    def work(offset: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(per_thread):
                reporter.update((offset + i) % 100, {"thread": offset})

        return run

    run_threads(*(work(offset) for offset in range(6)))
    assert reporter.writes == 6 * per_thread
    assert read_progress(tmp_path)["id"] == "r1"
    assert os.listdir(tmp_path) == ["progress"]


def test_reporter_coalesces_across_threads_with_a_frozen_clock(tmp_path: Path) -> None:
    reporter, _ = reporter_at(tmp_path, interval=1.0)

    def work() -> None:
        for i in range(1, 100):
            reporter.update(i)

    run_threads(*(work for _ in range(4)))
    assert reporter.writes == 1
    reporter.flush()
    assert reporter.writes == 2
    assert 1 <= read_progress(tmp_path)["progress"] <= 99
