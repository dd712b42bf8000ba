"""`make demo`'s stack (examples/demo.toml) works, and `nvcf-sidecar invoke` against it shows
progress and the result: issue 5's "done when", on free ports instead of 8080/8000/8001."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness.ports import free_ports
from harness.processes import StartProcess

pytestmark = [pytest.mark.nats, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.toml"
CLI = [sys.executable, "-m", "nvcf_sidecar.cli"]
READY = "[dev] Ctrl-C stops everything."
KEY = "nvcf-local-key"


def demo_config(target: Path, ports: list[int]) -> dict[str, str]:
    """examples/demo.toml with its servers on `ports`, run by this Python from examples/.

    Returns function name -> function id."""
    document = tomllib.loads(DEMO.read_text())
    lines = []
    ids = {}
    for function, port in zip(document["functions"], ports, strict=True):
        script, *args = function["command"].split()[1:]  # drop "python"
        args = [str(port) if arg == str(function["inference_port"]) else arg for arg in args]
        command = [sys.executable, str(DEMO.parent / script), *args]
        lines += [
            "[[functions]]",
            f"name = {json.dumps(function['name'])}",
            f"id = {json.dumps(function['id'])}",
            f"command = {json.dumps(command)}",
            f"inference_port = {port}",
        ]
        if "default_invocation_path" in function:
            lines.append(
                f"default_invocation_path = {json.dumps(function['default_invocation_path'])}"
            )
        ids[function["name"]] = function["id"]
    target.write_text("\n".join(lines) + "\n")
    return ids


def test_demo_stack_answers_and_invoke_shows_progress_and_the_result(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, *server_ports = free_ports(3)
    ids = demo_config(tmp_path / "demo.toml", server_ports)
    dev = start_process(
        [*CLI, "dev", "--config", str(tmp_path / "demo.toml"), "--port", str(platform_port)],
        name="dev",
    )
    dev.wait_for_log(READY, timeout=90)
    url = f"http://127.0.0.1:{platform_port}"
    environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

    hello = subprocess.run(
        [*CLI, "invoke", ids["hello"], "--url", url, "--data", '{"hello": "demo"}'],
        capture_output=True, timeout=60, env=environment,
    )  # fmt: skip
    assert hello.returncode == 0, hello.stderr.decode()
    assert json.loads(hello.stdout)["echo"] == {"hello": "demo"}

    out = tmp_path / "out"
    job = subprocess.run(
        [*CLI, "invoke", ids["image-job"], "--url", url, "--api-key", KEY,
         "--data", '{"seed": 3, "step_seconds": 0.6}', "--poll-seconds", "1", "--out", str(out)],
        capture_output=True, timeout=90, env=environment,
    )  # fmt: skip
    stderr = job.stderr.decode()
    assert job.returncode == 0, stderr
    assert "in progress" in stderr, stderr  # at least one progress 202 was shown
    answer = json.loads(job.stdout)
    [output] = answer["outputs"]
    assert (out / "image.npy").stat().st_size == output["bytes"] > 5 * 1024 * 1024

    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGINT)
    assert dev.wait_exit(30) == 0
