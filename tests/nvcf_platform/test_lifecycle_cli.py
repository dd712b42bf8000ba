"""The function lifecycle as a new user walks it (issue 11, "Done when"), every step a process.

`nvcf-sidecar dev --images examples/images.toml` with no function starts NATS and an empty
platform; then only the CLI (`nvcf-sidecar function ...`, `nvcf-sidecar invoke`) and HTTP calls:
register the hello example, deploy it (DEPLOYING, then ACTIVE), invoke it, register and deploy a
second version, see calls by function id reach both, undeploy the first while calls run (none
fails), undeploy the second (INACTIVE), delete the versions; and a models-only function (the
BYOM example's model from the catalog) answering a Predict-v2 body. SIGINT then stops dev with
exit 0 and no process left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.ports import free_port
from harness.processes import ManagedProcess, StartProcess

pytestmark = [pytest.mark.nats, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HELLO_JSON = EXAMPLES / "byoc" / "hello" / "function.json"
BYOM_JSON = EXAMPLES / "byom" / "function.json"
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "nvcf_sidecar.cli"]
KEY = "lifecycle-key"
READY = "[dev] Ctrl-C stops everything."
V2_IMAGE = "nvcr.io/example/hello:2.0"
# Version 2 of hello, in a catalog of the test's own: it says which version it is.
V2_SERVER = """
import os, sys
from aiohttp import web

async def infer(request):
    body = await request.json()
    return web.json_response({
        "version": request.headers.get("NVCF-FUNCTION-VERSION-ID"),
        "env_version": os.environ.get("NVCF_FUNCTION_VERSION_ID"),
        "echo": body,
    })

