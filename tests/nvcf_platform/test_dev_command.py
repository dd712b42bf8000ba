"""`nvcf-sidecar dev`: one function or a config of several, restarts, clean stops, clear errors.

Real processes on loopback: `nvcf-sidecar dev` starts nats-server, the platform, the function
servers (the hello example and the e2e container) and their sidecars.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.http import HttpResponse, http_request
from harness.ports import free_ports
from harness.processes import ManagedProcess, StartProcess
from nvcf_platform.devstack.dev_supervisor import RestartBudget, RestartPolicy, describe_exit

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "byoc" / "hello" / "server.py"
E2E_CONTAINER = ROOT / "tests" / "e2e" / "servers" / "e2e_container.py"
DEV = [sys.executable, "-m", "nvcf_sidecar.cli", "dev"]
READY = "[dev] Ctrl-C stops everything."
KEY = "test-key"
# Sidecars notice a restarted server quickly (NVIDIA's default re-checks every 10 s).
FAST_HEALTH = 'sidecar_args = ["--health-check-interval", "0.5s"]'


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


def printed_pids(process: ManagedProcess) -> dict[str, int]:
    """Every pid dev printed: the ready line's, its instances' (`server-NAME-N`,
    `sidecar-NAME-N`) and those of restarted children."""
    output = process.log_text()
    line = printed(process, r"^\[dev\] pids: .*$").group(0)
    pids = {name: int(pid) for name, pid in re.findall(r"(\S+)=(\d+)", line)}
    for label, server, sidecar in re.findall(
        r"^\[dev\] instance (\S+): server pid (\d+), sidecar pid (\d+) ", output, re.M
    ):
        pids[f"server-{label}"] = int(server)
        pids[f"sidecar-{label}"] = int(sidecar)
    for name, pid in re.findall(r"^\[dev\] restarted (\S+) \(pid (\d+)\)", output, re.M):
        pids[f"{name} (restarted, pid {pid})"] = int(pid)
    for label, child, pid in re.findall(
        r"^\[dev\] instance (\S+): (\S+) restarted \(pid (\d+)\)$", output, re.M
    ):
        pids[f"{child}-{label} (restarted, pid {pid})"] = int(pid)
    return pids


def invoke_until(
    url: str, headers: dict[str, str] | None = None, within: float = 30
) -> HttpResponse:
    """Invoke until it answers 200 (the stack coming back) or `within` s pass: the last answer."""
    deadline = time.monotonic() + within
    while True:
        answer = invoke(url, headers=headers)
        if answer.status == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def assert_all_gone(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        assert gone(pid), f"{name} (pid {pid}) is still running"


DIE = {"X-E2E-Action": "die"}  # the e2e container SIGKILLs itself mid-request


def invoke(
    url: str, body: bytes = b'{"hello": "world"}', headers: dict[str, str] | None = None
) -> HttpResponse:
    sent = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return http_request("POST", url, body=body, headers=sent, timeout=30)


def toml_list(items: list[str]) -> str:
    return json.dumps(items)


def start_dev(start_process: StartProcess, platform_port: int, *args: str) -> ManagedProcess:
    command = [*DEV, "--port", str(platform_port), "--api-key", KEY, *args]
    return start_process(command, name="dev")


def test_dev_serves_the_hello_example_and_stops_everything(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, inference_port = free_ports(2)
    dev = start_dev(
        start_process,
        platform_port,
        "--inference-port",
        str(inference_port),
        "--work-dir",
        str(tmp_path / "dev"),
        "--",
        sys.executable,
        str(HELLO),
        "--port",
        str(inference_port),
    )
    dev.wait_for_log(READY, timeout=60)
    base = printed(dev, r"^\[dev\] ready: (\S+) \(API key (\S+)\)$")
    assert base.groups() == (f"http://127.0.0.1:{platform_port}", KEY)
    function_id = printed(dev, r"^\[dev\] function function, id (\S+):$").group(1)
    url = f"{base.group(1)}/v2/nvcf/pexec/functions/{function_id}"
    printed(dev, rf"^\[dev\]     curl .*'Authorization: Bearer {KEY}'.* {re.escape(url)} -d")
    printed(dev, rf"^\[dev\]     curl .*-N -H 'Accept: text/event-stream' {re.escape(url)} ")
    dev.wait_for_log("[dev] instance function-1: ready", timeout=30)
    pids = printed_pids(dev)
    assert set(pids) == {"nats-server", "platform", "server-function-1", "sidecar-function-1"}
    printed(dev, r"^\[server-function-1\] .*hello function listening on")

    response = invoke(url)
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["echo"] == {"hello": "world"}
    assert answer["request_id"] == response.headers["nvcf-reqid"]
    stream = invoke(url, b"{}", {"Accept": "text/event-stream"})
    assert stream.status == 200
    assert stream.body.count(b"data: ") == 5

    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGTERM)  # the dev process alone, as a supervisor would
    assert dev.wait_exit(30) == 0
    assert_all_gone(pids)
    assert "[dev] stopped" in dev.log_text()
    # The platform stopped its instance in order (the sidecar drained, then the server): no
    # process of it was signalled behind its back and taken for a crash.
    assert "instance process exited" not in dev.log_text()
    assert "instance failed" not in dev.log_text()


def test_dev_config_runs_two_functions_and_versions_share_the_traffic(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, hello_port, second_port = free_ports(3)
    hello_id, echo_id, first_id = (str(uuid.uuid4()) for _ in range(3))
    # Copied next to the config: servers run in the config file's directory.
    shutil.copy(E2E_CONTAINER, tmp_path / "container.py")
    config = tmp_path / "functions.toml"
    config.write_text(
        f"""
