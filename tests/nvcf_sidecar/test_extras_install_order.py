"""The extras install one after another, in either order, into one venv, and every module imports.

Installing `[pytriton]` after `[platform]` used to break the sidecar: nvidia-pytriton 0.7 brings
protobuf 6, and protobuf 7 gencode refuses an older runtime (`VersionError` at import). The
generated code is now old enough for any runtime the extras bring (see test_protocol_gencode).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every module of the sidecar and the platform, the generated code, and the PyTriton glue; a
# work item encoded and decoded through the generated classes; the CLI's help.
CHECK = """
import importlib, pkgutil
import nvcf_sidecar, nvcf_worker.integrations.pytriton
from google.protobuf import __version__ as protobuf
names = [m.name for m in pkgutil.walk_packages(nvcf_sidecar.__path__, "nvcf_sidecar.")]
for name in names:
    importlib.import_module(name)
from nvcf_sidecar.protocol import WorkerInvokeFunctionRequest, decode_invoke_request, encode_invoke_request
item = WorkerInvokeFunctionRequest(requestId="r", requestMethod="POST")
assert decode_invoke_request(encode_invoke_request(item)).requestId == "r"
print(protobuf, len(names))
"""


def pip(venv: Path, *args: str) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.timeout(900)  # pip installs: about a minute each on a warm pip cache
@pytest.mark.parametrize(
    "order",
    [("platform", "pytriton"), ("pytriton", "platform")],
    ids=["platform-first", "pytriton-first"],
)
def test_the_extras_install_in_either_order_and_everything_imports(
    order: tuple[str, str], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    for extra in order:
        pip(venv, f"{ROOT}[{extra}]")
    checked = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # not the checkout: the installed packages are what is imported
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    protobuf, modules = checked.stdout.split()
    assert int(modules) > 50
    cli = subprocess.run(
        [str(venv / "bin" / "nvcf-sidecar"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", "nvidia-pytriton"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Version:" in listed.stdout
    print(f"protobuf {protobuf}; {listed.stdout.split('Version:')[1].split()[0]} pytriton")
