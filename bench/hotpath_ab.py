"""A/B phases of `bench hotpath`: the echo stack under the same load in two configurations
chosen by environment variables its processes read, alternated so that the machine's drift
falls on both, and the mean of each.

`LOOPS` compares the event loops (`NVCF_EVENT_LOOP`); `CLIENTS` compares the sidecar's HTTP
clients for the container call and the POST attach (`NVCF_CONTAINER_CLIENT`,
`NVCF_ATTACH_CLIENT`): aiohttp's against the lean one (`worker/lean_http.py`); `ATTACH` compares
the platform's servers of the worker-facing attach routes (`NVCF_BENCH_ATTACH_LISTENER`):
aiohttp's, on the platform's HTTP port, against the lean attach listener on its own port.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ATTACH",
    "ATTACH_LISTENER_VARIABLE",
    "CLIENTS",
    "LOOPS",
    "Comparison",
    "ab_lines",
    "alternate",
]

ROUNDS: Final = 2


@dataclass(frozen=True)
class Comparison:
    """Two configurations: `baseline` first, then `candidate`, each a set of variables."""

    title: str
    baseline: tuple[str, Mapping[str, str]]
    candidate: tuple[str, Mapping[str, str]]

    @property
    def names(self) -> tuple[str, str]:
        return self.baseline[0], self.candidate[0]


LOOPS: Final = Comparison(
    "event loops",
    ("asyncio", {"NVCF_EVENT_LOOP": "asyncio"}),
    ("uvloop", {"NVCF_EVENT_LOOP": "uvloop"}),
)
CLIENTS: Final = Comparison(
    "sidecar HTTP clients (container call and POST attach)",
    ("aiohttp", {"NVCF_CONTAINER_CLIENT": "aiohttp", "NVCF_ATTACH_CLIENT": "aiohttp"}),
    ("lean", {"NVCF_CONTAINER_CLIENT": "lean", "NVCF_ATTACH_CLIENT": "lean"}),
)

ATTACH_LISTENER_VARIABLE: Final = "NVCF_BENCH_ATTACH_LISTENER"
"""`off`: the bench's stacks run without the lean attach listener (`LocalStack`'s
`attach_listener`), so workers attach through aiohttp's server on the platform's HTTP port."""
ATTACH: Final = Comparison(
    "platform attach servers (the worker-facing routes)",
    ("aiohttp", {ATTACH_LISTENER_VARIABLE: "off"}),
    ("lean", {ATTACH_LISTENER_VARIABLE: "on"}),
)

Measure = Callable[[str], tuple[Mapping[str, Any], float | None]]
"""Runs the echo stack once (its children inherit the environment; the argument labels the
run) and returns its load figures (`ok_per_s`, `cpu_us`) and its sidecar's idle VmRSS in MiB."""


@contextlib.contextmanager
def _environment(changes: Mapping[str, str]) -> Iterator[None]:
    """Children started meanwhile see `changes` (they inherit the bench's environment)."""
    before = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def alternate(
    comparison: Comparison, measure: Measure, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Each configuration `ROUNDS` times, alternating; the mean run of each, by name."""
    runs: dict[str, list[Mapping[str, Any]]] = {name: [] for name in comparison.names}
    idle: dict[str, list[float]] = {name: [] for name in comparison.names}
    for round_ in range(ROUNDS):
        for name, changes in (comparison.baseline, comparison.candidate):
            progress(f"{comparison.title}: {name} {round_ + 1}")
            with _environment(changes):
                run, idle_mib = measure(f"{name}-{round_}")
            runs[name].append(run)
            if idle_mib is not None:
                idle[name].append(idle_mib)
    return {name: _mean_run(runs[name], idle[name]) for name in comparison.names}


def _mean_run(runs: Sequence[Mapping[str, Any]], idle_mib: Sequence[float]) -> dict[str, Any]:
    roles = {role for run in runs for role, value in run["cpu_us"].items() if value is not None}
    return {
        "ok_per_s": sum(run["ok_per_s"] for run in runs) / len(runs),
        "cpu_us": {
            role: sum(run["cpu_us"].get(role) or 0.0 for run in runs) / len(runs)
            for role in sorted(roles)
        },
        "idle_mib": round(sum(idle_mib) / len(idle_mib), 1) if idle_mib else None,
        "runs": list(runs),
    }


def ab_lines(comparison: Comparison, results: Mapping[str, Any], concurrency: int) -> list[str]:
    """The report's lines: each configuration's mean, then candidate / baseline."""
    lines = [f"{comparison.title}, echo c{concurrency}, mean of {ROUNDS} runs each:"]
    for name in comparison.names:
        run = results[name]
        cpu = ", ".join(f"{role} {value:,.0f}" for role, value in run["cpu_us"].items())
        lines.append(
            f"  {name:<8} {run['ok_per_s']:>8,.0f} req/s  CPU µs {cpu}; "
            f"sidecar VmRSS idle {run['idle_mib']} MiB"
        )
    base_name, new_name = comparison.names
    base, new = results[base_name], results[new_name]
    ratios = [
        f"{role} {new['cpu_us'][role] / base['cpu_us'][role]:.2f}"
        for role in ("sidecar", "platform")
        if new["cpu_us"].get(role) and base["cpu_us"].get(role)
    ]
    if base["ok_per_s"]:
        lines.append(
            f"  {new_name} / {base_name}: throughput {new['ok_per_s'] / base['ok_per_s']:.2f}x, "
            f"CPU per request {', '.join(ratios)}"
        )
    return lines
