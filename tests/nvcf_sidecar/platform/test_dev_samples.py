"""`nvcf-sidecar dev` runs NVIDIA's samples unchanged: what a wrong health endpoint answers is
shown, servers run in a configured directory and read their secrets as on NVCF.

Real processes on loopback (`nvcf-sidecar dev` with nats-server, the platform, the hello example
and its sidecar).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from harness.ports import free_ports
from harness.processes import StartProcess

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[3]
HELLO = ROOT / "examples" / "byoc" / "hello" / "server.py"
DEV = [sys.executable, "-m", "nvcf_sidecar.cli", "dev"]


def test_a_wrong_health_endpoint_is_shown_with_the_servers_answer(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, inference_port = free_ports(2)
    command = [*DEV, "--port", str(platform_port), "--timeout", "5"]
    command += ["--inference-port", str(inference_port), "--health-endpoint", "/wrong"]
    command += ["--", sys.executable, str(HELLO), "--port", str(inference_port)]
    dev = start_process(command, name="dev")
    assert dev.wait_exit(60) == 1
    output = dev.log_text()
    url = f"http://127.0.0.1:{inference_port}/wrong"
    # While waiting: the answer as soon as it comes; at the end: the endpoint and its answer.
    assert f"[dev] server-function: {url} answers 404\n" in output
    error = re.search(r"^\[dev\] error: not ready within 5 s: (.*)$", output, re.M)
    assert error is not None, output
    assert error.group(1).startswith(f"server-function ({url} answers 404); sidecar-function-1 (")
