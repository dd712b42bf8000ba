"""`python -m chaos` (run with `tests` on PYTHONPATH; `make chaos`): every scenario, or the named
ones, one summary line each, figures in bench/results/chaos.json; exit 1 on a wrong or lost request.
The NATS-cluster scenarios run only when named (`make chaos-cluster`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from chaos.callers import LoadSettings
from chaos.classify import Summary
from chaos.scenarios import CLUSTER_SCENARIOS, SCENARIOS, ChaosSettings, run_scenario

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench" / "results" / "chaos.json"


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Requests through `nvcf-sidecar dev --restart` while processes are killed.",
    )
    known = {**SCENARIOS, **CLUSTER_SCENARIOS}
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"{', '.join(known)} (default: all but the cluster ones)",
    )
    parser.add_argument("--requests", type=int, default=1000, metavar="N", help="per scenario")
    parser.add_argument("--concurrency", type=int, default=16, metavar="N", help="callers (16)")
    parser.add_argument("--poll-seconds", type=int, default=5, metavar="S", help="(5)")
    parser.add_argument("--deadline", type=float, default=60.0, metavar="S", help="per request")
    parser.add_argument("--seed", type=int, default=None, help="of the fault choices (random)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON figures")
    parser.add_argument("--keep", action="store_true", help="keep every work dir (logs)")
    options = parser.parse_args(argv)
    unknown = [name for name in options.scenarios if name not in known]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if options.requests < 1 or options.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    return options


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
    }


def write_report(path: Path, settings: ChaosSettings, summaries: Sequence[Summary]) -> None:
    report = {
        "suite": "chaos",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": dataclasses.asdict(settings),
        "scenarios": [
            {**dataclasses.asdict(s), "line": s.line(), "failed": s.failed} for s in summaries
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    options = _arguments(sys.argv[1:] if argv is None else argv)
    seed = options.seed if options.seed is not None else int(time.time())
    settings = ChaosSettings(
        requests=options.requests,
        load=LoadSettings(options.concurrency, options.poll_seconds, options.deadline),
        seed=seed,
    )
    names = options.scenarios or list(SCENARIOS)
    print(f"chaos: {', '.join(names)}; {options.requests} requests each, seed {seed}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="nvcf-chaos-"))
    summaries = []
    for name in names:
        scenario = SCENARIOS.get(name) or CLUSTER_SCENARIOS[name]
        summary = run_scenario(scenario, settings, base / name)
        summaries.append(summary)
        print(summary.line(), flush=True)
        for fault in summary.faults:
            print(f"  fault: {json.dumps(fault)}", flush=True)
        for note in summary.notes:
            print(f"  {note}", flush=True)
        if summary.failure_window_s is not None:
            first, last = summary.failure_window_s
            print(f"  clean failures from {first:.2f} s to {last:.2f} s", flush=True)
        for reason, count in {**summary.failures, **summary.lost_reasons}.items():
            print(f"  {count} x {reason}", flush=True)
        for complaint, count in summary.log_digest.items():
            print(f"  logged {count} x {complaint}", flush=True)
        if summary.latency:
            print(f"  latency: {json.dumps(summary.latency)}", flush=True)
    write_report(options.out, settings, summaries)
    failed = [s.scenario for s in summaries if s.failed]
    if failed or options.keep:
        print(f"logs kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    print(f"figures written to {options.out}")
    if failed:
        print(f"chaos: FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
