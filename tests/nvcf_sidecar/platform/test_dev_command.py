"""`nvcf-sidecar dev`: the hello example served end to end, a clean stop, a crashing server.

Real processes on loopback: `nvcf-sidecar dev` starts nats-server, the platform, the example's
aiohttp server and a sidecar.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from harness.http import http_request
from harness.ports import free_ports
from harness.processes import ManagedProcess, StartProcess

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[3]
HELLO = ROOT / "examples" / "byoc" / "hello" / "server.py"
DEV = [sys.executable, "-m", "nvcf_sidecar.cli", "dev"]


def gone(pid: int) -> bool:
    """No such process (or only a zombie that is not ours to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def printed(process: ManagedProcess, pattern: str) -> re.Match[str]:
    match = re.search(pattern, process.log_text(), re.MULTILINE)
    assert match is not None, f"{pattern!r} not in the output of {process.name}"
    return match


def test_dev_serves_the_hello_example_and_stops_everything(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, inference_port = free_ports(2)
    dev = start_process(
        [
            *DEV,
            "--port",
            str(platform_port),
            "--inference-port",
            str(inference_port),
            "--api-key",
            "test-key",
            "--work-dir",
            str(tmp_path / "dev"),
            "--",
            sys.executable,
            str(HELLO),
            "--port",
            str(inference_port),
        ],
        name="dev",
    )
    dev.wait_for_log("[dev] Ctrl-C stops everything.", timeout=60)
    url = printed(dev, r"^\[dev\] ready: (\S+)$").group(1)
    assert url.startswith(f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/")
    curl = printed(dev, r"^\[dev\]   curl .*'Authorization: Bearer (\S+)'.*$")
    key = curl.group(1)
    assert key == "test-key"
    assert "Accept: text/event-stream" in dev.log_text()
    pid_line = printed(dev, r"^\[dev\] pids: .*$").group(0)
    pids = {name: int(pid) for name, pid in re.findall(r"(\S+)=(\d+)", pid_line)}
    assert set(pids) == {"nats-server", "platform", "server-function", "sidecar-function-1"}

    response = http_request(
        "POST",
        url,
        body=json.dumps({"hello": "world"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["echo"] == {"hello": "world"}
    assert answer["request_id"] == response.headers["nvcf-reqid"]

    stream = http_request(
        "POST",
        url,
        body=b"{}",
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
        timeout=30,
    )
    assert stream.status == 200
    assert stream.body.count(b"data: ") == 5

    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGTERM)  # the dev process alone, as a supervisor would
    assert dev.wait_exit(30) == 0
    for name, pid in pids.items():
        assert gone(pid), f"{name} (pid {pid}) is still running"
    assert "[dev] stopped" in dev.log_text()


def test_dev_reports_a_crashing_server_and_exits_non_zero(start_process: StartProcess) -> None:
    platform_port, inference_port = free_ports(2)
    crash = 'import sys; print("boom"); sys.exit(3)'
    dev = start_process(
        [
            *DEV,
            "--port",
            str(platform_port),
            "--inference-port",
            str(inference_port),
            "--",
            sys.executable,
            "-c",
            crash,
        ],
        name="dev",
    )
    assert dev.wait_exit(60) != 0
    output = dev.log_text()
    assert "server-function (the function's server:" in output, output
    assert "exited with exit code 3" in output, output
    assert "boom" in output


def test_dev_without_a_command_is_a_usage_error(start_process: StartProcess) -> None:
    dev = start_process([*DEV, "--port", "8080"], name="dev")
    assert dev.wait_exit(30) == 2
    assert "the function's server command is missing" in dev.log_text()
