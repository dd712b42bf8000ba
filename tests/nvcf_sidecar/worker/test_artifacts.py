"""Scanning an output directory for the large-response zip: what ships, what is refused, and why."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from nvcf_sidecar.worker.artifacts import (
    Artifact,
    ArtifactRefused,
    RefusalReason,
    holds_no_outputs,
    open_artifact,
    removed_if_empty,
    scan_artifacts,
)
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.request import RequestLog

REQUEST_ID = "7f8e2a1c-0000-4000-8000-000000000001"


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture
def log() -> RequestLog:
    return RequestLog(logging.getLogger("test.artifacts"), REQUEST_ID)


def refused(metrics: WorkerMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "nvcf_worker_artifacts_refused_total", {"reason": reason}
    )
    return value or 0.0


def all_refused(metrics: WorkerMetrics) -> dict[str, float]:
    return {reason.value: refused(metrics, reason.value) for reason in RefusalReason}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_missing_directory_has_no_artifacts(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    assert scan_artifacts(tmp_path / "absent", log=log, metrics=metrics) == []
    assert set(all_refused(metrics).values()) == {0.0}


def test_nested_files_are_found_sorted_with_posix_relative_paths_and_sizes(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "b.txt", b"bb")
    write(out / "a" / "z.bin", b"z" * 10)
    write(out / "a" / "deeper" / "x", b"")
    write(out / "a.txt", b"a")
    (out / "empty" / "nested-empty").mkdir(parents=True)

    found = scan_artifacts(out, log=log, metrics=metrics)

    assert found == [
        Artifact("a.txt", out / "a.txt", 1),
        Artifact("a/deeper/x", out / "a" / "deeper" / "x", 0),
        Artifact("a/z.bin", out / "a" / "z.bin", 10),
        Artifact("b.txt", out / "b.txt", 2),
    ]
    assert set(all_refused(metrics).values()) == {0.0}


def test_the_progress_file_is_skipped_silently_but_deeper_ones_are_outputs(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "progress", b'{"id": "x", "progress": 5}')
    write(out / "sub" / "progress", b"{}")
    write(out / "result.json", b"{}")

    with caplog.at_level(logging.DEBUG, "test.artifacts"):
        found = scan_artifacts(out, log=log, metrics=metrics)

    assert [artifact.relative for artifact in found] == ["result.json", "sub/progress"]
    assert set(all_refused(metrics).values()) == {0.0}
    assert not caplog.records


def test_only_progress_means_no_artifacts(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "progress", b"{}")
    assert scan_artifacts(out, log=log, metrics=metrics) == []


def test_the_quick_check_says_no_outputs_only_when_the_full_scan_would_find_none(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    assert holds_no_outputs(out)  # missing
    out.mkdir()
    assert holds_no_outputs(out)  # empty
    write(out / "progress", b"{}")
    assert holds_no_outputs(out)
    (out / "empty").mkdir()  # no artifact, but the full scan decides
    assert not holds_no_outputs(out)
    assert scan_artifacts(out, log=log, metrics=metrics) == []
    (out / "empty").rmdir()
    write(out / "result.json", b"{}")
    assert not holds_no_outputs(out)
    linked = tmp_path / "linked"
    linked.symlink_to(out / "missing-target")
    assert not holds_no_outputs(linked)  # a symlinked directory: the full scan refuses it
    assert not holds_no_outputs(out / "result.json")  # not a directory


def test_a_final_answers_check_removes_only_an_empty_directory(tmp_path: Path) -> None:
    out = tmp_path / REQUEST_ID
    assert removed_if_empty(out)  # missing: nothing to ship, nothing to remove
    out.mkdir()
    assert removed_if_empty(out)
    assert not out.exists()

    write(out / "progress", b"{}")  # anything in it: the listing decides, nothing is removed
    assert not removed_if_empty(out)
    assert (out / "progress").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    linked = tmp_path / "linked"
    linked.symlink_to(empty)
    assert not removed_if_empty(linked)  # a link is never followed nor removed
    assert linked.is_symlink()
    assert empty.is_dir()
    assert not removed_if_empty(out / "progress")  # not a directory
    assert (out / "progress").exists()


def test_partial_files_are_refused_logged_with_the_request_id_and_counted(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "image.png.partial", b"half")
    write(out / "sub" / "video.mp4.partial", b"half")
    write(out / "image.png", b"whole")

    with caplog.at_level(logging.WARNING, "test.artifacts"):
        found = scan_artifacts(out, log=log, metrics=metrics)

    assert [artifact.relative for artifact in found] == ["image.png"]
    assert refused(metrics, "partial") == 2
    records = [record for record in caplog.records if getattr(record, "reason", None)]
    assert sorted(record.__dict__["file"] for record in records) == [
        "image.png.partial",
        "sub/video.mp4.partial",
    ]
    assert {record.__dict__["request_id"] for record in records} == {REQUEST_ID}
    assert {record.__dict__["reason"] for record in records} == {"partial"}


def test_symlinks_to_files_and_directories_are_refused_and_never_followed(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    secret = write(tmp_path / "outside" / "secret.txt", b"do not ship")
    out = tmp_path / REQUEST_ID
    write(out / "real.txt", b"ok")
    (out / "to-secret").symlink_to(secret)
    (out / "to-outside-dir").symlink_to(secret.parent, target_is_directory=True)
    (out / "to-real").symlink_to(out / "real.txt")  # inside, still a link
    (out / "dangling").symlink_to(tmp_path / "nowhere")
    (out / "sub").mkdir()
    (out / "sub" / "loop").symlink_to(out, target_is_directory=True)

    found = scan_artifacts(out, log=log, metrics=metrics)

    assert [artifact.relative for artifact in found] == ["real.txt"]
    assert refused(metrics, "symlink") == 5


def test_fifos_and_sockets_are_refused_as_special_without_blocking(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "real.txt", b"ok")
    os.mkfifo(out / "pipe")
    os.mkfifo(out / "named.partial")  # a FIFO is special first, whatever its name
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    directory = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Through the directory's descriptor: a socket path is limited to 107 bytes, which a
        # deep temporary directory (a long TMPDIR) exceeds.
        listener.bind(f"/proc/self/fd/{directory}/sock")
        assert (out / "sock").is_socket()
        result: list[list[Artifact]] = []
        worker = threading.Thread(
            target=lambda: result.append(scan_artifacts(out, log=log, metrics=metrics))
        )
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "scanning blocked on a special file"
    finally:
        listener.close()
        os.close(directory)

    assert [artifact.relative for artifact in result[0]] == ["real.txt"]
    assert refused(metrics, "special") == 3
    assert refused(metrics, "partial") == 0


def test_a_response_directory_that_is_a_symlink_is_refused_whole(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "passwd", b"root:x:0:0")
    out = tmp_path / REQUEST_ID
    out.symlink_to(elsewhere, target_is_directory=True)

    assert scan_artifacts(out, log=log, metrics=metrics) == []
    assert refused(metrics, "symlink") == 1


def test_a_name_that_is_not_utf8_is_refused_as_unreadable(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "fine.txt", b"ok")
    with open(os.path.join(os.fsencode(out), b"bad-\xff.txt"), "wb") as file:
        file.write(b"x")

    found = scan_artifacts(out, log=log, metrics=metrics)

    assert [artifact.relative for artifact in found] == ["fine.txt"]
    assert refused(metrics, "unreadable") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_the_sidecar_cannot_read_is_refused_as_unreadable(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    locked = write(out / "locked.bin", b"x")
    locked.chmod(0)
    try:
        assert scan_artifacts(out, log=log, metrics=metrics) == []
    finally:
        locked.chmod(0o600)
    assert refused(metrics, "unreadable") == 1


def test_open_artifact_reads_the_scanned_file(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "a" / "b.bin", b"payload")
    [artifact] = scan_artifacts(out, log=log, metrics=metrics)

    descriptor, info = open_artifact(artifact)
    try:
        assert os.read(descriptor, 100) == b"payload"
        assert info.st_size == 7
    finally:
        os.close(descriptor)


def test_a_file_swapped_for_a_symlink_after_the_scan_is_not_followed(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    secret = write(tmp_path / "secret", b"do not ship")
    out = tmp_path / REQUEST_ID
    write(out / "result.txt", b"ok")
    [artifact] = scan_artifacts(out, log=log, metrics=metrics)
    (out / "result.txt").unlink()
    (out / "result.txt").symlink_to(secret)

    with pytest.raises(ArtifactRefused) as caught:
        open_artifact(artifact)
    assert caught.value.reason is RefusalReason.SYMLINK
    assert caught.value.relative == "result.txt"


def test_a_directory_swapped_for_a_symlink_after_the_scan_leads_outside(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    decoy = write(tmp_path / "decoy" / "result.txt", b"do not ship")
    out = tmp_path / REQUEST_ID
    write(out / "sub" / "result.txt", b"ok")
    [artifact] = scan_artifacts(out, log=log, metrics=metrics)
    (out / "sub" / "result.txt").unlink()
    (out / "sub").rmdir()
    (out / "sub").symlink_to(decoy.parent, target_is_directory=True)

    with pytest.raises(ArtifactRefused) as caught:
        open_artifact(artifact)
    assert caught.value.reason is RefusalReason.OUTSIDE


def test_a_file_swapped_for_a_fifo_after_the_scan_is_refused_without_blocking(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "result.txt", b"ok")
    [artifact] = scan_artifacts(out, log=log, metrics=metrics)
    (out / "result.txt").unlink()
    os.mkfifo(out / "result.txt")

    with pytest.raises(ArtifactRefused) as caught:
        open_artifact(artifact)
    assert caught.value.reason is RefusalReason.SPECIAL


def test_a_vanished_file_is_refused_as_unreadable(
    tmp_path: Path, log: RequestLog, metrics: WorkerMetrics
) -> None:
    out = tmp_path / REQUEST_ID
    write(out / "result.txt", b"ok")
    [artifact] = scan_artifacts(out, log=log, metrics=metrics)
    (out / "result.txt").unlink()

    with pytest.raises(ArtifactRefused) as caught:
        open_artifact(artifact)
    assert caught.value.reason is RefusalReason.UNREADABLE
    assert caught.value.vanished


@pytest.mark.parametrize("relative", ["../secret", "a/../../secret", "/etc/passwd", "a//b"])
def test_open_artifact_refuses_a_path_that_is_not_below_the_directory(
    tmp_path: Path, relative: str
) -> None:
    write(tmp_path / "secret", b"do not ship")
    out = tmp_path / REQUEST_ID
    (out / "a").mkdir(parents=True)
    forged = Artifact(relative, out / "a" / "b" / "c", 11)

    with pytest.raises(ArtifactRefused) as caught:
        open_artifact(forged)
    assert caught.value.reason is RefusalReason.OUTSIDE
