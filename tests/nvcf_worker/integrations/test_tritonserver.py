"""The tritonserver launcher: environment, backend directory, command line, and real servers."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness.http import HttpResponse, http_request
from harness.processes import ProcessExited
from harness.triton import SERVERS_DIR, StartPyTriton, StartTritonServer, TritonServer
from nvcf_worker.integrations import tritonserver
from nvcf_worker.integrations.tritonserver import (
    NVCF_HEADER_FORWARD_PATTERN,
    TritonServerNotFound,
    build_tritonserver_command,
    find_tritonserver_dist,
    libpython_dir,
    prepare_backend_directory,
    prepare_pytriton_environment,
    pytriton_libs_dir,
    tritonserver_environment,
)

MODEL_REPOSITORY = Path(__file__).parents[2] / "data" / "model_repository"
FAKE_LIBPYTHON = "/opt/python/lib"


@pytest.fixture
def fake_libpython(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pin libpython_dir() so environment tests do not depend on how Python was built."""
    monkeypatch.setattr(tritonserver, "libpython_dir", lambda: Path(FAKE_LIBPYTHON))
    return Path(FAKE_LIBPYTHON)


def search_path(value: str) -> list[str]:
    return value.split(os.pathsep)


# -- environment ------------------------------------------------------------------------------


