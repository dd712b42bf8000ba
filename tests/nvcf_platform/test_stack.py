"""`LocalStack`: start, serve, stop with no process left behind; early exits and time-outs reported;
the registry it writes, its progress sentences, restarts in place.

The stack runs real processes (nats-server, `nvcf-sidecar platform`, a tiny aiohttp container,
`nvcf-sidecar run`) on loopback.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

from harness.http import http_request
from harness.ports import free_port
from nvcf_platform.control.registry import Registry
from nvcf_platform.devstack.stack import ChildExited, FunctionSpec, LocalStack, StackError
from nvcf_platform.devstack.stack_spec import process_labels

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]

# A container in a few lines: health on /v2/health/ready, `{"ok": true}` on /infer.
TINY_CONTAINER = """
import sys
from aiohttp import web
app = web.Application()
app.router.add_get("/v2/health/ready", lambda request: web.Response(text="ok"))
app.router.add_post("/infer", lambda request: web.json_response({"ok": True}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


# The container's shell first starts a helper that ignores SIGTERM, as a stray grandchild would.
STUBBORN_HELPER = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
)


def tiny_function(*, stubborn_helper: bool = False, **fields: object) -> FunctionSpec:
    port = free_port()
    command = [sys.executable, "-c", TINY_CONTAINER, str(port)]
    if stubborn_helper:
        script = '"$0" -c "$1" & exec "$0" -c "$2" "$3"'
        command = ["sh", "-c", script, sys.executable, STUBBORN_HELPER, TINY_CONTAINER, str(port)]
    return FunctionSpec(
        command=command,
        inference_port=port,
        name="tiny",
        default_invocation_path="/infer",
        **fields,  # type: ignore[arg-type]
    )


def group_members(group: int) -> list[int]:
    """Pids whose process group is `group`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(group):
            members.append(int(stat.parent.name))
    return members


def gone(pid: int) -> bool:
    """No such process (or only a zombie that is not ours to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def test_stack_serves_an_invocation_and_stop_leaves_no_process(tmp_path: Path) -> None:
    spec = tiny_function(stubborn_helper=True, sidecars=2, max_request_concurrency=2)
    output = io.StringIO()
    stack = LocalStack([spec], work_dir=tmp_path / "stack", log_stream=output)
    stack.start(timeout=30)
    try:
        response = http_request(
            "POST", stack.invoke_url(spec.function_id), body=b"{}", headers=stack.auth_headers
        )
        assert response.status == 200
        assert response.json() == {"ok": True}
        assert response.headers["nvcf-status"] == "fulfilled"
        sidecars = stack.sidecars(spec.version_id)
        assert [sidecar.name for sidecar in sidecars] == ["sidecar-tiny-1", "sidecar-tiny-2"]
        assert all(sidecar.is_ready() for sidecar in sidecars)
        assert stack.container(spec.version_id).is_ready()
        processes = stack.processes()
        assert len(processes) == 4  # platform, container, two sidecars
        pids = [process.pid for process in processes]
        nats_pid = stack.nats.pid
        assert nats_pid is not None
        late = stack.add_sidecar(spec.version_id)
        assert late.name == "sidecar-tiny-3"
        pids.append(late.pid)
        helpers = group_members(stack.container(spec.version_id).pid)
        assert len(helpers) == 2  # the container and its helper
        pids += helpers
        responses = stack.response_dir(spec.version_id)
        assert responses.is_dir()
    finally:
        stack.stop(timeout=1.0)  # the helper ignores SIGTERM: SIGKILLed after 1 s
    # The per-request directories' root, when the stack made it on /dev/shm, goes with it.
    assert responses.is_relative_to(tmp_path / "stack") or not responses.parents[2].exists()
    for pid in [*pids, nats_pid]:
        assert gone(pid), f"pid {pid} is still running"
    # Sidecars stop gracefully on SIGTERM.
    assert [sidecar.returncode for sidecar in stack.sidecars(spec.version_id)] == [0, 0, 0]
    stack.stop()  # idempotent
    logs = tmp_path / "stack" / "logs"
    assert {path.name for path in logs.iterdir()} >= {
        "nats-server.log",
        "platform.log",
        "server-tiny.log",
        "sidecar-tiny-1.log",
    }
    copied = output.getvalue()
    assert "[platform] NVCF platform: invocations at" in copied
    assert '[sidecar-tiny-1] {"time"' in copied
    serving = next(
        json.loads(line)
        for line in (logs / "sidecar-tiny-2.log").read_text().splitlines()
        if "sidecar serving" in line
    )
    # A sidecar process freezes what its start-up made out of the collector's walks, and so
    # does the platform process.
    assert serving["gc_frozen_objects"] > 10_000
    tuned = re.search(
        r"garbage collector tuned for serving gc_frozen_objects=(\d+)",
        (logs / "platform.log").read_text(),
    )
    assert tuned is not None
    assert int(tuned.group(1)) > 10_000


def test_workers_attach_on_the_lean_listener_unless_the_stack_is_told_not_to(
    tmp_path: Path,
) -> None:
    spec = tiny_function()
    for lean in (True, False):
        stack = LocalStack([spec], work_dir=tmp_path / f"stack-{lean}", attach_listener=lean)
        with stack:
            response = http_request(
                "POST", stack.invoke_url(spec.function_id), body=b"{}", headers=stack.auth_headers
            )
            assert response.status == 200
            assert (stack.attach_url != stack.base_url) is lean
            if lean:  # the restarted platform listens where the work items point
                attach_url = stack.attach_url
                stack.restart_platform()
                assert stack.attach_url == attach_url


def test_a_child_that_exits_early_is_named_with_its_status_and_log(tmp_path: Path) -> None:
    spec = FunctionSpec(
        command=[sys.executable, "-c", "print('model file missing'); raise SystemExit(3)"],
        inference_port=free_port(),
        name="broken",
    )
    stack = LocalStack([spec], work_dir=tmp_path)
    with pytest.raises(ChildExited) as failure:
        stack.start(timeout=30)
    assert failure.value.name == "server-broken"
    assert failure.value.returncode == 3
    assert "model file missing" in failure.value.log_tail
    assert "server-broken exited with status 3" in str(failure.value)
    # Everything that had started was stopped.
    assert stack.platform.returncode is not None
    assert not stack.nats.running
    assert all(process.returncode is not None for process in stack.processes())


def test_a_scratch_directory_that_cannot_be_made_stops_the_start_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plain").write_text("a file")
    monkeypatch.setenv("NVCF_SCRATCH_DIR", str(tmp_path / "plain"))
    spec = FunctionSpec(command=[sys.executable, "-c", "pass"], inference_port=free_port())
    stack = LocalStack([spec], work_dir=tmp_path / "work")
    with pytest.raises(StackError, match=f"^NVCF_SCRATCH_DIR={tmp_path / 'plain'}: cannot create"):
        stack.start(timeout=30)
    assert all(process.returncode is not None for process in stack.processes())


def test_a_sidecar_never_ready_times_out_naming_it(tmp_path: Path) -> None:
    # Nothing listens on the inference port: the sidecar waits for its container forever.
    spec = FunctionSpec(
        command=[sys.executable, "-c", "import time; time.sleep(60)"],
        inference_port=free_port(),
        name="silent",
    )
    stack = LocalStack([spec], work_dir=tmp_path)
    # The server's own health URL and its last answer are named first: the cause, not the symptom.
    health = rf"http://127\.0\.0\.1:{spec.inference_port}/v2/health/ready does not answer yet"
    with pytest.raises(
        StackError, match=rf"not ready within 3 s: server-silent \({health}\); sidecar-silent-1 \("
    ):
        stack.start(timeout=3)
    assert all(process.returncode is not None for process in stack.processes())


def test_function_specs_are_validated_and_versions_of_one_function_share_it(
    tmp_path: Path,
) -> None:
    with pytest.raises(StackError, match="version_id 'v1'"):
        FunctionSpec(command=["server"], inference_port=8000, version_id="v1")
    with pytest.raises(StackError, match="empty command"):
        FunctionSpec(command=[], inference_port=8000)
    upper = str(uuid.uuid4()).upper()
    assert FunctionSpec(command=["server"], inference_port=8000, function_id=upper).function_id == (
        upper.lower()
    )
    first = FunctionSpec(command=["a"], inference_port=8001)
    with pytest.raises(StackError, match="share a version id"):
        LocalStack([first, first], work_dir=tmp_path)
    stack = LocalStack([first], work_dir=tmp_path)
    with pytest.raises(StackError, match="not been started"):
        _ = stack.base_url
    with pytest.raises(StackError, match="no function version"):
        stack.sidecars(str(uuid.uuid4()))


def test_two_versions_of_one_function_are_served_by_their_own_containers(tmp_path: Path) -> None:
    one = tiny_function()
    two = tiny_function(function_id=one.function_id)
    with LocalStack([one, two], work_dir=tmp_path) as stack:
        for spec in (one, two):
            response = http_request(
                "POST",
                stack.invoke_url(spec.function_id, spec.version_id),
                body=b"{}",
                headers=stack.auth_headers,
            )
            assert response.status == 200, response.body
        assert stack.container(one.version_id).name == "server-tiny1"
        assert stack.container(two.version_id).name == "server-tiny2"
        assert os.path.isdir(stack.response_dir(two.version_id))


def test_registry_names_health_urls_and_a_restarted_sidecar_keeps_its_place(
    tmp_path: Path,
) -> None:
    # The server is started by a relative path, in the spec's working directory.
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    (server_dir / "server.py").write_text(TINY_CONTAINER)
    port = free_port()
    spec = FunctionSpec(
        command=[sys.executable, "server.py", str(port)],
        inference_port=port,
        name="tiny",
        default_invocation_path="/infer",
        sidecars=2,
        min_instances=2,
        cwd=server_dir,
    )
    heard: list[str] = []
    stack = LocalStack([spec], work_dir=tmp_path / "stack", progress=heard.append)
    with stack:
        sidecars = stack.sidecars(spec.version_id)
        urls = [sidecar.health_url for sidecar in sidecars]
        assert urls == stack.instance_health_urls(spec.version_id)
        [version] = Registry.from_toml(tmp_path / "stack" / "functions.toml").versions
        assert version.min_instances == 2
        assert list(version.instance_health_urls) == urls
        container_url = f"http://127.0.0.1:{port}/v2/health/ready"
        for sentence in (
            f"nats-server ready: {stack.nats_url} (pid {stack.nats.pid})",
            f"platform ready: {stack.base_url} (nvcf.Worker gRPC at {stack.grpc_url})",
            f"waiting for server-tiny: {container_url}",
            f"waiting for sidecar-tiny-2: {urls[1]}",
            "server-tiny healthy",
            "sidecar-tiny-1 ready",
            "sidecar-tiny-2 ready",
        ):
            assert sentence in heard, (sentence, heard)

        first = sidecars[0]
        first.kill()
        assert first.wait(10) == -9
        fresh = stack.restart(first, wait=True, timeout=30)
        assert (fresh.name, fresh.health_url) == (first.name, urls[0])
        assert fresh.pid != first.pid
        assert stack.sidecars(spec.version_id) == [fresh, sidecars[1]]
        with pytest.raises(StackError, match="not a current server or sidecar"):
            stack.restart(first)
        for _ in range(4):
            response = http_request(
                "POST", stack.invoke_url(spec.function_id), body=b"{}", headers=stack.auth_headers
            )
            assert response.status == 200, response.body
        pids = [process.pid for process in stack.processes()]
    assert all(gone(pid) for pid in [*pids, first.pid])


def test_versions_sharing_a_name_are_numbered_in_order() -> None:
    specs = [
        FunctionSpec(command=["s"], inference_port=8001, name="a"),
        FunctionSpec(command=["s"], inference_port=8002, name="b"),
        FunctionSpec(command=["s"], inference_port=8003, name="a"),
    ]
    labels = process_labels(specs)
    assert [labels[spec.version_id] for spec in specs] == ["a1", "b", "a2"]
