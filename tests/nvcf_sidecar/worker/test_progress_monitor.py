"""The progress monitor turns each whole, valid version of a `progress` file into one update.

Real watchdog observer, real files and a real writer process: torn in-place writes, atomic
renames, oversized and malformed files, routing, the NVCT form, links, and clean shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.modules import load_module
from nvcf_sidecar.worker.inotify import inotify_available
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.progress import (
    ProgressMonitor,
    ProgressMonitorError,
    ProgressUpdate,
    ProgressWatch,
)
from nvcf_worker.progress import MAX_PROGRESS_FILE_BYTES, ProgressReporter, write_progress
from nvcf_worker.tasks import TaskProgressWriter

WRITER = Path(__file__).parent / "servers" / "progress_writer.py"
WAIT = 10.0


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "responses"  # created by the monitor


SOURCES = ["watchdog", *(["inotify"] if inotify_available() else [])]


@pytest.fixture(params=SOURCES)
async def monitor(
    base: Path, metrics: WorkerMetrics, request: pytest.FixtureRequest
) -> AsyncIterator[ProgressMonitor]:
    """The monitor on each watcher this system has: every test runs on both on Linux."""
    async with ProgressMonitor(base, metrics, source=request.param) as running:
        assert running.source == request.param
        yield running


def rejected(metrics: WorkerMetrics, reason: str) -> float:
    return float(metrics.progress_rejected.labels(reason)._value.get())


def updates(metrics: WorkerMetrics) -> float:
    return float(metrics.progress_updates._value.get())


async def until(condition: Callable[[], bool]) -> None:
    """Poll a condition that has no event of its own (a counter), within `WAIT`."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 - a metric counter has no event to await
            await asyncio.sleep(0.01)


async def next_update(watch: ProgressWatch) -> ProgressUpdate:
    return await asyncio.wait_for(watch.next_update(), WAIT)


def write_in_place(directory: Path, document: Any) -> None:
    """Rewrite `progress` in place, as NVIDIA's helper does (truncate, write, close)."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    with open(directory / "progress", "wb") as stream:
        stream.write(data)


def place(directory: Path, document: Any, mtime_ns: int) -> None:
    """Rename a finished file with a chosen mtime into place (an atomic write, clock chosen)."""
    temp = directory / "progress.tmp"
    temp.write_bytes(json.dumps(document).encode())
    os.utime(temp, ns=(mtime_ns, mtime_ns))
    os.replace(temp, directory / "progress")


def nvcf(request_id: str | None, percent: Any, partial: Any = None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"progress": percent, **extra}
    if request_id is not None:
        document["id"] = request_id
    if partial is not None:
        document["partialResponse"] = partial
    return document


def nested(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for _ in range(depth):
        document = {"a": document}
    return document


def request_dir(base: Path, request_id: str) -> Path:
    directory = base / request_id
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def test_a_listener_is_called_once_at_the_next_update_and_at_close(
    monitor: ProgressMonitor, base: Path
) -> None:
    """`on_arrival`: what the compatibility mode waits on beside the container's answer."""
    directory = request_dir(base, "req-listen")
    calls: list[str] = []
    arrived = asyncio.Event()

    def listener() -> None:
        calls.append("update")
        arrived.set()

    with monitor.watch("req-listen", directory) as watch:
        watch.on_arrival(listener)
        forgotten = calls.append
        watch.on_arrival(forgotten)
        watch.forget(forgotten)
        watch.forget(forgotten)  # a second forget is harmless
        write_in_place(directory, nvcf("req-listen", 30))
        await asyncio.wait_for(arrived.wait(), WAIT)
        assert calls == ["update"]
        update = watch.pending()
        assert update is not None
        assert update.percent == 30
        write_in_place(directory, nvcf("req-listen", 60))
        await next_update(watch)
        assert calls == ["update"]  # once only: not registered again
        watch.on_arrival(lambda: calls.append("closed"))
    assert calls == ["update", "closed"]
    watch.on_arrival(lambda: calls.append("at once"))
    assert calls == ["update", "closed", "at once"]


