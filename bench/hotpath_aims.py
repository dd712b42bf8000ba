"""The hot path's aims (issue 14), judged on `bench hotpath`'s figures: pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "AIMS",
    "FLAT_GROWTH_MIB",
    "evaluate_aims",
    "format_aims",
    "platform_floor",
    "relative_cpu",
]

AIMS: Final[Mapping[str, float]] = {
    "sidecar_cpu_us": 200.0,
    "platform_cpu_us": 150.0,
    "dev_throughput_ratio": 0.15,
    "dev_added_p50_ms": 1.0,
    "dev_vs_localstack": 0.95,
    "pytriton_throughput_ratio": 0.5,
    "sidecar_idle_rss_mib": 60.0,
    "sidecar_rss_growth_mib": 5.0,
}
"""Bounds: at most for CPU, p50, memory and growth; at least for the ratios. "dev no slower than
LocalStack" allows 5 % of run-to-run noise."""
FLAT_GROWTH_MIB: Final = AIMS["sidecar_rss_growth_mib"]
"""Growth of the sidecar's VmRSS from the first tenth of the requests to the end that still
counts as flat."""


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def evaluate_aims(figures: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per aim: its name, what was measured, the bound, `at_most` or `at_least`, and
    whether it is met."""
    echo32, dev1, dev32 = figures["echo"]["c32"], figures["dev"]["c1"], figures["dev"]["c32"]
    pytriton, memory = figures["pytriton"], figures["memory"]
    stack_cpu = echo32["stack"]["cpu_us"]
    curve = [mib for _, mib in memory["curve_mib"] if mib is not None]
    measured: list[tuple[str, float | None, str]] = [
        ("sidecar_cpu_us", stack_cpu.get("sidecar"), "at_most"),
        ("platform_cpu_us", stack_cpu.get("platform"), "at_most"),
        (
            "dev_throughput_ratio",
            _ratio(dev32["dev"]["ok_per_s"], dev32["direct"]["ok_per_s"]),
            "at_least",
        ),
        ("dev_added_p50_ms", dev1["dev"]["p50_ms"] - dev1["direct"]["p50_ms"], "at_most"),
        (
            "dev_vs_localstack",
            _ratio(dev32["dev"]["ok_per_s"], dev32["localstack"]["ok_per_s"]),
            "at_least",
        ),
        (
            "pytriton_throughput_ratio",
            _ratio(pytriton["stack"]["ok_per_s"], pytriton["direct"]["ok_per_s"]),
            "at_least",
        ),
        ("sidecar_idle_rss_mib", memory["idle_mib"], "at_most"),
        ("sidecar_rss_growth_mib", curve[-1] - curve[0] if len(curve) > 1 else None, "at_most"),
    ]
    aims = []
    for name, value, sense in measured:
        bound = AIMS[name]
        met = None if value is None else (value <= bound if sense == "at_most" else value >= bound)
        aims.append({"aim": name, "measured": value, "bound": bound, "sense": sense, "met": met})
    return aims


def format_aims(aims: Sequence[Mapping[str, Any]]) -> list[str]:
    """The aims as report lines: measured against bound, met or NOT met."""
    lines = ["Aims:"]
    for aim in aims:
        value = aim["measured"]
        shown = "not measured" if value is None else f"{value:,.3g}"
        sign = "<=" if aim["sense"] == "at_most" else ">="
        verdict = {True: "met", False: "NOT met", None: "unknown"}[aim["met"]]
        lines.append(f"  {aim['aim']:<26} {shown:>10}  ({sign} {aim['bound']:g}): {verdict}")
    return lines


def platform_floor(level: Mapping[str, Any], floors: Mapping[str, float]) -> dict[str, float]:
    """The platform's floor in this run: two aiohttp server exchanges (the caller's and the
    worker's POST attach; one costs what the echo server, aiohttp's server with orjson, costs
    per request when called directly) and one JetStream publish with its ack.

    With the platform's own work per call measured (`platform_work_us`), that floor with it
    added, and the floor of a platform whose two exchanges were bare asyncio ones (hand-written
    HTTP on both routes) doing the same work."""
    server = level["direct"]["cpu_us"].get("server")
    if server is None:
        return {}
    publish = floors["jetstream_publish_us"]
    figures = {"aiohttp_server_exchange_us": server, "platform_floor_us": 2 * server + publish}
    work = floors.get("platform_work_us")
    if work is not None:
        figures["platform_floor_with_work_us"] = 2 * server + publish + work
        figures["platform_bare_floor_us"] = 2 * floors["raw_asyncio_exchange_us"] + publish + work
    return figures


def relative_cpu(level: Mapping[str, Any]) -> dict[str, float]:
    """CPU per request of the stack's sidecar and platform in units of the echo server's own in
    the same phase: this machine's speed drifts by a third from run to run, and these ratios
    move far less, so runs of different days compare by them."""
    cpu = level["stack"]["cpu_us"]
    server = cpu.get("server")
    if not server:
        return {}
    return {role: cpu[role] / server for role in ("sidecar", "platform") if cpu.get(role)}
