"""The package layering docs/architecture.md states: the library imports neither the sidecar nor
the platform, and the sidecar never imports the platform (it finds the platform's subcommands
through an entry point)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(package_dir: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith(("nvcf_platform", "nvcf_sidecar"))
            ):
                names.add(node.value)  # importlib.import_module("...") tables
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("src/nvcf_worker", ("nvcf_sidecar", "nvcf_platform")),
        ("sidecar/nvcf_sidecar", ("nvcf_platform",)),
    ],
)
def test_a_lower_layer_never_names_a_higher_one(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        path: sorted(name for name in names if name.split(".")[0] in forbidden)
        for path, names in _imported_modules(ROOT / package).items()
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_platform_subcommands_come_from_the_entry_point() -> None:
    from nvcf_sidecar.cli import commands

    found = commands()
    assert {"run", "invoke", "platform", "dev"} <= set(found)
    assert found["platform"][0] == "nvcf_platform.main"