async def test_successive_writes_arrive_in_order_with_percent_and_body(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-1")
    stamps = []
    with monitor.watch("req-1", directory) as watch:
        for step, percent in enumerate((10, 50, 90)):
            partial = {"step": step, "text": "é ☃", "nested": {"list": [1, 2.5, None]}}
            write_in_place(directory, nvcf("req-1", percent, partial))
            update = await next_update(watch)
            assert update.percent == percent
            assert update.body == orjson.dumps(partial)
            stamps.append(update.mtime_ns)
        assert stamps == sorted(set(stamps))
        assert watch.take_problem() is None
    assert updates(metrics) == 3


async def test_an_in_place_writer_never_yields_a_torn_or_mixed_update(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    writer = load_module(WRITER)
    versions = 300
    directory = request_dir(base, "req-torn")
    seen: list[int] = []
    with monitor.watch("req-torn", directory) as watch:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(WRITER), str(directory), "req-torn", str(versions)
        )
        try:
            while not seen or seen[-1] != versions - 1:
                update = await next_update(watch)
                partial = orjson.loads(update.body)  # never a torn body
                seq = partial["seq"]
                assert partial == writer.partial_response(seq)  # never a mix of two versions
                assert update.percent == writer.percent(seq, versions)
                assert not seen or seq > seen[-1]
                seen.append(seq)
            assert await asyncio.wait_for(process.wait(), WAIT) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert watch.take_problem() is None
    assert rejected(metrics, "malformed") == 0
    assert updates(metrics) == len(seen)


async def test_a_writer_pausing_mid_file_is_waited_for(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-slow")
    text = json.dumps(nvcf("req-slow", 30, {"slow": True}))
    with monitor.watch("req-slow", directory) as watch:
        with open(directory / "progress", "w") as stream:  # noqa: ASYNC230 - a tiny local file
            stream.write(text[:20])
            stream.flush()
            await asyncio.sleep(0.3)  # longer than the debounce: the half file is read, re-read
            stream.write(text[20:])
        update = await next_update(watch)
        assert (update.percent, update.body) == (30, b'{"slow":true}')
        assert watch.take_problem() is None
    assert rejected(metrics, "malformed") == 0


async def test_atomic_writes_from_the_library_are_picked_up(
    monitor: ProgressMonitor, base: Path
) -> None:
    directory = request_dir(base, "req-atomic")
    with monitor.watch("req-atomic", directory) as watch:
        write_progress(directory, "req-atomic", 5, {"phase": "load"})
        assert (await next_update(watch)).body == b'{"phase":"load"}'
        reporter = ProgressReporter(directory, "req-atomic", min_interval=0)
        for percent in (40, 100):
            reporter.update(percent, {"percent": percent})
            update = await next_update(watch)
            assert (update.percent, orjson.loads(update.body)) == (percent, {"percent": percent})
    assert not list(directory.glob("*.partial"))


async def test_updates_not_yet_taken_are_coalesced_to_the_newest(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-burst")
    with monitor.watch("req-burst", directory) as watch:
        write_in_place(directory, nvcf("req-burst", 20))
        await until(lambda: updates(metrics) == 1)
        write_in_place(directory, nvcf("req-burst", 60))
        await until(lambda: updates(metrics) == 2)
        update = await next_update(watch)
        assert (update.percent, update.body) == (60, b"{}")
        assert watch.pending() is None


async def test_a_rewrite_with_the_same_percent_and_body_is_not_news(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-same")
    now = 1_700_000_000_000_000_000
    with monitor.watch("req-same", directory) as watch:
        place(directory, nvcf("req-same", 40, {"a": 1}), now)
        assert (await next_update(watch)).percent == 40
        for second in range(1, 4):  # the same document rewritten later: no new update
            place(directory, nvcf("req-same", 40, {"a": 1}), now + second * 10**9)
        place(directory, nvcf("req-same", 40, {"a": 2}), now + 5 * 10**9)
        update = await next_update(watch)
        assert (update.percent, update.body) == (40, b'{"a":2}')
        assert updates(metrics) == 2


async def test_a_new_version_with_the_same_mtime_gets_a_later_stamp_and_older_is_ignored(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-clock")
    now = 1_700_000_000_000_000_000
    with monitor.watch("req-clock", directory) as watch:
        place(directory, nvcf("req-clock", 10), now)
        assert (await next_update(watch)).mtime_ns == now
        place(directory, nvcf("req-clock", 20), now)  # coarse clock: same mtime, new content
        update = await next_update(watch)
        assert (update.percent, update.mtime_ns) == (20, now + 1)

        place(directory, nvcf("req-clock", 90), now - 10**9)  # older than the last one: ignored
        await asyncio.sleep(0.3)  # nothing to await for "nothing happens"
        assert watch.pending() is None
        assert updates(metrics) == 2
        place(directory, nvcf("req-clock", 30), now + 10**9)
        assert (await next_update(watch)).percent == 30


async def test_an_oversized_file_is_refused_reported_and_counted(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-big")
    document = nvcf("req-big", 50, {"blob": ""})
    document["partialResponse"]["blob"] = "x" * (300_000 - len(json.dumps(document)))
    with monitor.watch("req-big", directory) as watch:
        write_in_place(directory, document)
        assert (directory / "progress").stat().st_size == 300_000
        await until(lambda: rejected(metrics, "too_large") == 1)
        assert watch.pending() is None
        assert watch.take_problem() == (
            "progress file of 300000 bytes exceeds the 250000-byte limit"
        )
        assert watch.take_problem() is None

        write_in_place(directory, nvcf("req-big", 60))  # a later valid version goes through
        assert (await next_update(watch)).percent == 60
    assert updates(metrics) == 1


async def test_the_size_limit_admits_exactly_250000_bytes(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-edge")
    document = nvcf("req-edge", 1, {"blob": ""})
    document["partialResponse"]["blob"] = "y" * (
        MAX_PROGRESS_FILE_BYTES - len(json.dumps(document))
    )
    with monitor.watch("req-edge", directory) as watch:
        write_in_place(directory, document)
        update = await next_update(watch)
        assert len(update.body) == len(
            json.dumps(document["partialResponse"], separators=(",", ":"))
        )
        write_in_place(directory, json.dumps(document).encode() + b" ")
        await until(lambda: rejected(metrics, "too_large") == 1)
        assert watch.take_problem() == (
            f"progress file of {MAX_PROGRESS_FILE_BYTES + 1} bytes exceeds the "
            f"{MAX_PROGRESS_FILE_BYTES}-byte limit"
        )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"id": "req-bad", "progress": 1', "progress file is not valid JSON ("),
        (b"", "progress file is empty"),
    ],
    ids=["truncated", "empty"],
)
async def test_a_file_that_stays_unparsable_is_reported_after_re_reads(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics, data: bytes, problem: str
) -> None:
    directory = request_dir(base, "req-bad")
    with monitor.watch("req-bad", directory) as watch:
        write_in_place(directory, data)
        await until(lambda: rejected(metrics, "malformed") == 1)
        message = watch.take_problem()
        assert message is not None
        assert message.startswith(problem)
        assert watch.pending() is None
    assert updates(metrics) == 0


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([1, 2], "progress file must hold a JSON object, not an array"),
        (nvcf("req-x", 101), "'progress' must be a number from 0 to 100, not 101"),
        (nvcf("req-x", -1), "'progress' must be a number from 0 to 100, not -1"),
        (nvcf("req-x", 100.5), "'progress' must be a number from 0 to 100, not 100.5"),
        (nvcf("req-x", -0.5), "'progress' must be a number from 0 to 100, not -0.5"),
        (nvcf("req-x", 1e30), "'progress' must be a number from 0 to 100, not 1e+30"),
        (nvcf("req-x", "50"), "'progress' must be a number from 0 to 100, not '50'"),
        (nvcf("req-x", True), "'progress' must be a number from 0 to 100, not a boolean"),
        (nvcf("req-x", None), "'progress' must be a number from 0 to 100, not null"),
        (
            {"taskId": "t", "percentComplete": 100.01},
            "'percentComplete' must be a number from 0 to 100, not 100.01",
        ),
        ({"id": "req-x"}, "'progress' is missing"),
        (nvcf("req-x", 5, [1]), "'partialResponse' must be a JSON object, not an array"),
        (nvcf("req-x", 5, "text"), "'partialResponse' must be a JSON object, not a string"),
        ({"id": 5, "progress": 5}, "'id' must be a string, not a number"),
        ({"status": "busy"}, "progress file has neither 'progress' (NVCF) nor 'percentComplete'"),
        (nvcf("req-x", 5, nested(300)), "'partialResponse' cannot be re-encoded ("),
        (
            {"taskId": "t", "percentComplete": 5, "metadata": "m"},
            "'metadata' must be a JSON object, not a string",
        ),
    ],
)
async def test_an_invalid_document_is_refused_with_what_is_wrong(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics, document: Any, problem: str
) -> None:
    directory = request_dir(base, "req-x")
    with monitor.watch("req-x", directory) as watch:
        write_in_place(directory, document)
        await until(lambda: rejected(metrics, "malformed") == 1)
        message = watch.take_problem()
        assert message is not None
        assert message.startswith(problem)
        assert watch.pending() is None
    assert updates(metrics) == 0


@pytest.mark.parametrize(
    "data",
    [
        b'{"id": "req-nan", "progress": NaN}',  # what Python's json.dump writes for nan
        b'{"id": "req-nan", "progress": Infinity, "partialResponse": {}}',
        b'{"id": "req-nan", "progress": -Infinity}',
        b'{"id": "req-nan", "progress": 1e400}',  # a JSON number, but infinite as a double
    ],
    ids=["nan", "infinity", "minus-infinity", "overflow"],
)
async def test_a_non_finite_percent_is_refused_without_re_reads(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics, data: bytes
) -> None:
    directory = request_dir(base, "req-nan")
    with monitor.watch("req-nan", directory) as watch:
        write_in_place(directory, data)
        await until(lambda: rejected(metrics, "malformed") == 1)
        message = watch.take_problem()
        assert message is not None
        assert message.startswith("progress file is not valid JSON (")
        assert message.endswith(
            "; NaN and Infinity are not JSON numbers (Python's json writes them)"
        )
        write_in_place(directory, nvcf("req-nan", 5))
        assert (await next_update(watch)).percent == 5
    assert rejected(metrics, "malformed") == 1


async def test_a_fractional_percent_is_relayed_as_its_integer_part(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-float")
    with monitor.watch("req-float", directory) as watch:
        for written, relayed in [(0.5, 0), (55.5, 55), (55.55555555555556, 55), (99.99, 99),
                                 (100.0, 100), (-0.0, 0), (7.0, 7)]:  # fmt: skip
            write_in_place(directory, nvcf("req-float", written, {"at": written}))
            update = await next_update(watch)
            assert (update.percent, update.body) == (relayed, orjson.dumps({"at": written}))
        writer = TaskProgressWriter(task_id="task-1", progress_file=directory / "progress")
        writer.report(12)
        assert (await next_update(watch)).percent == 12
        write_in_place(directory, {"taskId": "task-1", "percentComplete": 33.9})
        assert (await next_update(watch)).percent == 33
        assert watch.take_problem() is None
    assert rejected(metrics, "malformed") == 0


async def test_refusals_warn_once_per_reason_and_request_then_log_at_debug(
    monitor: ProgressMonitor,
    base: Path,
    metrics: WorkerMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nvcf_sidecar.worker.progress")
    dir_a, dir_b = request_dir(base, "req-a"), request_dir(base, "req-b")
    refused = [nvcf("req-a", 100.5), b'{"id": "req-a", "progress": NaN}', nvcf("req-a", True),
               nvcf("req-a", "50"), nvcf("req-a", 100.5, {"again": 1})]  # fmt: skip
    with monitor.watch("req-a", dir_a) as watch_a, monitor.watch("req-b", dir_b):
        for count, document in enumerate(refused, start=1):
            write_in_place(dir_a, document)
            await until(lambda count=count: rejected(metrics, "malformed") == count)
        assert watch_a.take_problem() == "'progress' must be a number from 0 to 100, not 100.5"
        write_in_place(dir_a, nvcf("req-a", 50, {"blob": "x" * 300_000}))
        await until(lambda: rejected(metrics, "too_large") == 1)
        write_in_place(dir_b, nvcf("req-b", -1))
        await until(lambda: rejected(metrics, "malformed") == 6)

    refusals = [r for r in caplog.records if r.message.startswith("progress file refused")]
    warnings = [(r.request_id, r.reason) for r in refusals if r.levelno == logging.WARNING]
    assert warnings == [("req-a", "malformed"), ("req-a", "too_large"), ("req-b", "malformed")]
    debug = [(r.request_id, r.reason, r.refusals) for r in refusals if r.levelno == logging.DEBUG]
    assert debug == [("req-a", "malformed", n) for n in (2, 3, 4, 5)]
    assert {r.message for r in refusals if r.levelno == logging.DEBUG} == {
        "progress file refused again"
    }


async def test_integral_floats_and_absent_or_null_partial_responses_are_accepted(
    monitor: ProgressMonitor, base: Path
) -> None:
    directory = request_dir(base, "req-lenient")
    with monitor.watch("req-lenient", directory) as watch:
        write_in_place(directory, nvcf("req-lenient", 50.0))
        assert (await next_update(watch)).percent == 50
        write_in_place(directory, {"id": "req-lenient", "progress": 70, "partialResponse": None})
        update = await next_update(watch)
        assert (update.percent, update.body) == (70, b"{}")


async def test_routing_prefers_a_watched_id_then_falls_back_to_the_directory(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    dir_a, dir_b = request_dir(base, "req-a"), request_dir(base, "req-b")
    with monitor.watch("req-a", dir_a) as watch_a, monitor.watch("req-b", dir_b) as watch_b:
        assert monitor.watched == 2
        write_in_place(dir_a, nvcf("req-b", 10, {"from": "a"}))  # NVIDIA's rule: the id wins
        assert (await next_update(watch_b)).body == b'{"from":"a"}'
        assert watch_a.pending() is None

        write_in_place(dir_a, nvcf("req-elsewhere", 20))  # id of no watched request
        assert (await next_update(watch_a)).percent == 20
        write_in_place(dir_b, nvcf(None, 30))  # no id at all
        assert (await next_update(watch_b)).percent == 30
    assert rejected(metrics, "unknown_request") == 0


async def test_a_file_of_no_watched_request_is_counted_unknown(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    with monitor.watch("req-mine", request_dir(base, "req-mine")) as watch:
        write_in_place(request_dir(base, "stranger"), nvcf("nobody", 10))
        await until(lambda: rejected(metrics, "unknown_request") == 1)
        write_in_place(request_dir(base, "other"), {"taskId": "t", "percentComplete": 5})
        await until(lambda: rejected(metrics, "unknown_request") == 2)
        assert watch.pending() is None
        assert watch.take_problem() is None
    assert updates(metrics) == 0


async def test_the_nvct_tasks_form_is_routed_by_directory(
    monitor: ProgressMonitor, base: Path
) -> None:
    directory = request_dir(base, "req-task")
    writer = TaskProgressWriter(task_id="task-77", progress_file=directory / "progress")
    with monitor.watch("req-task", directory) as watch:
        writer.report(40, name="result-1", metadata={"epoch": 3})
        update = await next_update(watch)
        assert (update.percent, update.body) == (40, b'{"epoch":3}')
        writer.report(100)
        update = await next_update(watch)
        assert (update.percent, update.body) == (100, b"{}")


async def test_directories_created_after_start_and_after_the_watch_are_picked_up(
    monitor: ProgressMonitor, base: Path
) -> None:
    directory = base / "req-late"
    with monitor.watch("req-late", directory) as watch:
        directory.mkdir()  # the observer adds a watch for it
        write_in_place(directory, nvcf("req-late", 1))  # at once: races the watch being added
        assert (await next_update(watch)).percent == 1
        write_in_place(directory, nvcf("req-late", 2))
        assert (await next_update(watch)).percent == 2


async def test_a_file_written_before_the_watch_is_picked_up(
    monitor: ProgressMonitor, base: Path
) -> None:
    directory = request_dir(base, "req-early")
    write_in_place(directory, nvcf("req-early", 15, {"early": 1}))
    with monitor.watch("req-early", directory) as watch:
        update = await next_update(watch)
        assert (update.percent, update.body) == (15, b'{"early":1}')


async def test_a_symlinked_progress_file_is_refused(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(nvcf("req-link", 99, {"secret": "s"})))
    directory = request_dir(base, "req-link")
    with monitor.watch("req-link", directory) as watch:
        (directory / "progress").symlink_to(outside)
        await until(lambda: rejected(metrics, "malformed") == 1)
        assert watch.take_problem() == "progress file is a symbolic link; links are not followed"
        assert watch.pending() is None


async def test_a_fifo_named_progress_is_refused_without_blocking(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-fifo")
    with monitor.watch("req-fifo", directory) as watch:
        os.mkfifo(directory / "progress")
        await until(lambda: rejected(metrics, "malformed") == 1)
        assert watch.take_problem() == "progress file is not a regular file"


async def test_cancelled_waits_lose_no_update(monitor: ProgressMonitor, base: Path) -> None:
    directory = request_dir(base, "req-cancel")
    with monitor.watch("req-cancel", directory) as watch:
        waiting = asyncio.create_task(watch.next_update())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        write_in_place(directory, nvcf("req-cancel", 42))
        got: ProgressUpdate | None = None
        async with asyncio.timeout(WAIT):
            while got is None:  # raced against a timer, as the request races it, and cancelled
                try:
                    got = await asyncio.wait_for(watch.next_update(), 0.0005)
                except TimeoutError:
                    continue
        assert got.percent == 42
        assert watch.pending() is None


async def test_leaving_a_watch_unregisters_it(
    monitor: ProgressMonitor, base: Path, metrics: WorkerMetrics
) -> None:
    directory = request_dir(base, "req-done")
    with monitor.watch("req-done", directory) as watch:
        assert monitor.watched == 1
        write_in_place(directory, nvcf("req-done", 10))
        await next_update(watch)
    assert monitor.watched == 0

    write_in_place(directory, nvcf("req-done", 20))
    await until(lambda: rejected(metrics, "unknown_request") == 1)
    assert watch.pending() is None
    with pytest.raises(ProgressMonitorError, match="closed"):
        await watch.next_update()
    with monitor.watch("req-done", directory) as again:  # the id can be watched anew
        write_in_place(directory, nvcf("req-done", 30))
        assert (await next_update(again)).percent == 30


async def test_duplicate_and_misplaced_watches_are_refused(
    monitor: ProgressMonitor, base: Path, tmp_path: Path
) -> None:
    directory = request_dir(base, "req-dup")
    with monitor.watch("req-dup", directory):
        with pytest.raises(ProgressMonitorError, match="already watched"):
            monitor.watch("req-dup", base / "elsewhere").__enter__()
        with pytest.raises(ProgressMonitorError, match="already watched"):
            monitor.watch("req-other", directory).__enter__()
        assert monitor.watched == 1
    with pytest.raises(ProgressMonitorError, match="not inside"):
        monitor.watch("req-out", tmp_path / "outside").__enter__()
    with pytest.raises(ProgressMonitorError, match="not inside"):
        monitor.watch("req-base", base).__enter__()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (base / "req-link").symlink_to(outside)  # a request directory swapped for a link
    with pytest.raises(ProgressMonitorError, match="not inside"):
        monitor.watch("req-link", base / "req-link").__enter__()
    assert monitor.watched == 0


async def test_the_monitor_creates_its_base_dir_and_stops_cleanly(
    tmp_path: Path, metrics: WorkerMetrics
) -> None:
    base = tmp_path / "a" / "b"
    before = set(threading.enumerate())
    async with ProgressMonitor(base, metrics) as monitor:
        assert base.is_dir()
        directory = request_dir(base, "req-stop")
        with monitor.watch("req-stop", directory) as watch:
            write_in_place(directory, nvcf("req-stop", 10))
            await next_update(watch)
            with open(directory / "progress", "w") as stream:  # noqa: ASYNC230
                stream.write('{"id": "req-stop"')  # stopping while a re-read is pending
                stream.flush()
                await asyncio.sleep(0.05)
    started = [
        thread
        for thread in set(threading.enumerate()) - before
        if not thread.name.startswith(("asyncio_", "uvloop_"))  # the loop's default executor
    ]
    assert started == []
    write_in_place(directory, nvcf("req-stop", 20))  # no observer: nothing happens, no error
    with pytest.raises(ProgressMonitorError, match="not running"):
        monitor.watch("req-stop", directory).__enter__()
    assert rejected(metrics, "malformed") == 0


@pytest.mark.skipif(not inotify_available(), reason="inotify is Linux's")
def test_the_inotify_watcher_never_loads_watchdog(tmp_path: Path) -> None:
    # watchdog is about 1 MiB of resident imports, needed only by its own watcher
    # (docs/performance.md, the sidecar's idle memory).
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from nvcf_sidecar.worker.metrics import WorkerMetrics\n"
        "from nvcf_sidecar.worker.progress import ProgressMonitor\n"
        "async def main():\n"
        "    async with ProgressMonitor(Path(sys.argv[1]), WorkerMetrics()) as monitor:\n"
        "        print(monitor.source)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'watchdog'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "base")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split("\n")[:2] == ["inotify", "[]"]
