"""The harness itself: ManagedProcess waits fail fast and stop() leaves no process behind."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from harness.ports import free_port, free_ports
from harness.processes import HarnessError, ProcessExited, StartProcess


def process_gone(pid: int) -> bool:
    """True when `pid` no longer exists or is a zombie awaiting its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2 :].split()[0] == "Z"


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert 0 < free_port() < 65536


def test_wait_http_ok_succeeds_once_the_server_answers(start_process: StartProcess) -> None:
    port = free_port()
    server = start_process(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], name="http"
    )
    server.wait_http_ok(f"http://127.0.0.1:{port}/", timeout=30)
    assert server.running


def test_wait_http_ok_fails_fast_with_the_log_when_the_process_exits(
    start_process: StartProcess,
) -> None:
    crashing = start_process(
        [sys.executable, "-c", "print('boom before listening'); raise SystemExit(3)"]
    )
    began = time.monotonic()
    with pytest.raises(ProcessExited, match=r"(?s)exited with status 3.*boom before listening"):
        crashing.wait_http_ok(f"http://127.0.0.1:{free_port()}/", timeout=60)
    assert time.monotonic() - began < 10


def test_wait_http_ok_times_out_naming_the_last_attempt(start_process: StartProcess) -> None:
    idle = start_process([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(HarnessError, match=r"(?s)timed out after 0.3 s.*last attempt"):
        idle.wait_http_ok(f"http://127.0.0.1:{free_port()}/", timeout=0.3)


def test_stop_kills_the_whole_process_group(start_process: StartProcess, tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    parent = start_process(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            # Written then renamed, so the file never exists empty: a reader that sees it
            # reads the whole pid.
            f"open({str(child_pid_file)!r} + '.part', 'w').write(str(child.pid))\n"
            f"import os; os.replace({str(child_pid_file)!r} + '.part', {str(child_pid_file)!r})\n"
            "time.sleep(60)\n",
        ],
        name="parent",
    )
    parent.wait_for(child_pid_file.exists, timeout=30, what="the child's pid file")
    child_pid = int(child_pid_file.read_text())

    parent.stop()

    assert parent.returncode is not None
    assert process_gone(child_pid)


def test_stop_kills_a_process_that_ignores_sigterm(start_process: StartProcess) -> None:
    stubborn = start_process(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring SIGTERM', flush=True)\n"
            "time.sleep(60)\n",
        ]
    )
    stubborn.wait_for_log("ignoring SIGTERM", timeout=30)
    assert stubborn.stop(timeout=0.3) == -9
    assert stubborn.stop() == -9  # idempotent
