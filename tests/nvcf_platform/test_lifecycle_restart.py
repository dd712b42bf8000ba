"""A platform killed under `nvcf-sidecar dev --restart` (SIGKILL: no chance to stop its
instances): the restarted platform finds its deployment in the KV bucket, stops the instance
processes the killed one left running, starts fresh ones, and the version serves again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.ports import free_port
from harness.processes import StartProcess

pytestmark = [pytest.mark.nats, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "nvcf_sidecar.cli"]
KEY = "restart-key"
READY = "[dev] Ctrl-C stops everything."


def _servers_of(work_dir: Path) -> set[int]:
    """Live hello servers (their command line names server.py) logging into this work dir."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        zombie = stat[stat.rfind(")") + 2] == "Z"
        if not zombie and b"server.py" in command and cwd.endswith("byoc/hello"):
            with contextlib.suppress(OSError):  # its output goes to the instance's server.log
                if os.readlink(entry / "fd" / "1").startswith(str(work_dir)):
                    found.add(int(entry.name))
    return found


def _pexec(base_url: str, fid: str) -> int:
    request = urllib.request.Request(
        f"{base_url}/v2/nvcf/pexec/functions/{fid}",
        data=b'{"after": "restart"}',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_a_killed_platform_comes_back_with_its_deployment_and_no_stale_instance(
    start_process: StartProcess, tmp_path: Path
) -> None:
    port = free_port()
    work_dir = tmp_path / "dev"
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NVCF_BASE_HTTP_URL": f"http://127.0.0.1:{port}",
        "NVCF_API_KEY": KEY,
        "NVCF_CLI_STATE": str(tmp_path / "cli.state"),
    }
    command = [
        *CLI, "dev", "--images", str(ROOT / "examples" / "images.toml"), "--restart",
        "--port", str(port), "--api-key", KEY, "--work-dir", str(work_dir),
    ]  # fmt: skip
    dev = start_process(command, name="dev", env=env, cwd=ROOT)
    dev.wait_for_log(READY, timeout=60)
    platform_pid = int(re.search(r"platform=(\d+)", dev.log_text()).group(1))  # type: ignore[union-attr]

    def cli(*args: str) -> str:
        result = subprocess.run(
            [*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    created = json.loads(
        cli(
            "function",
            "create",
            "--input-file",
            str(ROOT / "examples/byoc/hello/function.json"),
            "--json",
        )
    )
    fid = created["function"]["id"]
    assert cli("function", "deploy", "create", "--poll-interval", "0.5").split() == [
        "DEPLOYING",
        "ACTIVE",
    ]
    before = _servers_of(work_dir)
    assert len(before) == 1, before

    os.kill(platform_pid, signal.SIGKILL)
    dev.wait_for_log("[dev] restarted platform", timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = _pexec(f"http://127.0.0.1:{port}", fid)
        if status == 200:
            break
        time.sleep(0.25)
    assert status == 200

    after = _servers_of(work_dir)
    assert len(after) == 1, after  # the fresh instance only
    assert not after & before  # the one the killed platform left was stopped
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not seen or seen[-1] != "ACTIVE"):
        seen.append(json.loads(cli("function", "get", "--json"))["function"]["status"])
    assert seen[-1] == "ACTIVE", seen  # DEGRADING while the fresh instance got ready
