"""`nvcf-sidecar invoke` as a real subprocess against a real local stack.

One `LocalStack` for the module: NATS, the platform, `tests/e2e/servers/compat_container.py`
(progress, outputs, assets, errors, sleeps) and `e2e_container.py` (server-sent events), each
behind its own sidecar. Exit statuses are the command's documented ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.modules import load_module
from harness.ports import free_port, free_ports
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

SERVERS = Path(__file__).resolve().parents[2] / "e2e" / "servers"
COMPAT = SERVERS / "compat_container.py"
EVENTS = SERVERS / "e2e_container.py"
pattern_bytes = load_module(COMPAT).pattern_bytes
MIB = 1024 * 1024
INVOKE = [sys.executable, "-m", "nvcf_sidecar.cli", "invoke"]
_DROPPED_ENV = {"NVCF_URL", "NVCF_API_KEY", "http_proxy", "https_proxy", "all_proxy"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    directory = tmp_path_factory.mktemp("invoke-stack")
    compat_port, events_port = free_ports(2)
    compat = FunctionSpec(
        command=[sys.executable, str(COMPAT), str(compat_port)],
        inference_port=compat_port,
        name="compat",
        default_invocation_path="/invoke",
        max_request_concurrency=8,
    )
    events = FunctionSpec(
        command=[sys.executable, str(EVENTS), str(events_port)],
        inference_port=events_port,
        name="events",
        default_invocation_path="/invoke",
    )
    local = LocalStack([compat, events], work_dir=directory / "stack", api_key="invoke-key")
    local.start(timeout=60)
    try:
        yield local
    finally:
        local.stop()
        for process in local.processes():
            sys.stdout.write(f"\n----- {process.name} -----\n{process.log_tail(30)}\n")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without proxies or NVCF_* defaults, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _DROPPED_ENV}
    return {**env, **extra}


def run_invoke(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*INVOKE, *args],
        capture_output=True,
        env=clean_env() if env is None else env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def call(
    stack: LocalStack, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`invoke <compat function> --url <stack> --api-key <key> ARGS`."""
    function_id = stack.functions[0].function_id
    base = ["--url", stack.base_url, "--api-key", stack.api_key]
    return run_invoke(function_id, *base, *args, cwd=cwd)


def stderr_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def error_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [line for line in stderr_of(result).splitlines() if line.startswith("[invoke] error:")]


def test_echo_prints_pretty_json_on_stdout_with_env_defaults(stack: LocalStack) -> None:
    env = clean_env(NVCF_URL=stack.base_url + "/", NVCF_API_KEY=stack.api_key)
    result = run_invoke(stack.functions[0].function_id, "--data", '{"x": [1, 2]}', env=env)
    assert result.returncode == 0, stderr_of(result)
    assert json.loads(result.stdout) == {"body": {"x": [1, 2]}}
    assert (
        result.stdout.decode() == '{\n  "body": {\n    "x": [\n      1,\n      2\n    ]\n  }\n}\n'
    )
    assert re.search(r"HTTP 200 OK \(fulfilled\), request [0-9a-f-]{36}", stderr_of(result))


def test_default_body_and_explicit_version(stack: LocalStack) -> None:
    result = call(stack, "--version", stack.functions[0].version_id)
    assert result.returncode == 0, stderr_of(result)
    assert json.loads(result.stdout) == {"body": {}}


