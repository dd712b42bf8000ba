"""A stack child owns its whole process tree: a helper that left the child's process group (as
PyTriton's `tritonserver` does) is stopped with it, and is gone before the child is restarted.

Real processes: a Python parent that starts a helper in its own session, the helper taking a
while to exit on SIGTERM, as `tritonserver` does. Also: a child's output reaches its log file as
written and dev's stream as whole prefixed lines, however the writes split them.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from nvcf_platform.devstack.process_tree import DescendantTracker, descendants
from nvcf_platform.devstack.stack_process import StackProcess

pytestmark = pytest.mark.timeout(30)

# The helper writes its pid, then exits 0.5 s after SIGTERM (a slow graceful stop).
HELPER = """
import os, signal, sys, time
def slow_exit(signum, frame):
    time.sleep(0.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, slow_exit)
open(sys.argv[1], "w").write(str(os.getpid()))
while True:
    time.sleep(1)
"""
# The parent starts the helper in a new session, then waits forever.
PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
while True:
    time.sleep(1)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_parent(tmp_path: Path) -> tuple[StackProcess, int]:
    pid_file = tmp_path / "helper.pid"
    process = StackProcess(
        "server-tree",
        [sys.executable, "-c", PARENT, HELPER, str(pid_file)],
        env=dict(os.environ),
        log_path=tmp_path / "server-tree.log",
    ).start()
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the helper did not start"
        time.sleep(0.02)
    helper = int(pid_file.read_text())
    assert os.getpgid(helper) != process.pid  # it left the group: killpg misses it
    return process, helper


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_stop_waits_for_a_helper_that_left_the_process_group(tmp_path: Path) -> None:
    process, helper = start_parent(tmp_path)
    process.note_descendants()
    assert helper in process.descendants()
    process.stop(timeout=5)
    assert not alive(helper)
    assert process.descendants() == []


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_after_a_sigkill_the_orphaned_helper_is_stopped_before_the_restart(
    tmp_path: Path,
) -> None:
    process, helper = start_parent(tmp_path)
    process.note_descendants()  # as dev's supervisor does every round
    os.kill(process.pid, signal.SIGKILL)
    process.wait(5)
    assert alive(helper)  # orphaned, still holding whatever it held
    started = time.monotonic()
    process.stop(timeout=5)  # what LocalStack.restart does before respawning
    assert not alive(helper)
    assert time.monotonic() - started < 5  # SIGTERM sufficed: no SIGKILL deadline reached


def test_a_tracker_never_signals_a_pid_it_did_not_see_start() -> None:
    tracker = DescendantTracker()
    tracker.note(os.getpid())
    assert os.getpid() not in tracker.alive()
    assert set(tracker.alive()) <= set(descendants([os.getpid()]))


# Output in pieces: a line split across two writes, a CRLF line, a last line with no newline.
WRITER = """
import sys, time
for piece in ("a\\nb", "c\\r\\nd"):
    sys.stdout.write(piece)
    sys.stdout.flush()
    time.sleep(0.2)
"""


def test_output_is_copied_whole_lines_with_the_prefix_and_as_written_to_the_log(
    tmp_path: Path,
) -> None:
    stream = io.StringIO()
    process = StackProcess(
        "server-writer",
        [sys.executable, "-c", WRITER],
        env=dict(os.environ),
        log_path=tmp_path / "server-writer.log",
        log_stream=stream,
    ).start()
    assert process.wait(10) == 0
    process.stop(timeout=5)  # joins the reader
    assert stream.getvalue() == "[server-writer] a\n[server-writer] bc\n[server-writer] d\n"
    assert (tmp_path / "server-writer.log").read_bytes() == b"a\nbc\r\nd"