[[functions]]
name = "hello"
id = "{hello_id}"
command = {toml_list([sys.executable, str(HELLO), "--port", str(hello_port)])}
inference_port = {hello_port}

[[functions]]
name = "echo"
id = "{echo_id}"
default_invocation_path = "/echo"
inference_port = 8000
min_instances = 2
sidecars = 2

[[functions.versions]]
id = "{first_id}"
command = {toml_list([sys.executable, "container.py", "{port}"])}

[[functions.versions]]
command = "{sys.executable} container.py {second_port}"
inference_port = {second_port}
sidecars = 1
min_instances = 1
"""
    )
    work_dir = tmp_path / "dev"
    dev = start_dev(
        start_process, platform_port, "--config", str(config), "--work-dir", str(work_dir)
    )
    dev.wait_for_log(READY, timeout=60)
    for label in ("hello-1", "echo-1", "echo-2", "echo-3"):
        dev.wait_for_log(f"[dev] instance {label}: ready", timeout=30)
    output = dev.log_text()

    # What start-up did, as it happened: each version registered and deployed through the API.
    second_id = printed(
        dev, r"^\[dev\] function echo, version (\S+): image dev.local/echo:\S+ runs .* \(port "
    ).group(1)
    for line in (
        "[dev] nats-server ready: nats://127.0.0.1:",
        f"[dev] platform ready: http://127.0.0.1:{platform_port}",
        f"[dev] function echo version {first_id}: deployed on CPU LOCAL.CPU (min 2, max 2 "
        "instances)",
        f"[dev] function echo version {second_id}: deployed on CPU LOCAL.CPU (min 1, max 1 "
        "instances)",
        "[dev] function hello version ",
        f"[dev] function echo version {first_id}: ACTIVE",
        f"[dev] function echo version {second_id}: ACTIVE",
    ):
        assert line in output, line

    # The platform has them as functions of its API, with the config's ids.
    auth = {"Authorization": f"Bearer {KEY}"}
    api = f"http://127.0.0.1:{platform_port}/v2/nvcf"
    listed = http_request("GET", f"{api}/functions", headers=auth, timeout=10).json()
    versions = {(f["id"], f["versionId"]): f["status"] for f in listed["functions"]}
    assert versions[(echo_id, first_id)] == versions[(echo_id, second_id)] == "ACTIVE"
    assert [key for key in versions if key[0] == hello_id]
    deployment = http_request(
        "GET", f"{api}/deployments/functions/{echo_id}/versions/{first_id}", headers=auth
    ).json()["deployment"]
    (specification,) = deployment["deploymentSpecifications"]
    assert (specification["minInstances"], specification["maxInstances"]) == (2, 2)

    # Copy-paste lines for every function and version, the status poll and the CLI.
    base = f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec"
    for url in (
        f"{base}/functions/{hello_id}",
        f"{base}/functions/{echo_id}",
        f"{base}/functions/{echo_id}/versions/{first_id}",
        f"{base}/functions/{echo_id}/versions/{second_id}",
        f"{base}/status/REQUEST_ID",
    ):
        printed(
            dev, rf"^\[dev\]   +curl -sS .*'Authorization: Bearer {KEY}'.* {re.escape(url)}( |$)"
        )
    for function_id in (hello_id, echo_id):
        printed(dev, rf"^\[dev\]     nvcf-sidecar invoke {function_id} --url http://127.0.0.1:")

    hello = invoke(f"{base}/functions/{hello_id}")
    assert hello.status == 200, hello.body
    assert hello.json()["echo"] == {"hello": "world"}
    for version_id in (first_id, second_id):
        response = invoke(f"{base}/functions/{echo_id}/versions/{version_id}")
        assert response.status == 200, response.body
        assert response.json()["path"] == "/echo"
    for _ in range(20):  # without a version the platform picks one at random each time
        assert invoke(f"{base}/functions/{echo_id}").status == 200
    # The servers of the first version listen on ports of their own (its command's {port}).
    instances = [
        json.loads(path.read_text())
        for path in (work_dir / "instances" / "instances").glob("*/instance.json")
    ]
    ports = [i["inferencePort"] for i in instances if i["functionVersionId"] == first_id]
    assert len(ports) == 2
    assert second_port not in ports
    seen = {
        port: http_request("GET", f"http://127.0.0.1:{port}/stats").json()["requests"]
        for port in (*ports, second_port)
    }
    assert sum(seen.values()) == 22
    first_version = seen[ports[0]] + seen[ports[1]]
    assert min(first_version, seen[second_port]) > 1, seen  # both versions took some of the 20

    pids = printed_pids(dev)
    assert len(pids) == 10  # nats, platform, four instances of a server and a sidecar
    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGINT)
    assert dev.wait_exit(30) == 0
    assert_all_gone(pids)


def test_dev_restart_brings_back_a_crashed_server_and_a_killed_sidecar(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, port = free_ports(2)
    config = tmp_path / "functions.toml"
    config.write_text(
        f"""
