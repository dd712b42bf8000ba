"""`python -m bench compat --quick` runs end to end: the whole stack, every phase, a JSON report.

A smoke test: it proves the suite runs and checks what it reports, never how fast anything is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.bench import run_quick_suite

pytestmark = [pytest.mark.nats, pytest.mark.timeout(150)]

MIB = 1024 * 1024


def test_quick_compat_suite_reports_every_phase(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    stdout, report = run_quick_suite("compat", tmp_path / "compat.json", env=env, timeout=120)
    assert "Progress: 10 of 10 updates" in stdout
    assert "figures written to" in stdout

    assert report["suite"] == "compat"
    assert [case["key"] for case in report["cases"]] == [
        "progress.plain",
        "progress.relay",
        "large.copy",
        "large.ship",
        "large.download",
    ]
    progress = report["progress"]
    assert progress["errors"] == {}
    assert progress["updates_measured"] == progress["updates_planned"] == 10
    assert progress["plain_round_trips"] == 20
    assert progress["relay_ms"]["p0"] > 0  # measured from before the write: never negative

    large = report["large"]
    assert large["output_bytes"] == 26 * MIB
    assert large["output_bytes"] < large["zip_bytes"] < large["output_bytes"] + MIB
    assert len(large["runs"]) >= 1
    assert all(run["ship_ns"] > 0 and run["download_ns"] > 0 for run in large["runs"])
    assert set(large["cpu_ship_s"]) == {"sidecar", "platform", "nats-server", "function", "client"}

    peaks = report["memory"]["peak_rss_mib_after_large"]
    assert peaks["sidecar"] > 0
    assert peaks["platform"] > 0
    assert not list(tmp_path.glob("nvcf-bench-compat-*")), "the suite left its files behind"
