"""Command line of the benchmarks: `python -m bench [suite ...]` runs the named suites (default all).

Each suite lives in its own module, imported only when it runs, so a suite that needs the sidecar's
dependencies never stops another from running.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.harness import RunSettings, SuiteReport, format_table, write_report

#: Suite name -> (module, one-line description). A new suite adds a line here.
SUITES: dict[str, tuple[str, str]] = {
    "library": ("bench.library", "nvcf_worker: header parsing, progress reports, output files"),
    "sidecar": ("bench.sidecar", "echo model: direct HTTP vs platform + NATS + sidecar (pexec)"),
    "compat": ("bench.compat", "compatibility mode: progress relay, large-output zip, sidecar RSS"),
    "scaling": ("bench.scaling", "autoscaler: cold start, burst scale-up reaction, scale-down"),
    "hotpath": ("bench.hotpath", "hot path with wrk: CPU/request, dev, PyTriton, sidecar memory"),
}

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Run nvcf-worker micro-benchmarks. Each suite prints a table of ratios against "
            "baselines measured in the same run and writes every figure as JSON to "
            "bench/results/<suite>.json."
        ),
    )
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="suite",
        help=f"suites to run (default all: {', '.join(SUITES)})",
    )
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file to write (one suite only; default bench/results/<suite>.json)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time budget of each suite's repeats (default: the suite's own, about 20 s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the iterations and a 3 s budget: checks the suites run, figures are rough",
    )
    options = parser.parse_args(argv)
    unknown = [name for name in options.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    if options.out is not None and len(options.suites) != 1:
        parser.error("--out needs exactly one suite named on the command line")
    if options.budget is not None and options.budget <= 0:
        parser.error(f"--budget must be positive, not {options.budget}")
    return options


def _run_suite(name: str, options: argparse.Namespace) -> SuiteReport:
    module = importlib.import_module(SUITES[name][0])
    settings: RunSettings = module.DEFAULT_SETTINGS
    if options.quick:
        settings = dataclasses.replace(settings, budget_s=3.0, iteration_scale=0.1)
    if options.budget is not None:
        settings = dataclasses.replace(settings, budget_s=options.budget)

    def show_progress(case: str) -> None:
        if sys.stderr.isatty():
            print(f"\r\033[K{name}: {case}", end="", file=sys.stderr, flush=True)

    report: SuiteReport = module.run(settings, progress=show_progress)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    return report


def _display(path: Path) -> str:
    """`path` relative to the working directory when it lies under it."""
    absolute = path.absolute()
    if absolute.is_relative_to(Path.cwd()):
        return os.path.relpath(absolute)
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse_arguments(sys.argv[1:] if argv is None else argv)
    if options.list:
        for name, (_, description) in SUITES.items():
            print(f"{name:12} {description}")
        return 0
    for index, name in enumerate(options.suites or list(SUITES)):
        report = _run_suite(name, options)
        out = options.out if options.out is not None else RESULTS_DIR / f"{name}.json"
        write_report(report, out)
        if index:
            print()
        if report.measurements:  # a suite without cases (hotpath) printed its report itself
            print(format_table(report))
        print(f"figures written to {_display(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