def test_data_from_a_file_is_sent_as_is(stack: LocalStack, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(
        json.dumps({"from": "file", "pad": "y" * 40_000})
    )  # over the 32 KiB inline part
    result = call(stack, "--data", f"@{body}")
    assert result.returncode == 0, stderr_of(result)
    assert json.loads(result.stdout) == {"body": json.loads(body.read_text())}


def test_progress_is_shown_on_stderr_then_the_result(stack: LocalStack) -> None:
    result = call(stack, "--header", "X-E2e-Action: progress", "--poll-seconds", "5")
    assert result.returncode == 0, stderr_of(result)
    assert json.loads(result.stdout) == {"done": True, "steps": 3}
    progress = re.findall(r"in progress (\d+)%: (.*)$", stderr_of(result), re.MULTILINE)
    assert [int(percent) for percent, _ in progress] == [25, 50, 75]
    assert progress[0][1] == '{"step":1,"text":"' + "x" * 100 + '"}'  # compact JSON
    second = progress[1][1]  # truncated to 120 characters
    assert second == '{"step":2,"text":"' + "x" * 101 + "…"
    assert "accepted (202); polling with NVCF-POLL-SECONDS 5" in stderr_of(result)


def test_large_response_is_unpacked_byte_identical(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "result"
    result = call(
        stack, "--header", "X-E2e-Action: outputs", "--poll-seconds", "30", "--out", str(out)
    )
    assert result.returncode == 0, stderr_of(result)
    request_id = re.search(r"request ([0-9a-f-]{36})", stderr_of(result))
    assert request_id is not None
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [f"{request_id.group(1)}.response", "result.json", "sub/data.bin"]
    assert (out / "sub" / "data.bin").read_bytes() == pattern_bytes(MIB)
    assert json.loads((out / "result.json").read_bytes()) == {"answer": 42}
    assert json.loads(result.stdout) == {"written": ["result.json", "sub/data.bin"]}
    assert f"  sub/data.bin ({MIB} bytes)" in stderr_of(result)
    assert "HTTP 302 Found (fulfilled)" in stderr_of(result)


def test_large_binary_body_goes_to_the_default_directory(stack: LocalStack, tmp_path: Path) -> None:
    length = 6 * MIB + 7
    result = call(
        stack,
        "--header",
        "X-E2e-Action: large-body",
        "--header",
        f"X-E2e-Length: {length}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, stderr_of(result)
    [directory] = (tmp_path / "nvcf-output").iterdir()
    body = directory / f"{directory.name}.response"
    assert [p.name for p in directory.iterdir()] == [body.name]
    assert body.read_bytes() == pattern_bytes(length)
    assert result.stdout == b""
    assert f"{body.name}: {length} bytes, not shown" in stderr_of(result)


def test_assets_are_uploaded_and_reach_the_container(stack: LocalStack, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("some words " * 500)
    blob = tmp_path / "weights.bin"
    blob.write_bytes(bytes(range(256)) * 4096)
    result = call(
        stack, "--asset", str(text), "--asset", str(blob), "--header", "X-E2e-Action: assets"
    )
    assert result.returncode == 0, stderr_of(result)
    seen = json.loads(result.stdout)
    uploaded = re.findall(r"asset ([0-9a-f-]{36}) <- (\S+) \((\S+)\)", stderr_of(result))
    assert [(path, kind) for _, path, kind in uploaded] == [
        (str(text), "text/plain"),
        (str(blob), "application/octet-stream"),
    ]
    ids = [asset_id for asset_id, _, _ in uploaded]
    assert seen["ids"] == ",".join(ids)
    assert seen["files"] == {
        ids[0]: hashlib.sha256(text.read_bytes()).hexdigest(),
        ids[1]: hashlib.sha256(blob.read_bytes()).hexdigest(),
    }


def test_unknown_function_is_a_caller_error(stack: LocalStack) -> None:
    base = ["--url", stack.base_url, "--api-key", stack.api_key]
    result = run_invoke(str(uuid.uuid4()), *base)
    assert result.returncode == 3
    assert error_lines(result) == ["[invoke] error: HTTP 404 Not Found: function not found"]
    assert result.stdout == b""


def test_wrong_api_key_is_a_caller_error(stack: LocalStack) -> None:
    result = call(stack, "--api-key", "not-the-key")
    assert result.returncode == 3
    assert error_lines(result) == ["[invoke] error: HTTP 401 Unauthorized: client is unauthorized"]


@pytest.mark.parametrize(("status", "exit_status"), [(500, 4), (422, 3)])
def test_container_errors_map_to_exit_statuses(
    stack: LocalStack, status: int, exit_status: int
) -> None:
    result = call(stack, "--header", "X-E2e-Action: error", "--header", f"X-E2e-Status: {status}")
    assert result.returncode == exit_status
    [line] = error_lines(result)
    assert line.startswith(f"[invoke] error: HTTP {status} ")
    assert re.search(r": model exploded \(request [0-9a-f-]{36}\)$", line)


def test_timeout_while_polling_exits_5(stack: LocalStack) -> None:
    result = call(
        stack,
        "--header",
        "X-E2e-Action: sleep",
        "--header",
        "X-E2e-Seconds: 4",
        "--poll-seconds",
        "1",
        "--timeout",
        "2.5",
    )
    assert result.returncode == 5, stderr_of(result)
    [line] = error_lines(result)
    assert re.fullmatch(
        r"\[invoke\] error: no final answer within --timeout 2.5 s \(request [0-9a-f-]{36}\)",
        line,
    )
    assert "accepted (202)" in stderr_of(result)


def test_platform_not_running_exits_6() -> None:
    result = run_invoke(str(uuid.uuid4()), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 6
    [line] = error_lines(result)
    assert "connection to http://127.0.0.1:" in line


@pytest.mark.parametrize(
    "args",
    [
        ["not-a-uuid"],
        [str(uuid.UUID(int=1)), "--poll-seconds", "3601"],
        [str(uuid.UUID(int=1)), "--poll-seconds", "soon"],
        [str(uuid.UUID(int=1)), "--data", "{not json"],
        [str(uuid.UUID(int=1)), "--data", "@/nonexistent/body.json"],
        [str(uuid.UUID(int=1)), "--asset", "/nonexistent/asset.bin"],
        [str(uuid.UUID(int=1)), "--header", "no colon here"],
        [str(uuid.UUID(int=1)), "--url", "ftp://example.com"],
        [str(uuid.UUID(int=1)), "--timeout", "0"],
        [str(uuid.UUID(int=1)), "--no-such-flag"],
    ],
)
def test_bad_flags_exit_2(args: list[str]) -> None:
    result = run_invoke(*args, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2, stderr_of(result)
    assert "usage:" in stderr_of(result)
    assert result.stdout == b""


def test_non_json_data_with_a_content_type_header_is_sent_as_is(stack: LocalStack) -> None:
    events = stack.functions[1]
    base = ["--url", stack.base_url, "--api-key", stack.api_key]
    headers = ["--header", "Content-Type: text/plain", "--header", "X-E2e-Action: raw"]
    result = run_invoke(events.function_id, *base, *headers, "--data", "plain [words]")
    assert result.returncode == 0, stderr_of(result)
    assert result.stdout == b"plain [words]"


def test_stream_prints_events_as_they_arrive(stack: LocalStack) -> None:
    events = stack.functions[1]
    command = [
        *INVOKE,
        events.function_id,
        "--url",
        stack.base_url,
        "--api-key",
        stack.api_key,
        "--stream",
        "--header",
        "X-E2e-Action: sse",
        "--header",
        "X-E2e-Events: 5",
        "--header",
        "X-E2e-Interval-Ms: 500",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env()
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        running_at_first_event = process.poll() is None
        rest, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors.decode()
    assert first.startswith(b'data: {"i": 0')
    assert running_at_first_event, "the first event was printed only at the end"
    lines = [line for line in (first + rest).splitlines() if line.startswith(b"data: ")]
    assert [json.loads(line[6:])["i"] for line in lines] == [0, 1, 2, 3, 4]


def test_data_names_uploaded_assets_by_number_or_file_name(
    stack: LocalStack, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("some words")
    data = '{"first": "{asset0}", "by_name": "{asset:notes.txt}"}'
    result = call(stack, "--asset", str(text), "--data", data)
    assert result.returncode == 0, stderr_of(result)
    (asset_id,) = re.findall(r"asset ([0-9a-f-]{36}) <- ", stderr_of(result))
    assert json.loads(result.stdout)["body"] == {"first": asset_id, "by_name": asset_id}
    wrong = call(stack, "--asset", str(text), "--data", '{"x": "{asset1}"}')
    assert wrong.returncode != 0
    assert "--data names {asset1}, but the --asset files are {asset0} notes.txt" in stderr_of(wrong)