[[functions]]
name = "echo"
command = {toml_list([sys.executable, str(E2E_CONTAINER), str(port)])}
inference_port = {port}
{FAST_HEALTH}
"""
    )
    dev = start_dev(start_process, platform_port, "--config", str(config), "--restart")
    dev.wait_for_log(READY, timeout=60)
    printed(
        dev,
        r"^\[dev\] nats-server, the platform, a server or a sidecar that exits is restarted \(at most 5",
    )
    function_id = printed(dev, r"^\[dev\] function echo, id (\S+):$").group(1)
    url = f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/{function_id}"
    dev.wait_for_log("[dev] instance echo-1: ready", timeout=30)
    pids = printed_pids(dev)

    # The platform restarts the instance's server in place (its supervision, --restart's budget).
    invoke(url, headers=DIE)
    dev.wait_for_log("[dev] instance echo-1: ready again", timeout=30)
    printed(dev, r"^\[dev\] instance echo-1: server restarted \(pid \d+\)$")
    assert invoke_until(url).status == 200

    os.kill(pids["sidecar-echo-1"], signal.SIGKILL)
    dev.wait_for(
        lambda: dev.log_text().count("[dev] instance echo-1: ready again") == 2,
        timeout=30,
        what="the sidecar back",
    )
    printed(dev, r"^\[dev\] instance echo-1: sidecar restarted \(pid \d+\)$")
    answer = invoke_until(url)
    assert answer.status == 200, answer.body
    assert "is DEGRADED" not in dev.log_text()

    pids = printed_pids(dev)
    assert len(pids) == 6  # four at start, two restarted
    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGINT)
    assert dev.wait_exit(30) == 0
    assert_all_gone(pids)


def test_dev_restart_brings_back_a_killed_nats_server_on_its_port_and_store(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, port = free_ports(2)
    config = tmp_path / "functions.toml"
    config.write_text(
        f"""