app = web.Application()
app.router.add_get("/v2/health/ready", lambda request: web.Response(text="ok"))
app.router.add_post("/", infer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""
PREDICT_V2 = {
    "inputs": [
        {"name": "INPUT", "datatype": "FP32", "shape": [3], "data": [1, 2.5, -3]},
        {"name": "SCALE", "datatype": "FP32", "shape": [1], "data": [2]},
    ]
}


@dataclass
class Dev:
    """A running `nvcf-sidecar dev` and the environment its CLI calls use."""

    process: ManagedProcess
    base_url: str
    env: dict[str, str]
    work_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`nvcf-sidecar ARGS...` as a process; fails the test on a non-zero exit."""
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def create(self, input_file: Path, *extra: str) -> tuple[str, str]:
        """`function create --input-file ... --json`: the function and version ids."""
        result = self.cli("function", "create", "--input-file", str(input_file), *extra, "--json")
        answer = json.loads(result.stdout)
        function = answer["function"]
        assert function["status"] == "INACTIVE", function
        return function["id"], function["versionId"]

    def deploy(self, fid: str, fvid: str) -> list[str]:
        """`function deploy create` (min 1, max 2); the statuses it printed."""
        started = time.monotonic()
        result = self.cli(
            "function", "deploy", "create", "--function-id", fid, "--version-id", fvid,
            "--min-instances", "1", "--max-instances", "2",
            "--poll-interval", "0.5", "--timeout", "120",
        )  # fmt: skip
        self.timings[f"deploy {fvid[:8]}"] = time.monotonic() - started
        return result.stdout.split()

    def pexec(self, fid: str, body: object, timeout: float = 30.0) -> tuple[int, object]:
        """POST pexec by function id; (status, JSON answer or the raw text)."""
        request = urllib.request.Request(
            f"{self.base_url}/v2/nvcf/pexec/functions/{fid}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children of children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture
def dev(start_process: StartProcess, tmp_path: Path) -> Iterator[Dev]:
    """`nvcf-sidecar dev --images examples/images.toml` plus a config holding only version 2's
    image; ready, and stopped by SIGINT at the end (exit 0, no process left)."""
    (tmp_path / "v2_server.py").write_text(V2_SERVER)
    extra = tmp_path / "extra-images.toml"
    extra.write_text(
        f'[[images]]\nimage = "{V2_IMAGE}"\n'
        'command = ["python", "v2_server.py", "{port}"]\ncwd = "."\n'
    )
    port = free_port()
    work_dir = tmp_path / "dev"
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NVCF_BASE_HTTP_URL": f"http://127.0.0.1:{port}",
        "NVCF_API_KEY": KEY,
        "NVCF_CLI_STATE": str(tmp_path / "cli.state"),
    }
    started = time.monotonic()
    command = [
        *CLI, "dev", "--images", str(EXAMPLES / "images.toml"), "--config", str(extra),
        "--port", str(port), "--api-key", KEY, "--work-dir", str(work_dir),
    ]  # fmt: skip
    process = start_process(command, name="dev", env=env, cwd=ROOT)
    process.wait_for_log(READY, timeout=60)
    output = process.log_text()
    assert f"[dev] ready: http://127.0.0.1:{port} (API key {KEY})" in output
    assert f"export NVCF_BASE_HTTP_URL=http://127.0.0.1:{port}" in output
    assert "nvcf-sidecar function create" in output
    assert f"image {V2_IMAGE}" in output
    assert "model scale_sum version 1" in output
    pids = re.search(r"^\[dev\] pids: (.*)$", output, re.M)
    assert pids is not None
    assert {name for name, _ in re.findall(r"(\S+)=(\d+)", pids.group(1))} == {
        "nats-server",
        "platform",
    }
    session = Dev(process, f"http://127.0.0.1:{port}", {**os.environ, **env}, work_dir)
    session.timings["dev ready"] = time.monotonic() - started
    yield session

    assert process.pid is not None
    below = descendants(process.pid)
    assert below, "dev runs no child"
    stopping = time.monotonic()
    os.kill(process.pid, signal.SIGINT)
    assert process.wait_exit(60) == 0, process.log_tail()
    session.timings["dev stop"] = time.monotonic() - stopping
    assert "[dev] stopped" in process.log_text()
    deadline = time.monotonic() + 10
    while (left := {pid for pid in below if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"
    print("timings:", {name: round(seconds, 2) for name, seconds in session.timings.items()})


def test_register_deploy_two_versions_undeploy_without_failures_and_delete(
    dev: Dev, tmp_path: Path
) -> None:
    fid, v1 = dev.create(HELLO_JSON)
    assert dev.deploy(fid, v1) == ["DEPLOYING", "ACTIVE"]
    status, answer = dev.pexec(fid, {"hello": "world"})
    assert status == 200, answer
    assert isinstance(answer, dict)
    assert answer["echo"] == {"hello": "world"}
    # dev shows the instance the platform runs: its processes, then its output.
    dev.process.wait_for_log("[server-hello-1] ", timeout=10)
    dev.process.wait_for_log("[sidecar-hello-1] ", timeout=10)
    output = dev.process.log_text()
    shown = re.search(
        r"^\[dev\] instance hello-1: server pid (\d+), sidecar pid (\d+) \(instance (\S+), "
        rf"function hello version {v1}, logs in (\S+)\)$",
        output,
        re.M,
    )
    assert shown is not None, output[-3000:]
    assert alive(int(shown.group(1)))
    assert alive(int(shown.group(2)))
    assert Path(shown.group(4)).name == shown.group(3)
    assert re.search(r"^\[server-hello-1\] .*hello function listening on", output, re.M)

    # Version 2: the same definition on the next image, which says which version it is.
    definition = json.loads(HELLO_JSON.read_text())
    v2_json = tmp_path / "hello-v2.json"
    v2_json.write_text(json.dumps({**definition, "containerImage": V2_IMAGE}))
    same_fid, v2 = dev.create(v2_json, "--function-id", fid)
    assert same_fid == fid
    assert v2 != v1
    assert dev.deploy(fid, v2) == ["DEPLOYING", "ACTIVE"]
    reached: set[str] = set()
    for index in range(60):
        status, answer = dev.pexec(fid, {"call": index})
        assert status == 200, answer
        assert isinstance(answer, dict)
        assert answer["echo"] == {"call": index}
        if "version" in answer:
            assert answer["version"] == answer["env_version"] == v2
        reached.add(answer.get("version") or v1)
        if reached == {v1, v2}:
            break
    assert reached == {v1, v2}, "calls by function id did not reach both versions"

    # Undeploy version 1 while callers keep calling the function: none of them fails.
    failures: list[tuple[int, object]] = []
    answered: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            status, answer = dev.pexec(fid, {"during": "undeploy"})
            if status != 200 or not isinstance(answer, dict):
                failures.append((status, answer))
            else:
                answered.append(answer.get("version") or v1)

    callers = [threading.Thread(target=caller) for _ in range(4)]
    for thread in callers:
        thread.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        removed = dev.cli("function", "deploy", "remove", "--function-id", fid, "--version-id", v1)
        dev.timings["undeploy v1"] = time.monotonic() - started
        assert removed.stdout.split() == ["INACTIVE"]
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in callers:
            thread.join(40)
    assert not any(thread.is_alive() for thread in callers)
    assert not failures, failures[:5]
    assert len(answered) > 20, len(answered)
    status, answer = dev.pexec(fid, {"after": "undeploy"})
    assert status == 200, answer
    assert isinstance(answer, dict)
    assert answer["version"] == v2

    shown = dev.cli("function", "get", "--function-id", fid, "--version-id", v1, "--json")
    assert json.loads(shown.stdout)["function"]["status"] == "INACTIVE"
    removed = dev.cli("function", "deploy", "remove", "--function-id", fid, "--version-id", v2)
    assert removed.stdout.split() == ["INACTIVE"]
    status, answer = dev.pexec(fid, {"after": "all undeployed"})
    assert status == 404, answer

    for version in (v1, v2):
        deleted = dev.cli("function", "delete", "--function-id", fid, "--version-id", version)
        assert f"deleted version {version}" in deleted.stdout
        gone = dev.run("function", "get", "--function-id", fid, "--version-id", version)
        assert gone.returncode == 1, gone.stdout
    listed = json.loads(dev.cli("function", "list", "--json").stdout)
    assert listed["functions"] == []


@pytest.mark.triton
def test_a_models_only_function_of_the_catalog_answers_a_predict_v2_body(dev: Dev) -> None:
    fid, fvid = dev.create(BYOM_JSON)
    assert dev.deploy(fid, fvid) == ["DEPLOYING", "ACTIVE"]
    result = dev.cli(
        "invoke", fid, "--url", dev.base_url, "--api-key", KEY,
        "--data", json.dumps(PREDICT_V2), "--timeout", "60",
    )  # fmt: skip
    answer = json.loads(result.stdout)
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert answer["model_name"] == "scale_sum"
    assert outputs["OUTPUT"]["data"] == [2.0, 5.0, -6.0]
    assert outputs["SUM"]["data"] == [1.0]
    removed = dev.cli("function", "deploy", "remove", "--function-id", fid, "--version-id", fvid)
    assert removed.stdout.split() == ["INACTIVE"]
