"""Instance processes left by a platform that was killed: a new backend stops exactly those
(the recorded start time guards against a reused pid)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from nvcf_platform.backends.leftovers import record_start, stop_leftovers


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )


def test_a_recorded_live_process_group_is_stopped_and_its_record_removed(tmp_path: Path) -> None:
    process = _sleeper()
    try:
        directory = tmp_path / "instances" / "abc"
        directory.mkdir(parents=True)
        record_start(directory, "server", process.pid)
        assert (directory / "server.pid").exists()

        assert stop_leftovers(tmp_path / "instances") == [process.pid]
        assert process.wait(timeout=10) < 0
        assert not (directory / "server.pid").exists()
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_record_whose_pid_now_belongs_to_another_process_is_left_alone(tmp_path: Path) -> None:
    process = _sleeper()
    try:
        directory = tmp_path / "instances" / "abc"
        directory.mkdir(parents=True)
        (directory / "server.pid").write_text(f"{process.pid} 1\n")  # another start time
        (directory / "sidecar.pid").write_text("not a record\n")

        assert stop_leftovers(tmp_path / "instances") == []
        time.sleep(0.1)
        assert process.poll() is None
        assert not list(directory.glob("*.pid"))
    finally:
        process.kill()
        process.wait(timeout=10)


def test_no_instances_directory_is_nothing_to_do(tmp_path: Path) -> None:
    assert stop_leftovers(tmp_path / "missing") == []