[[functions]]
name = "echo"
command = {toml_list([sys.executable, str(E2E_CONTAINER), str(port)])}
inference_port = {port}
{FAST_HEALTH}
"""
    )
    work_dir = tmp_path / "dev"
    dev = start_dev(
        start_process,
        platform_port,
        "--config",
        str(config),
        "--restart",
        "--work-dir",
        str(work_dir),
    )
    dev.wait_for_log(READY, timeout=60)
    function_id = printed(dev, r"^\[dev\] function echo, id (\S+):$").group(1)
    url = f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/{function_id}"
    nats_url = printed(dev, r"^\[dev\] nats-server ready: (\S+) \(pid \d+\)$").group(1)
    secret = work_dir / "secrets" / "url-signing.key"
    assert secret.stat().st_mode & 0o777 == 0o600  # presigned URLs outlive a platform restart
    pids = printed_pids(dev)

    with ThreadPoolExecutor(1) as pool:
        # A caller in flight: its sidecar answers over HTTP whatever happens to NATS meanwhile.
        in_flight = pool.submit(
            invoke, url, headers={"X-E2E-Action": "sleep", "X-E2E-Seconds": "3"}
        )
        time.sleep(1.0)
        os.kill(pids["nats-server"], signal.SIGKILL)
        dev.wait_for_log("[dev] nats-server is ready again", timeout=30)
        answer = in_flight.result(timeout=30)
    assert answer.status == 200, answer.body
    assert answer.json() == {"slept": 3.0}
    printed(
        dev,
        r"^\[dev\] nats-server exited with signal 9 \(SIGKILL\); restarting it on the same port "
        r"and store \(1 of 5 within 60 s\)$",
    )
    assert (
        printed(dev, r"^\[dev\] restarted nats-server \(pid \d+\) at (\S+)$").group(1) == nats_url
    )

    # The platform and the sidecar reconnect by themselves; until then callers get 503.
    deadline = time.monotonic() + 30
    while (answer := invoke(url)).status == 503:
        assert answer.headers["Retry-After"]
        assert time.monotonic() < deadline, "the stack never served again after the restart"
        time.sleep(0.2)
    assert answer.status == 200, answer.body

    pids = printed_pids(dev)
    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGINT)
    assert dev.wait_exit(30) == 0
    assert_all_gone(pids)


def test_dev_restart_brings_back_a_killed_or_stopped_platform_on_its_ports(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, port = free_ports(2)
    config = tmp_path / "functions.toml"
    config.write_text(
        f"""
