"""The package surface: light imports, a complete `__all__`, one error hierarchy."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nvcf_worker
from nvcf_worker import errors

HEAVY_MODULES = [
    "aiohttp",
    "starlette",
    "fastapi",
    "numpy",
    "PIL",
    "pytriton",
    "nats",
    "orjson",
    "nvcf_sidecar",
]

LIBRARY_MODULES = [
    "nvcf_worker",
    "nvcf_worker.compat",
    "nvcf_worker.compat_media",
    "nvcf_worker.context",
    "nvcf_worker.errors",
    "nvcf_worker.headers",
    "nvcf_worker.logging",
    "nvcf_worker.outputs",
    "nvcf_worker.progress",
    "nvcf_worker.secrets",
    "nvcf_worker.tasks",
    "nvcf_worker.integrations",
]


def modules_after_importing(module: str, cwd: Path) -> set[str]:
    """The top-level package names in `sys.modules` after a fresh interpreter imports `module`."""
    source_root = Path(nvcf_worker.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    script = f"import sys, json, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", ["nvcf_worker", "nvcf_worker.compat"])
def test_importing_the_library_pulls_in_no_optional_or_sidecar_dependency(
    module: str, tmp_path: Path
) -> None:
    loaded = modules_after_importing(module, tmp_path)
    assert "nvcf_worker" in loaded
    assert sorted(loaded & set(HEAVY_MODULES)) == []


def test_importing_every_library_module_pulls_in_no_optional_dependency(tmp_path: Path) -> None:
    loaded = modules_after_importing(", ".join(LIBRARY_MODULES), tmp_path)
    assert sorted(loaded & set(HEAVY_MODULES)) == []


def test_every_name_in_all_exists() -> None:
    for name in nvcf_worker.__all__:
        assert getattr(nvcf_worker, name) is not None, name
    assert len(set(nvcf_worker.__all__)) == len(nvcf_worker.__all__)


def test_every_module_all_names_exist() -> None:
    import importlib

    for module_name in LIBRARY_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{module_name}.{name}"


def test_the_package_has_a_version() -> None:
    assert isinstance(nvcf_worker.__version__, str)
    assert nvcf_worker.__version__


def test_every_error_derives_from_nvcf_worker_error() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]
    assert {cls.__name__ for cls in classes} >= {
        "AssetNotFound",
        "InvalidHeader",
        "InvalidOutputName",
        "InvalidProgress",
        "NVCFWorkerError",
        "ProgressTooLarge",
        "SecretsError",
    }
    for cls in classes:
        assert issubclass(cls, errors.NVCFWorkerError), cls.__name__
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.NVCFWorkerError), name


def test_every_error_is_exported_from_the_package() -> None:
    for name in errors.__all__:
        assert getattr(nvcf_worker, name) is getattr(errors, name)


def test_value_errors_are_still_value_errors_for_callers_that_catch_those() -> None:
    for cls in (
        errors.InvalidHeader,
        errors.InvalidOutputName,
        errors.InvalidProgress,
        errors.ProgressTooLarge,
    ):
        assert issubclass(cls, ValueError), cls.__name__
    assert issubclass(errors.AssetNotFound, FileNotFoundError)


def test_the_package_is_typed() -> None:
    assert (Path(nvcf_worker.__file__).parent / "py.typed").is_file()
