"""`nvcf-sidecar dev` runs the PyTriton example as NVCF does: ready once its model is, invoked
with Predict-v2, and its whole process tree (PyTriton's `tritonserver` too) stopped and restarted.

Real processes on loopback: `nvcf-sidecar dev --config` with nats-server, the platform, the
pytriton_sleeper example (PyTriton, whose `tritonserver` runs in a session of its own) and its
sidecar. Triton's three ports are free ones, passed with the example's flags.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.http import HttpResponse, http_request
from harness.ports import free_ports
from harness.processes import StartProcess

pytestmark = [pytest.mark.nats, pytest.mark.triton, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = ROOT / "examples" / "byoc" / "pytriton_sleeper"
DEV = [sys.executable, "-m", "nvcf_sidecar.cli", "dev"]
READY = "[dev] Ctrl-C stops everything."
KEY = "test-key"
MODEL = "timed_sleeper"
START_TIMEOUT = 120.0  # PyTriton starts Triton, then loads the model: seconds on a busy machine
RESTART_LIMIT = 45.0  # SIGKILL of the server to an answered call: well under a 62 s empty 504


def predict_v2(seconds: float) -> dict[str, object]:
    """The example README's body: one FP32 `sleep_duration`."""
    return {
        "inputs": [{"name": "sleep_duration", "datatype": "FP32", "shape": [1], "data": [seconds]}]
    }


class Sleeper:
    """`nvcf-sidecar dev --config` running the pytriton_sleeper example, on free ports."""

    def __init__(self, start_process: StartProcess, tmp_path: Path, home: Path, *args: str) -> None:
        self.platform_port, self.http_port, grpc_port, metrics_port = free_ports(4)
        config = tmp_path / "functions.toml"
        command = ["server.py", "--http-port", str(self.http_port)]
        command += ["--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
        # cwd: the example runs from its own folder; PYTRITON_HOME: its IPC socket paths must
        # stay short. The sidecar re-checks the server's health twice a second.
        config.write_text(
            f"""
[[functions]]
name = "sleeper"
cwd = {json.dumps(str(SLEEPER))}
command = {json.dumps([sys.executable, *command])}
inference_port = {self.http_port}
default_invocation_path = "/v2/models/{MODEL}/infer"
model = "{MODEL}"
env = {{ PYTRITON_HOME = {json.dumps(str(home))} }}
sidecar_args = ["--health-check-interval", "0.5s"]
"""
        )
        argv = [*DEV, "--port", str(self.platform_port), "--api-key", KEY]
        self.dev = start_process([*argv, "--config", str(config), *args], name="dev")

    @property
    def model_ready_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL}/ready"

    def printed(self, pattern: str) -> re.Match[str]:
        match = re.search(pattern, self.dev.log_text(), re.MULTILINE)
        assert match is not None, f"{pattern!r} not in the output of dev"
        return match

    def invoke(self, seconds: float, *, timeout: float = 30.0) -> HttpResponse:
        """pexec with a Predict-v2 body, following 202s with status polls until the answer."""
        function_id = self.printed(r"^\[dev\] function sleeper, id (\S+):$").group(1)
        base = f"http://127.0.0.1:{self.platform_port}/v2/nvcf/pexec"
        headers = {"Authorization": f"Bearer {KEY}", "NVCF-POLL-SECONDS": "1"}
        deadline = time.monotonic() + timeout
        answer = http_request(
            "POST",
            f"{base}/functions/{function_id}",
            json_body=predict_v2(seconds),
            headers=headers,
            timeout=timeout,
        )
        while answer.status == 202:
            assert time.monotonic() < deadline, f"still 202 after {timeout:g} s: {answer.body!r}"
            request_id = answer.headers["nvcf-reqid"]
            answer = http_request(
                "GET", f"{base}/status/{request_id}", headers=headers, timeout=timeout
            )
        return answer

    def assert_slept(self, answer: HttpResponse, seconds: float) -> None:
        assert answer.status == 200, answer.body
        result = answer.json()
        assert result["model_name"] == MODEL
        outputs = {output["name"]: output["data"] for output in result["outputs"]}
        assert outputs == {
            "sleep_duration": [seconds],
            "request_id": [answer.headers["nvcf-reqid"]],
        }

    def interrupt(self, timeout: float = 60.0) -> None:
        """Ctrl-C to dev alone; it must stop everything and exit 0 within `timeout` s."""
        assert self.dev.pid is not None
        os.kill(self.dev.pid, signal.SIGINT)
        assert self.dev.wait_exit(timeout) == 0
        assert "[dev] stopped" in self.dev.log_text()


