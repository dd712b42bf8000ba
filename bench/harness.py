"""How every suite times its cases, compares them with baselines and reports the figures.

A case is one operation called a fixed number of times per repeat; its figure is the median
per-call time over the repeats, and its ratios divide that by the medians of named baselines.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "Case",
    "Measurement",
    "RunSettings",
    "SuiteReport",
    "filesystem_type",
    "format_table",
    "machine_info",
    "run_cases",
    "write_report",
]


@dataclass(frozen=True)
class Case:
    """One operation to time.

    `key` is unique within a suite and is what `compare_to` and the JSON use; `label` is what
    the table shows, and `short` what it shows after a ratio to this case. A case with
    `baseline=True` is a reference the others are divided by.
    """

    key: str
    group: str
    label: str
    op: Callable[[], object]
    iterations: int
    baseline: bool = False
    short: str = ""
    compare_to: tuple[str, ...] = ()
    #: Untimed calls before timing; None means `RunSettings.warmup` (fewer for slow cases).
    warmup: int | None = None
    #: Figures that describe the case (payload sizes, settings), copied into the JSON.
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Called once after timing; its figures (e.g. how many writes really happened) join `details`.
    after: Callable[[], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class RunSettings:
    """How hard to time: repeats per case, warm-up calls, and the wall-clock budget of the suite."""

    budget_s: float = 20.0
    repeats: int = 7
    min_repeats: int = 3
    warmup: int = 50
    #: Multiplies every case's iteration count (0.1 for a quick smoke run).
    iteration_scale: float = 1.0


@dataclass(frozen=True)
class Measurement:
    """The timing of one case: per-call nanoseconds of each repeat and their summary."""

    case: Case
    iterations: int
    warmup: int
    samples_ns: tuple[float, ...]
    #: True when the case's share of the budget ran out before all repeats were done.
    cut_short: bool
    details: Mapping[str, Any]
    ratios: Mapping[str, float] = field(default_factory=dict)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns)

    @property
    def min_ns(self) -> float:
        return min(self.samples_ns)

    @property
    def max_ns(self) -> float:
        return max(self.samples_ns)

    @property
    def ops_per_s(self) -> float:
        return 1e9 / self.median_ns

    def to_json(self) -> dict[str, Any]:
        case = self.case
        return {
            "key": case.key,
            "group": case.group,
            "label": case.label,
            "baseline": case.baseline,
            "iterations_per_repeat": self.iterations,
            "warmup_calls": self.warmup,
            "repeats": len(self.samples_ns),
            "cut_short": self.cut_short,
            "median_us": self.median_ns / 1000,
            "min_us": self.min_ns / 1000,
            "max_us": self.max_ns / 1000,
            "ops_per_s": self.ops_per_s,
            "samples_us": [sample / 1000 for sample in self.samples_ns],
            "ratio_to": dict(self.ratios),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class SuiteReport:
    """Everything one suite measured, with the settings and machine it ran on."""

    suite: str
    description: str
    measurements: tuple[Measurement, ...]
    settings: RunSettings
    environment: Mapping[str, Any]
    wall_s: float

    def header(self) -> dict[str, Any]:
        """The keys every suite's JSON starts with: suite, description, when, how long."""
        return {
            "suite": self.suite,
            "description": self.description,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_s": round(self.wall_s, 3),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.header(),
            "method": {
                "clock": "time.perf_counter_ns",
                "figure": "median over repeats of (repeat time / iterations)",
                "overhead": "each call goes through a zero-argument closure (tens of ns)",
                "ratio": "case median / baseline median (above 1: slower than the baseline)",
                "gc_disabled_while_timing": True,
                "budget_s": self.settings.budget_s,
                "repeats": self.settings.repeats,
                "min_repeats": self.settings.min_repeats,
                "warmup_calls": self.settings.warmup,
                "iteration_scale": self.settings.iteration_scale,
            },
            "environment": dict(self.environment),
            "cases": [measurement.to_json() for measurement in self.measurements],
        }


def _time_case(case: Case, settings: RunSettings, cap_ns: int) -> Measurement:
    iterations = max(1, round(case.iterations * settings.iteration_scale))
    op = case.op
    warmup = settings.warmup if case.warmup is None else case.warmup
    for _ in range(warmup):
        op()
    gc.collect()
    samples: list[float] = []
    cut_short = False
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection landing in one repeat only adds noise
    try:
        started = time.perf_counter_ns()
        for _ in range(settings.repeats):
            begin = time.perf_counter_ns()
            for _ in range(iterations):
                op()
            samples.append((time.perf_counter_ns() - begin) / iterations)
            spent = time.perf_counter_ns() - started
            if len(samples) >= settings.min_repeats and spent > cap_ns:
                cut_short = len(samples) < settings.repeats
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    details = dict(case.details)
    if case.after is not None:
        details.update(case.after())
    return Measurement(case, iterations, warmup, tuple(samples), cut_short, details)


