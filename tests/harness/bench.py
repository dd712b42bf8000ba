"""Run one bench suite with `--quick` as a user would: `python -m bench SUITE` from the repository."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["run_quick_suite"]

ROOT = Path(__file__).resolve().parents[2]


def run_quick_suite(
    suite: str, out: Path, *, env: Mapping[str, str], timeout: float
) -> tuple[str, dict[str, Any]]:
    """Its stdout and the JSON report it wrote to `out`; fails the test (with both outputs)
    unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", suite, "--quick", "--out", str(out)],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report: dict[str, Any] = json.loads(out.read_text())
    return done.stdout, report