[[functions]]
name = "echo"
command = {toml_list([sys.executable, str(E2E_CONTAINER), str(port)])}
inference_port = {port}
"""
    )
    dev = start_dev(start_process, platform_port, "--config", str(config), "--restart")
    dev.wait_for_log(READY, timeout=60)
    function_id = printed(dev, r"^\[dev\] function echo, id (\S+):$").group(1)
    url = f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/{function_id}"
    endpoints = printed(dev, r"^\[dev\] platform ready: (\S+ \(nvcf.Worker gRPC at \S+\))$")
    pids = printed_pids(dev)

    # A crash (SIGKILL), then a graceful stop of the platform alone: both are restarted.
    platform = pids["platform"]
    ready_again = "[dev] platform is ready again"
    for number, (signum, how) in enumerate(
        [(signal.SIGKILL, r"signal 9 \(SIGKILL\)"), (signal.SIGTERM, "exit code 0")], start=1
    ):
        os.kill(platform, signum)
        dev.wait_for(
            lambda: dev.log_text().count(ready_again) == number,  # noqa: B023 (waited at once)
            timeout=30,
            what=f"restart {number} of the platform",
        )
        printed(
            dev,
            rf"^\[dev\] platform exited with {how}; restarting it on the same ports "
            rf"\({number} of 5 within 60 s\)$",
        )
        # The same URLs: the sidecar (not restarted) keeps its gRPC URL, callers theirs.
        restarts = re.findall(
            r"^\[dev\] restarted platform \(pid (\d+)\) at (.*)$", dev.log_text(), re.M
        )
        assert restarts[-1][1] == endpoints.group(1)
        platform = int(restarts[-1][0])
        answer = invoke(url)
        assert answer.status == 200, answer.body
    # Each platform started the deployment's instance again (the killed one's were stopped).
    dev.wait_for_log("[dev] instance echo-3: ready", timeout=30)

    pids = printed_pids(dev)
    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGINT)
    assert dev.wait_exit(30) == 0
    assert_all_gone(pids)


def test_dev_restart_gives_up_on_a_server_that_keeps_crashing(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, port = free_ports(2)
    # Healthy the first time; every later start crashes at once.
    script = (
        'if [ -e started ]; then echo "crash loop"; exit 4; fi; touch started; exec "$0" "$1" "$2"'
    )
    command = ["sh", "-c", script, sys.executable, str(E2E_CONTAINER), str(port)]
    config = tmp_path / "functions.toml"
    config.write_text(
        f'[[functions]]\nname = "flaky"\ncommand = {toml_list(command)}\ninference_port = {port}\n'
    )
    dev = start_dev(
        start_process, platform_port, "--config", str(config), "--restart", "--max-restarts", "2"
    )
    dev.wait_for_log(READY, timeout=60)
    function_id = printed(dev, r"^\[dev\] function flaky, id (\S+):$").group(1)
    dev.wait_for_log("[dev] instance flaky-1: ready", timeout=30)
    pids = printed_pids(dev)

    invoke(f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/{function_id}", headers=DIE)
    assert dev.wait_exit(60) == 1
    output = dev.log_text()
    # The platform restarted the server twice (--max-restarts), then gave the instance up; dev
    # told of it (two restarts may fall into one of its rounds on a busy machine).
    instance = printed(
        dev, r"^\[dev\] instance flaky-1: server pid \d+, sidecar pid \d+ \(instance (\S+),"
    )
    restarts = re.findall(
        rf"^\[platform\] .*instance process exited; restarting instance_id={instance.group(1)} ",
        output,
        re.M,
    )
    assert len(restarts) == 2, output
    assert "[dev] instance flaky-1: server restarted" in output
    assert re.search(
        r"^\[dev\] error: function flaky version \S+ is DEGRADED; stopping \(its instances' "
        r"output is above\)$",
        output,
        re.M,
    ), output
    assert "[server-flaky-1] crash loop" in output
    assert_all_gone(printed_pids(dev) | pids)


def test_dev_without_restart_stops_when_a_running_server_exits(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, port = free_ports(2)
    # The shell outlives its killed server and exits 7: a plain exit code to report.
    script = '"$0" "$1" "$2"; echo "server gone"; exit 7'
    dev = start_dev(
        start_process,
        platform_port,
        "--inference-port",
        str(port),
        "--",
        "sh",
        "-c",
        script,
        sys.executable,
        str(E2E_CONTAINER),
        str(port),
    )
    dev.wait_for_log(READY, timeout=60)
    function_id = printed(dev, r"^\[dev\] function function, id (\S+):$").group(1)
    dev.wait_for_log("[dev] instance function-1: ready", timeout=30)
    pids = printed_pids(dev)
    url = f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/{function_id}"
    invoke(url, headers=DIE)
    assert dev.wait_exit(30) == 1
    output = dev.log_text()
    assert re.search(
        r"^\[dev\] error: function function version \S+ is DEGRAD(ING|ED); stopping \(its "
        r"instances' output is above; --restart keeps the stack running\)$",
        output,
        re.M,
    ), output
    assert "[server-function-1] server gone" in output  # its output is shown
    assert "restarted" not in output
    assert_all_gone(pids)


def test_dev_reports_a_server_crashing_at_start_up_and_exits_non_zero(
    start_process: StartProcess,
) -> None:
    platform_port, inference_port = free_ports(2)
    crash = 'import sys; print("boom"); sys.exit(3)'
    dev = start_dev(
        start_process,
        platform_port,
        "--inference-port",
        str(inference_port),
        "--",
        sys.executable,
        "-c",
        crash,
    )
    assert dev.wait_exit(60) == 1
    output = dev.log_text()
    error = re.search(
        r"^\[dev\] error: function function version \S+ is in ERROR: server exited with "
        r"status 3; server.log ends with:$",
        output,
        re.M,
    )
    assert error is not None, output
    assert "[dev] boom" in output[error.end() :]  # the tail of its output


def test_dev_without_a_function_starts_an_empty_platform_and_says_what_to_do(
    start_process: StartProcess, tmp_path: Path
) -> None:
    (platform_port,) = free_ports(1)
    dev = start_dev(start_process, platform_port, "--work-dir", str(tmp_path / "dev"))
    dev.wait_for_log(READY, timeout=60)
    base = f"http://127.0.0.1:{platform_port}"
    printed(dev, rf"^\[dev\] ready: {re.escape(base)} \(API key {KEY}\)$")
    printed(dev, r"^\[dev\]   the image catalog is empty: only images and models it names can be")
    printed(dev, rf"^\[dev\]     export NVCF_BASE_HTTP_URL={re.escape(base)} NVCF_API_KEY={KEY}$")
    printed(dev, r"^\[dev\]     nvcf-sidecar function create --name hello ")
    printed(dev, r"^\[dev\]     nvcf-sidecar function deploy create --min-instances 1 ")
    printed(dev, rf"^\[dev\]     curl -sS -X POST .* {re.escape(base)}/v2/nvcf/functions -d ")
    printed(dev, rf"^\[dev\]     curl .* {re.escape(base)}/v2/nvcf/deployments/functions/")
    pids = printed_pids(dev)
    assert set(pids) == {"nats-server", "platform"}
    listed = http_request(
        "GET", f"{base}/v2/nvcf/functions", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert listed.status == 200, listed.body
    assert listed.json() == {"functions": []}
    assert dev.pid is not None
    os.kill(dev.pid, signal.SIGINT)
    assert dev.wait_exit(30) == 0
    assert_all_gone(pids)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--name", "f"], "--name: only for `dev -- COMMAND`"),
        (["--images", "MISSING"], "cannot read image catalog MISSING"),
        (["--config", "CONFIG", "--", "server"], "give either --config FILE or -- COMMAND"),
        (["--config", "CONFIG", "--inference-port", "9000"], "--inference-port: only for `dev"),
        (["--config", "CONFIG"], "CONFIG: functions[0].inference_port: 0 must be an integer"),
        (["--config", "MISSING"], "cannot read dev config MISSING"),
        (
            ["--port", "9000", "--inference-port", "9000", "--", "server"],
            "the server of function 'function' listens on 9000, the platform's --port",
        ),
    ],
)
def test_dev_usage_and_config_errors_exit_2_with_a_clear_message(
    start_process: StartProcess, tmp_path: Path, arguments: list[str], message: str
) -> None:
    config = tmp_path / "functions.toml"
    config.write_text('[[functions]]\nname = "f"\ncommand = "server"\ninference_port = 0\n')
    missing = str(tmp_path / "missing.toml")
    replace = {"CONFIG": str(config), "MISSING": missing}
    dev = start_process([*DEV, *(replace.get(a, a) for a in arguments)], name="dev")
    assert dev.wait_exit(30) == 2
    output = dev.log_text()
    expected = message.replace("MISSING", missing).replace("CONFIG", str(config))
    assert f"nvcf-sidecar dev: error: {expected}" in output, output
    assert "[dev]" not in output  # nothing was started


def test_the_restart_budget_is_per_child_and_slides_with_the_window() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=2, window=60.0))
    assert budget.take("server-a", 0.0) == 1
    assert budget.take("server-a", 10.0) == 2
    assert budget.take("server-a", 59.0) is None  # a third within 60 s: spent
    assert budget.take("sidecar-a-1", 59.0) == 1  # another child has its own
    assert budget.take("server-a", 60.0) == 2  # the restart at 0 s has left the window
    assert budget.used("server-a", 200.0) == 0


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-9) == "signal 9 (SIGKILL)"
    assert describe_exit(-200) == "signal 200"