# -- /proc: a process tree and its tritonservers --------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ... (None: gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def tree(root: int) -> dict[int, tuple[str, str]]:
    """Live descendants of `root`: pid -> (command name, start time), the pair that names one
    process even if its pid is reused later."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, tuple[str, str]] = {}
    queue = [root]
    while queue:
        parent = queue.pop()
        for pid in [pid for pid, ppid in parents.items() if ppid == parent]:
            fields = _stat(pid)
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if fields is not None:
                found[pid] = (name, fields[19])
                queue.append(pid)
    return found


def alive(pid: int, start_time: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start_time


def assert_all_gone(processes: dict[int, tuple[str, str]], timeout: float = 10.0) -> None:
    """Every process of `processes` exits within `timeout` s (bounded: dev has already exited,
    so this only lets the kernel finish what dev waited for)."""
    deadline = time.monotonic() + timeout
    while left := {p: n for p, (n, start) in processes.items() if alive(p, start)}:
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.05)


def tritonservers(root: int) -> set[tuple[int, str]]:
    return {(pid, start) for pid, (name, start) in tree(root).items() if name == "tritonserver"}


@pytest.fixture
def pytriton_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="pytriton-"))  # short: Triton's IPC socket paths
    yield home
    shutil.rmtree(home, ignore_errors=True)


# -- the tests ------------------------------------------------------------------------------------


def test_dev_is_ready_once_the_pytriton_model_is_and_ctrl_c_leaves_no_process_behind(
    start_process: StartProcess, tmp_path: Path, pytriton_home: Path
) -> None:
    sleeper = Sleeper(start_process, tmp_path, pytriton_home)
    sleeper.dev.wait_for_log("[dev] ready: ", timeout=START_TIMEOUT)
    # The model endpoint (not Triton's /v2/health/ready, 200 before bind()) gated the start.
    assert http_request("GET", sleeper.model_ready_url, timeout=5).status == 200
    output = sleeper.dev.log_text()
    active = sleeper.printed(r"^\[dev\] function sleeper version \S+: ACTIVE$").start()
    assert active < output.index("[dev] ready: ")
    sleeper.dev.wait_for_log(READY, timeout=10)

    sleeper.assert_slept(sleeper.invoke(1.0), 1.0)

    assert sleeper.dev.pid is not None
    processes = tree(sleeper.dev.pid)
    names = sorted(name for name, _ in processes.values())
    assert {"nats-server", "tritonserver"} <= set(names), names
    sleeper.interrupt()
    assert_all_gone(processes)


def test_dev_restart_replaces_a_killed_pytriton_server_once_its_tritonserver_is_gone(
    start_process: StartProcess, tmp_path: Path, pytriton_home: Path
) -> None:
    sleeper = Sleeper(start_process, tmp_path, pytriton_home, "--restart")
    sleeper.dev.wait_for_log(READY, timeout=START_TIMEOUT)
    sleeper.assert_slept(sleeper.invoke(0.5), 0.5)
    assert sleeper.dev.pid is not None
    dev_pid = sleeper.dev.pid
    sleeper.dev.wait_for_log("[dev] instance sleeper-1: ready", timeout=30)
    server = int(sleeper.printed(r"^\[dev\] instance sleeper-1: server pid (\d+)").group(1))
    (old,) = tritonservers(server)  # PyTriton's, in a session of its own

    # PyTriton asks for SIGTERM to its tritonserver when the server dies, but Triton takes
    # seconds to shut down and keeps its ports meanwhile: the platform must wait for it before
    # the new server starts. Watch the tree while dev restarts: never two tritonservers at once.
    overlaps: list[set[tuple[int, str]]] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            if len(seen := tritonservers(dev_pid)) > 1:
                overlaps.append(seen)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        killed = time.monotonic()
        os.kill(server, signal.SIGKILL)
        sleeper.dev.wait_for_log("[dev] instance sleeper-1: ready again", timeout=60)
        sleeper.assert_slept(sleeper.invoke(0.5), 0.5)
        assert time.monotonic() - killed < RESTART_LIMIT
    finally:
        watching.set()
        watcher.join(timeout=5)

    # The platform restarted the server in place, once the old one's tritonserver was gone.
    fresh = int(
        sleeper.printed(r"^\[dev\] instance sleeper-1: server restarted \(pid (\d+)\)$").group(1)
    )
    assert not alive(*old), f"the old tritonserver {old} outlived its server"
    assert overlaps == [], f"old and new tritonserver ran at once: {overlaps}"
    assert "already in use" not in sleeper.dev.log_text()
    (new,) = tritonservers(fresh)
    assert new != old

    processes = tree(dev_pid)
    sleeper.interrupt()
    assert_all_gone(processes)
