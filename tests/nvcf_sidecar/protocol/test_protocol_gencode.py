"""The generated protobuf code runs on every protobuf the field's packages bring (5.26.1 and up).

Gencode newer than the runtime is refused at import (`VersionError`), so the committed code must be
the oldest we support: protobuf 5.26.1 gencode and a grpc stub for grpcio 1.64.3 (`make proto`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
GEN = ROOT / "sidecar" / "nvcf_sidecar" / "protocol" / "gen"


def sidecar_requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["optional-dependencies"]["sidecar"]:
        requirement = Requirement(text)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"{name} is not a requirement of the sidecar extra")


def test_protobuf_gencode_is_no_newer_than_the_oldest_runtime_we_accept() -> None:
    code = (GEN / "nvcf_pb2.py").read_text()
    match = re.search(r"^# Protobuf Python Version: (\S+)$", code, re.MULTILINE)
    assert match is not None
    gencode = Version(match.group(1))
    assert gencode == Version("5.26.1")
    assert "ValidateProtobufRuntimeVersion" not in code  # 5.26 gencode checks nothing
    # The oldest protobuf the sidecar accepts runs this gencode, and 6.x (tritonclient[grpc],
    # nvidia-pytriton 0.7) and 7.x (a plain install) are accepted too.
    protobuf = sidecar_requirement("protobuf")
    assert protobuf.specifier.contains("5.26.1")
    assert not protobuf.specifier.contains("5.26.0")
    assert protobuf.specifier.contains("6.33.0")
    assert protobuf.specifier.contains("7.36.0")


def test_grpc_stub_needs_no_newer_grpcio_than_we_require() -> None:
    stub = (GEN / "nvcf_pb2_grpc.py").read_text()
    match = re.search(r"^GRPC_GENERATED_VERSION = '(\S+)'$", stub, re.MULTILINE)
    assert match is not None
    grpcio = sidecar_requirement("grpcio")
    assert grpcio.specifier.contains(match.group(1))
    assert "from . import nvcf_pb2 as" in stub  # package-relative, as make proto rewrites it