def test_libpython_dir_is_the_running_pythons_libdir() -> None:
    libdir = Path(sysconfig.get_config_var("LIBDIR"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not any(libdir.glob(f"libpython{version}*.so*")):
        pytest.skip("this Python has no shared libpython")
    assert libpython_dir() == libdir


def test_libpython_dir_is_none_without_a_shared_libpython(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: str(tmp_path))
    assert libpython_dir() is None


def test_environment_puts_libpython_first_then_pytriton_libs(fake_libpython: Path) -> None:
    env = tritonserver_environment({"PATH": "/usr/bin"})
    assert search_path(env["LD_LIBRARY_PATH"]) == [str(fake_libpython), str(pytriton_libs_dir())]


def test_environment_keeps_an_existing_library_path_after_ours(fake_libpython: Path) -> None:
    env = tritonserver_environment({"LD_LIBRARY_PATH": "/opt/a:/opt/b", "PATH": "/usr/bin"})
    assert search_path(env["LD_LIBRARY_PATH"]) == [
        str(fake_libpython),
        str(pytriton_libs_dir()),
        "/opt/a",
        "/opt/b",
    ]


def test_environment_has_no_duplicate_or_empty_entries(fake_libpython: Path) -> None:
    libs = str(pytriton_libs_dir())
    existing = f"{libs}::/opt/a:{fake_libpython}:/opt/a:"
    env = tritonserver_environment({"LD_LIBRARY_PATH": existing, "PATH": "/usr/bin"})
    assert search_path(env["LD_LIBRARY_PATH"]) == [str(fake_libpython), libs, "/opt/a"]


def test_environment_puts_the_running_pythons_bin_first_on_path(fake_libpython: Path) -> None:
    python_bin = str(Path(sys.executable).parent)
    env = tritonserver_environment({"PATH": f"/usr/bin:{python_bin}", "OTHER": "kept"})
    assert search_path(env["PATH"]) == [python_bin, "/usr/bin"]
    assert env["OTHER"] == "kept"


def test_environment_defaults_to_os_environ_without_changing_it(
    monkeypatch: pytest.MonkeyPatch, fake_libpython: Path
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/from-environ")
    env = tritonserver_environment()
    assert search_path(env["LD_LIBRARY_PATH"])[-1] == "/opt/from-environ"
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/from-environ"


def test_prepare_pytriton_environment_updates_os_environ(
    monkeypatch: pytest.MonkeyPatch, fake_libpython: Path
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/from-environ")
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored at teardown
    prepare_pytriton_environment()
    prepare_pytriton_environment()  # idempotent
    assert search_path(os.environ["LD_LIBRARY_PATH"]) == [
        str(fake_libpython),
        str(pytriton_libs_dir()),
        "/opt/from-environ",
    ]


# -- finding the server and preparing backends ---------------------------------------------------


def test_find_tritonserver_dist_locates_the_binary() -> None:
    dist = find_tritonserver_dist()
    assert (dist / "bin" / "tritonserver").is_file()
    assert pytriton_libs_dir().is_dir()


def test_launcher_does_not_import_pytriton() -> None:
    # Importing PyTriton is slow and drags in numpy and zmq; the launcher only locates it.
    code = (
        "import sys\n"
        "from nvcf_worker.integrations import tritonserver as t\n"
        "t.tritonserver_environment(); t.build_tritonserver_command('m', backend_directory='b')\n"
        "sys.exit(1 if 'pytriton' in sys.modules or 'numpy' in sys.modules else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_each_launch_gets_its_own_python_backend_shm_prefix() -> None:
    command = build_tritonserver_command("m", backend_directory="b")
    assert f"--backend-config=python,shm-region-prefix-name=nvcf{os.getpid()}_" in command
    given = "--backend-config=python,shm-region-prefix-name=mine_"
    command = build_tritonserver_command("m", backend_directory="b", extra_args=[given])
    assert [arg for arg in command if "shm-region-prefix-name" in arg] == [given]


def _dead_pid() -> int:
    """A pid no process has now (the highest pids are rarely in use)."""
    limit = int(Path("/proc/sys/kernel/pid_max").read_text())
    return next(pid for pid in range(limit - 1, 1, -1) if not Path(f"/proc/{pid}").exists())


def test_stale_shm_regions_of_killed_servers_are_removed_and_live_ones_kept(
    tmp_path: Path,
) -> None:
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f"nvcf{dead}_e3b4-region"
    kept = [
        tmp_path / f"nvcf{alive}_e3b4-region",  # a live server's
        tmp_path / "pytrtion123-abc",  # not ours
        tmp_path / "nvcf_shared",  # not a region name
    ]
    for path in (stale, *kept):
        path.write_bytes(b"\0" * 16)
    assert tritonserver.remove_stale_shm_regions(tmp_path) == [stale]
    assert not stale.exists()
    assert all(path.exists() for path in kept)
    assert tritonserver.remove_stale_shm_regions(tmp_path / "missing") == []


def test_missing_pytriton_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "pytriton" else real_find_spec(name, *args),
    )
    with pytest.raises(TritonServerNotFound, match=r"nvcf-worker\[pytriton\]"):
        find_tritonserver_dist()


def test_prepare_backend_directory_installs_the_stub_for_this_python(tmp_path: Path) -> None:
    dest = prepare_backend_directory(tmp_path / "backends")
    python = dest / "python"
    assert sorted(path.name for path in python.iterdir()) == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    expected_stub = (
        find_tritonserver_dist() / "python_backend_stubs" / version / "triton_python_backend_stub"
    )
    assert (python / "triton_python_backend_stub").read_bytes() == expected_stub.read_bytes()
    assert os.access(python / "triton_python_backend_stub", os.X_OK)


def test_prepare_backend_directory_is_idempotent_and_repairs_changes(tmp_path: Path) -> None:
    python = prepare_backend_directory(tmp_path / "backends") / "python"
    utils = python / "triton_python_backend_utils.py"
    inode = utils.stat().st_ino

    prepare_backend_directory(tmp_path / "backends")
    assert utils.stat().st_ino == inode  # identical file left alone

    utils.write_text("tampered")
    prepare_backend_directory(tmp_path / "backends")
    assert (
        utils.read_bytes()
        == (find_tritonserver_dist() / "backends" / "python" / utils.name).read_bytes()
    )
    assert not [path for path in python.iterdir() if path.name.startswith(".")]


# -- command line ---------------------------------------------------------------------------------


def test_command_serves_the_repository_with_nvcf_defaults(tmp_path: Path) -> None:
    command = build_tritonserver_command(tmp_path / "models", backend_directory=tmp_path / "b")
    assert command[0] == str(find_tritonserver_dist() / "bin" / "tritonserver")
    flags = command[1:]
    for flag in (
        f"--model-repository={tmp_path / 'models'}",
        f"--backend-directory={tmp_path / 'b'}",
        "--model-control-mode=none",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--http-address=0.0.0.0",
        f"--http-header-forward-pattern={NVCF_HEADER_FORWARD_PATTERN}",
    ):
        assert flag in flags


def test_command_takes_ports_address_and_extra_args_last(tmp_path: Path) -> None:
    command = build_tritonserver_command(
        tmp_path,
        backend_directory=tmp_path,
        http_port=9000,
        grpc_port=9001,
        metrics_port=9002,
        address="127.0.0.1",
        extra_args=["--log-verbose=1", "--strict-readiness=false"],
    )
    assert {"--http-port=9000", "--grpc-port=9001", "--metrics-port=9002"} <= set(command)
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1"} <= set(command)
    assert "--metrics-address=127.0.0.1" in command
    assert command[-2:] == ["--log-verbose=1", "--strict-readiness=false"]


def test_command_without_header_forwarding(tmp_path: Path) -> None:
    command = build_tritonserver_command(
        tmp_path, backend_directory=tmp_path, http_header_forward_pattern=None
    )
    assert not [part for part in command if part.startswith("--http-header-forward-pattern")]


def test_main_dry_run_prints_environment_and_passthrough(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = tritonserver.main(
        [
            f"--model-repository={tmp_path}",
            f"--backend-directory={tmp_path / 'backends'}",
            "--http-port=9100",
            "--dry-run",
            "--",
            "--log-verbose=1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("LD_LIBRARY_PATH=")
    library_path = printed.split()[0].removeprefix("LD_LIBRARY_PATH=")
    expected_first = libpython_dir() or pytriton_libs_dir()
    assert search_path(library_path)[0] == str(expected_first)
    assert "--http-port=9100" in printed
    assert printed.endswith("--log-verbose=1")
    assert (tmp_path / "backends" / "python" / "triton_python_backend_stub").is_file()


def test_main_rejects_a_missing_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tritonserver.main([f"--model-repository={tmp_path / 'nope'}", "--dry-run"]) == 2
    assert "is not a directory" in capsys.readouterr().err


# -- real servers ---------------------------------------------------------------------------------


def infer_with_headers(server: TritonServer, model: str, headers: dict[str, str]) -> HttpResponse:
    body = {"inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
    return http_request(
        "POST", server.infer_url(model), json_body=body, headers=headers, timeout=30
    )


def outputs_of(response: HttpResponse) -> dict[str, list[object]]:
    assert response.status == 200, response.body
    return {output["name"]: output["data"] for output in response.json()["outputs"]}


@pytest.mark.triton
def test_tritonserver_forwards_nvcf_headers_into_request_parameters(
    tritonserver: StartTritonServer,
) -> None:
    server = tritonserver(MODEL_REPOSITORY)
    response = infer_with_headers(
        server,
        "nvcf_echo",
        {
            "NVCF-REQID": "0b2c1a9e-request",
            "NVCF-FUNCTION-ID": "fn-1",
            "X-Not-Forwarded": "nope",
            # Triton matches names case-sensitively; the launcher's `(?i)` pattern forwards
            # Go's canonical casing and lower-case names too, keeping the casing they came in.
            "Nvcf-Poll-Seconds": "57",
            "nvcf-lower-case": "kept",
        },
    )
    outputs = outputs_of(response)
    assert outputs["OUTPUT"] == ["hello"]
    assert json.loads(str(outputs["PARAMETERS"][0])) == {
        "NVCF-REQID": "0b2c1a9e-request",
        "NVCF-FUNCTION-ID": "fn-1",
        "Nvcf-Poll-Seconds": "57",
        "nvcf-lower-case": "kept",
    }
    # The launcher put this Python's libpython first, so the backend stub runs this Python
    # (not a system libpython of the same minor version).
    assert outputs["PYTHON_VERSION"] == [platform.python_version()]


@pytest.mark.triton
def test_tritonserver_with_a_broken_model_exits_instead_of_hanging(
    tritonserver: StartTritonServer, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_repository"
    (broken / "broken" / "1").mkdir(parents=True)
    config = (MODEL_REPOSITORY / "nvcf_echo" / "config.pbtxt").read_text()
    (broken / "broken" / "config.pbtxt").write_text(config.replace("nvcf_echo", "broken"))
    (broken / "broken" / "1" / "model.py").write_text("raise RuntimeError('broken on purpose')\n")
    with pytest.raises(ProcessExited, match="broken on purpose"):
        tritonserver(broken, timeout=60)


@pytest.mark.triton
def test_pytriton_forwards_nvcf_headers_into_request_parameters(
    pytriton_server: StartPyTriton,
) -> None:
    server = pytriton_server(SERVERS_DIR / "pytriton_parameters.py", models=["nvcf_parameters"])
    response = infer_with_headers(
        server, "nvcf_parameters", {"NVCF-REQID": "pytriton-request", "X-Other": "nope"}
    )
    outputs = outputs_of(response)
    assert outputs["OUTPUT"] == ["hello"]
    assert json.loads(str(outputs["PARAMETERS"][0])) == {"NVCF-REQID": "pytriton-request"}


def test_main_reports_an_unwritable_backend_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = tritonserver.main(
        [f"--model-repository={tmp_path}", f"--backend-directory={blocker / 'b'}", "--dry-run"]
    )
    assert code == 1
    assert "--backend-directory" in capsys.readouterr().err