def run_cases(
    cases: Sequence[Case],
    settings: RunSettings,
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[Measurement, ...]:
    """Time every case in order and compute its ratios to the cases it names.

    Each case may spend at most an equal share of `settings.budget_s` on its repeats (after at
    least `min_repeats`), so a slow disk shortens a suite instead of stretching it.
    """
    keys = [case.key for case in cases]
    if len(set(keys)) != len(keys):
        raise ValueError(f"case keys must be unique, got {keys!r}")
    for case in cases:
        unknown = [key for key in case.compare_to if key not in keys]
        if unknown:
            raise ValueError(f"case {case.key!r} compares to unknown cases {unknown!r}")
    cap_ns = int(settings.budget_s * 1e9 / max(1, len(cases)))
    timed: dict[str, Measurement] = {}
    for case in cases:
        if progress is not None:
            progress(case.key)
        timed[case.key] = _time_case(case, settings, cap_ns)
    return tuple(
        dataclasses.replace(
            timed[case.key],
            ratios={
                key: timed[case.key].median_ns / timed[key].median_ns for key in case.compare_to
            },
        )
        for case in cases
    )


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path` (`ext4`, `tmpfs`, ...), from /proc/mounts.

    Write and fsync costs depend on it more than on anything else; None off Linux.
    """
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = path.resolve()
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = Path(fields[1].replace("\\040", " "))
        if (target == mount_point or mount_point in target.parents) and (
            best is None or len(mount_point.parts) > best[0]
        ):
            best = (len(mount_point.parts), fields[2])
    return None if best is None else best[1]


def machine_info(**extra: Any) -> dict[str, Any]:
    """Python, platform and CPU facts for the JSON; `extra` adds suite-specific ones."""
    info: dict[str, Any] = {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_build": " ".join(platform.python_build()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "byteorder": sys.byteorder,
    }
    sched_getaffinity = getattr(os, "sched_getaffinity", None)
    if sched_getaffinity is not None:
        info["cpus_usable"] = len(sched_getaffinity(0))
    info.update(extra)
    return info


def _format_us(ns: float) -> str:
    us = ns / 1000
    if us >= 100:
        return f"{us:,.0f}"
    if us >= 10:
        return f"{us:.1f}"
    return f"{us:.2f}"


def _format_ratios(measurement: Measurement, short_names: Mapping[str, str]) -> str:
    ratios = ", ".join(
        f"{ratio:.2f}x {short_names[key]}" for key, ratio in measurement.ratios.items()
    )
    if measurement.case.baseline:
        return f"baseline ({ratios})" if ratios else "baseline"
    return ratios


def format_table(report: SuiteReport) -> str:
    """The report as a fixed-width table: ops/s, median and min µs per call, and the ratios."""
    names = {m.case.key: m.case.short or m.case.key for m in report.measurements}
    env = report.environment
    title = (
        f"bench {report.suite}: Python {env.get('python_version')} on {env.get('platform')}, "
        f"{env.get('cpu_count')} CPUs"
    )
    if env.get("tmp_filesystem"):
        title += f", temporary files on {env['tmp_filesystem']}"
    header = ("group", "case", "ops/s", "µs/op", "min µs", "ratio (µs/op ÷ baseline's)")
    rows = [header]
    previous_group = None
    for measurement in report.measurements:
        case = measurement.case
        label = case.label + (" *" if measurement.cut_short else "")
        rows.append(
            (
                case.group if case.group != previous_group else "",
                label,
                f"{measurement.ops_per_s:,.0f}",
                _format_us(measurement.median_ns),
                _format_us(measurement.min_ns),
                _format_ratios(measurement, names),
            )
        )
        previous_group = case.group
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    numeric = {2, 3, 4}

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    out = [title, "", line(header), "  ".join("-" * width for width in widths)]
    previous_group = None
    for measurement, row in zip(report.measurements, rows[1:], strict=True):
        if previous_group is not None and measurement.case.group != previous_group:
            out.append("")
        out.append(line(row))
        previous_group = measurement.case.group
    out.append("")
    out.append(
        "µs/op and ops/s: median of the repeats; ratio above 1 means slower than that baseline."
    )
    if any(measurement.cut_short for measurement in report.measurements):
        out.append("* fewer repeats than asked: the case used up its share of the time budget.")
    out.append(f"{len(report.measurements)} cases in {report.wall_s:.1f} s.")
    return "\n".join(out)


def write_report(report: SuiteReport, path: Path) -> None:
    """Write the report's JSON to `path`, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
