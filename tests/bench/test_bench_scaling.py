"""`python -m bench scaling --quick` runs end to end: nats-server, the platform, its instances,
every phase (cold start, bursts, scale-down) and a JSON report.

A smoke test: it proves the suite runs and checks what it reports, never how fast anything is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.bench import run_quick_suite

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]


def test_quick_scaling_suite_reports_every_phase(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    stdout, report = run_quick_suite("scaling", tmp_path / "scaling.json", env=env, timeout=55)
    assert "Cold start: hello, min 0 / max 1" in stdout
    assert "figures written to" in stdout

    assert report["suite"] == "scaling"
    assert [case["key"] for case in report["cases"]] == [
        "cold.warm",
        "cold.cold",
        "burst.fixed_3",
        "burst.autoscaled",
        "burst.fixed_1",
    ]
    assert report["setup"]["platform_settings"] == {
        "autoscale_interval": 1.0,
        "scale_down_cooldown": 3.0,
        "idle_timeout": 2.0,
        "reconcile_interval": 0.1,
    }
    assert report["environment"]["cpu_count"] >= 1

    cold = report["cold_start"]
    assert cold["tries"] >= 1
    assert cold["cold_s"]["median"] > cold["warm_s"]["median"] > 0
    assert cold["ratio_cold_over_warm"] > 1
    assert all(run["to_zero_s"] > 0 for run in cold["runs"])

    up = report["scale_up"]
    assert up["burst"]["calls"] == 60
    assert set(up["burst_s"]) == {"fixed_1", "fixed_3", "autoscaled"}
    assert all(seconds > 0 for seconds in up["burst_s"].values())
    assert up["ratio_autoscaled_over_fixed_3"] > 0
    assert up["ratio_fixed_1_over_autoscaled"] > 0
    assert up["first_scale_up_decision_s"] > 0  # the burst made the autoscaler want more
    assert up["second_ready_s"] >= up["first_scale_up_decision_s"]
    assert up["peak_desired"] >= 2
    assert up["per_round"][0]["decisions_logged"], "no autoscaler decision was recorded"

    down = report["scale_down"]
    assert down["back_at_1_s"] > 0
    assert down["settings"] == {"scale_down_cooldown": 3.0, "autoscale_interval": 1.0}
    assert not list(tmp_path.glob("nvcf-bench-scaling-*")), "the suite left its files behind"
