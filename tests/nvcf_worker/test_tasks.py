"""NVCF Tasks: the progress file named by the task environment, and result files."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nvcf_worker import TaskProgressWriter
from nvcf_worker.errors import InvalidOutputName, InvalidProgress, ProgressTooLarge
from nvcf_worker.progress import MAX_PROGRESS_FILE_BYTES
from nvcf_worker.tasks import (
    DEFAULT_RESULTS_DIR,
    PROGRESS_FILE_PATH_ENV,
    RESULTS_DIR_ENV,
    TASK_ID_ENV,
)

RFC3339_NANOS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z")


@pytest.fixture
def writer(tmp_path: Path) -> TaskProgressWriter:
    return TaskProgressWriter(
        environ={
            "NVCT_TASK_ID": "task-1",
            "NVCT_RESULTS_DIR": str(tmp_path / "results"),
            "NVCT_PROGRESS_FILE_PATH": str(tmp_path / "state" / "progress.json"),
        }
    )


def decode(data: bytes) -> dict[str, Any]:
    document = json.loads(data)
    assert isinstance(document, dict)
    return document


# -- configuration ----------------------------------------------------------------------------


def test_environment_variable_names_are_nvidias() -> None:
    assert TASK_ID_ENV == "NVCT_TASK_ID"
    assert RESULTS_DIR_ENV == "NVCT_RESULTS_DIR"
    assert PROGRESS_FILE_PATH_ENV == "NVCT_PROGRESS_FILE_PATH"


def test_writer_reads_task_id_results_dir_and_progress_path_from_the_environ(
    tmp_path: Path, writer: TaskProgressWriter
) -> None:
    assert writer.task_id == "task-1"
    assert writer.results_dir == tmp_path / "results"
    assert writer.progress_file == tmp_path / "state" / "progress.json"


def test_writer_defaults_to_the_task_runtimes_results_directory() -> None:
    writer = TaskProgressWriter(environ={})
    assert writer.task_id == ""
    assert Path("/var/task/results") == DEFAULT_RESULTS_DIR
    assert writer.results_dir == Path("/var/task/results")
    assert writer.progress_file == Path("/var/task/results/progress")


def test_writer_puts_the_progress_file_in_the_configured_results_directory() -> None:
    writer = TaskProgressWriter(environ={"NVCT_RESULTS_DIR": "/data/out"})
    assert writer.progress_file == Path("/data/out/progress")


def test_explicit_arguments_override_the_environ(tmp_path: Path) -> None:
    writer = TaskProgressWriter(
        task_id="explicit",
        results_dir=tmp_path / "r",
        progress_file=str(tmp_path / "p"),
        environ={
            "NVCT_TASK_ID": "env",
            "NVCT_RESULTS_DIR": "/env",
            "NVCT_PROGRESS_FILE_PATH": "/e",
        },
    )
    assert writer.task_id == "explicit"
    assert writer.results_dir == tmp_path / "r"
    assert writer.progress_file == tmp_path / "p"


def test_an_explicit_results_dir_moves_the_default_progress_file(tmp_path: Path) -> None:
    writer = TaskProgressWriter(results_dir=tmp_path, environ={})
    assert writer.progress_file == tmp_path / "progress"


def test_writer_reads_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVCT_TASK_ID", "from-os")
    monkeypatch.setenv("NVCT_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("NVCT_PROGRESS_FILE_PATH", raising=False)
    writer = TaskProgressWriter()
    assert writer.task_id == "from-os"
    assert writer.progress_file == tmp_path / "progress"


# -- encode -----------------------------------------------------------------------------------


def test_encode_writes_exactly_the_nvct_keys(writer: TaskProgressWriter) -> None:
    document = decode(writer.encode(40, name="run-1", metadata={"epoch": 3}))
    assert set(document) == {"taskId", "percentComplete", "name", "metadata", "lastUpdatedAt"}
    assert document["taskId"] == "task-1"
    assert document["percentComplete"] == 40
    assert document["name"] == "run-1"
    assert document["metadata"] == {"epoch": 3}


def test_encode_omits_name_and_metadata_when_not_given(writer: TaskProgressWriter) -> None:
    assert set(decode(writer.encode(0))) == {"taskId", "percentComplete", "lastUpdatedAt"}


def test_encode_is_compact_json(writer: TaskProgressWriter) -> None:
    data = writer.encode(1, metadata={"a": [1, 2]})
    assert b" " not in data


def test_last_updated_at_is_now_in_rfc3339_utc_with_nine_fractional_digits(
    writer: TaskProgressWriter,
) -> None:
    before = datetime.now(UTC)
    stamp = decode(writer.encode(10))["lastUpdatedAt"]
    after = datetime.now(UTC)
    assert RFC3339_NANOS.fullmatch(stamp), stamp
    parsed = datetime.fromisoformat(stamp[:26] + "+00:00")
    assert before.replace(microsecond=0) <= parsed <= after


@pytest.mark.parametrize("percent", [-1, 101, 50.5, True, "50", None])
def test_encode_refuses_a_percent_outside_0_to_100(
    writer: TaskProgressWriter, percent: Any
) -> None:
    with pytest.raises(InvalidProgress):
        writer.encode(percent)


@pytest.mark.parametrize("metadata", [[1], "x", 5])
def test_encode_refuses_metadata_that_is_not_a_mapping(
    writer: TaskProgressWriter, metadata: Any
) -> None:
    with pytest.raises(InvalidProgress, match="JSON object"):
        writer.encode(10, metadata=metadata)


def test_encode_refuses_metadata_that_is_not_serialisable(writer: TaskProgressWriter) -> None:
    with pytest.raises(InvalidProgress, match="JSON-serialisable"):
        writer.encode(10, metadata={"x": object()})


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_encode_refuses_nan_and_infinity_in_metadata(
    writer: TaskProgressWriter, number: float
) -> None:
    # Python would write the non-JSON token `NaN`, which no JSON parser on the platform accepts.
    with pytest.raises(InvalidProgress):
        writer.encode(10, metadata={"loss": number})


def test_encode_refuses_a_report_that_reaches_the_size_limit(writer: TaskProgressWriter) -> None:
    with pytest.raises(ProgressTooLarge) as info:
        writer.encode(10, metadata={"blob": "x" * MAX_PROGRESS_FILE_BYTES})
    assert info.value.limit == MAX_PROGRESS_FILE_BYTES


# -- report -----------------------------------------------------------------------------------


def test_report_replaces_the_progress_file_and_returns_its_path(
    tmp_path: Path, writer: TaskProgressWriter
) -> None:
    path = writer.report(10, name="run-1")
    assert path == tmp_path / "state" / "progress.json"
    assert decode(path.read_bytes())["percentComplete"] == 10
    writer.report(100, metadata={"ok": True})
    document = decode(path.read_bytes())
    assert document["percentComplete"] == 100
    assert document["metadata"] == {"ok": True}
    assert "name" not in document
    assert os.listdir(tmp_path / "state") == ["progress.json"]


def test_a_refused_report_leaves_the_progress_file_untouched(
    tmp_path: Path, writer: TaskProgressWriter
) -> None:
    path = writer.report(10)
    before = path.read_bytes()
    with pytest.raises(ProgressTooLarge):
        writer.report(20, metadata={"blob": "x" * MAX_PROGRESS_FILE_BYTES})
    with pytest.raises(InvalidProgress):
        writer.report(200)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path / "state") == ["progress.json"]


# -- open_result ------------------------------------------------------------------------------


def test_open_result_writes_partial_then_renames(
    tmp_path: Path, writer: TaskProgressWriter
) -> None:
    results = tmp_path / "results"
    with writer.open_result("model/weights.bin") as stream:
        stream.write(b"weights")
        assert (results / "model" / "weights.bin.partial").exists()
        assert not (results / "model" / "weights.bin").exists()
    assert (results / "model" / "weights.bin").read_bytes() == b"weights"
    assert os.listdir(results / "model") == ["weights.bin"]


def test_open_result_removes_the_partial_on_failure(
    tmp_path: Path, writer: TaskProgressWriter
) -> None:
    def crash() -> None:
        with writer.open_result("log.txt", "w") as stream:
            stream.write("half")
            raise RuntimeError("crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        crash()
    assert os.listdir(tmp_path / "results") == []


def test_open_result_in_text_mode_writes_utf8(tmp_path: Path, writer: TaskProgressWriter) -> None:
    with writer.open_result("summary.txt", "w") as stream:
        stream.write("é")
    assert (tmp_path / "results" / "summary.txt").read_bytes() == "é".encode()


@pytest.mark.parametrize("name", ["../escape", "/abs", "progress", "x.partial"])
def test_open_result_refuses_an_invalid_name(writer: TaskProgressWriter, name: str) -> None:
    with pytest.raises(InvalidOutputName), writer.open_result(name):
        pass
