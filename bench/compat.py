"""Compatibility mode through the whole stack: progress relay latency, large-output throughput, RSS.

One function (`servers/compat_bench_server.py`) behind platform + NATS + sidecar, in one run: a
plain pexec round trip (the progress relay's baseline), progress files renamed while a status
poll waits (rename -> 202 at the caller), an output file of hundreds of MiB shipped as a zip
behind a 302 (against `shutil.copyfile` of the same size on the same disk), and the peak RSS of
the sidecar and the platform. Every answer is checked before it counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from bench.harness import Case, Measurement, RunSettings, SuiteReport, filesystem_type, machine_info
from bench.processes import memory_kib, process_cpu_s
from bench.servers.compat_bench_server import OUTPUT_NAME, pattern_block
from bench.sidecar import percentile
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack

__all__ = [
    "DEFAULT_SETTINGS",
    "DESCRIPTION",
    "OUTPUT_BYTES",
    "PLAIN_ROUND_TRIPS",
    "PROGRESS_UPDATES",
    "SETTLE_S",
    "CompatBenchError",
    "CompatReport",
    "format_report",
    "run",
]

DESCRIPTION: Final = "compat: progress relay latency, large-output zip throughput, sidecar RSS"

#: `repeats`: large-output runs (at least `min_repeats`, more while the phase's third of
#: `budget_s` lasts; the other thirds cap the round trips and the progress updates);
#: `warmup`: untimed round trips; `iteration_scale` scales the counts and the output size.
DEFAULT_SETTINGS: Final = RunSettings(budget_s=180.0, repeats=3, min_repeats=1, warmup=20)

PLAIN_ROUND_TRIPS: Final = 200
PROGRESS_UPDATES: Final = 100
OUTPUT_BYTES: Final = 256 * 1024 * 1024
MIB: Final = 1024 * 1024
#: The status poll leaves this long before the gate lets the function write the next progress
#: file, so the poll already waits in the sidecar when the file appears (set-up: ~1-3 ms).
SETTLE_S: Final = 0.02
FUNCTION_ID: Final = "0c4a2b7e-6d1f-4e3a-9b8c-1a2b3c4d5e6f"
VERSION_ID: Final = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918"
_SERVER: Final = Path(__file__).resolve().parent / "servers" / "compat_bench_server.py"
_POLL_SECONDS: Final = "60"
_LARGE_POLL_SECONDS: Final = "600"
_WARMUP_UPDATES: Final = 3
_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)


class CompatBenchError(RuntimeError):
    """The stack answered something that cannot be measured (the message says what)."""


# --- processes ----------------------------------------------------------------------------------


def _peak_rss(roles: Mapping[str, int | None]) -> dict[str, int | None]:
    return {name: None if pid is None else memory_kib(pid, "VmHWM") for name, pid in roles.items()}


def _cpu_seconds(roles: Mapping[str, int | None]) -> dict[str, float]:
    """User + system CPU seconds so far of each role's process (None: this process)."""
    seconds = {}
    for name, pid in roles.items():
        if pid is None:
            seconds[name] = time.process_time()
            continue
        seconds[name] = process_cpu_s(pid) or 0.0
    return seconds


def _spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 3) for name in before}


# --- the caller ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    received_ns: int
    """`time.time_ns()` once the whole body was read."""

    def json(self) -> Any:
        return orjson.loads(self.body)

    def expect(self, status: int, what: str) -> _Answer:
        if self.status != status:
            raise CompatBenchError(f"{what}: {self.status}, not {status}: {self.body[:300]!r}")
        return self


class _Caller:
    """Invokes the function, polls its status and drives the function's progress gate."""

    def __init__(self, http: aiohttp.ClientSession, stack: LocalStack, port: int) -> None:
        self.http = http
        self.stack = stack
        self.gate_url = f"http://127.0.0.1:{port}/bench/gate/"

    async def _answer(self, response: aiohttp.ClientResponse) -> _Answer:
        body = await response.read()
        return _Answer(response.status, dict(response.headers), body, time.time_ns())

    async def invoke(
        self,
        action: str,
        body: bytes = b"{}",
        poll: str = _POLL_SECONDS,
        extra: Mapping[str, str] | None = None,
    ) -> _Answer:
        headers = {"X-Bench-Action": action, "NVCF-POLL-SECONDS": poll, **(extra or {})}
        headers.update({"Content-Type": "application/json", **self.stack.auth_headers})
        url = self.stack.invoke_url(FUNCTION_ID)
        async with self.http.post(url, data=body, headers=headers, allow_redirects=False) as r:
            return await self._answer(r)

    async def status(self, request_id: str) -> _Answer:
        url = f"{self.stack.base_url}/v2/nvcf/pexec/status/{request_id}"
        headers = {**self.stack.auth_headers, "NVCF-POLL-SECONDS": _POLL_SECONDS}
        async with self.http.get(url, headers=headers, allow_redirects=False) as r:
            return await self._answer(r)

    async def gate(self, token: str, command: str) -> int:
        """Let the function write its next progress file (`step`) or answer (`finish`);
        returns `time.time_ns()` taken just before sending."""
        sent_ns = time.time_ns()
        async with self.http.post(self.gate_url + token, data=command) as response:
            if response.status != 200:
                raise CompatBenchError(f"gate {command}: {response.status} {await response.text()}")
            await response.read()
        return sent_ns


# --- 1. plain round trip and progress -----------------------------------------------------------


async def _plain(caller: _Caller, count: int, warmup: int, cap_s: float) -> tuple[list[int], bool]:
    """Round trips (ns) of `{"ping": i}` -> 200 `{"pong": ...}`; none started after `cap_s`."""
    latencies: list[int] = []
    stop_at = time.perf_counter() + cap_s
    for index in range(warmup + count):
        if latencies and time.perf_counter() >= stop_at:
            return latencies, True
        started = time.perf_counter_ns()
        answer = await caller.invoke("ping", orjson.dumps({"ping": index}))
        elapsed = time.perf_counter_ns() - started
        if answer.expect(200, "plain pexec").json() != {"pong": {"ping": index}}:
            raise CompatBenchError(f"plain pexec answered {answer.body[:200]!r}")
        if index >= warmup:
            latencies.append(elapsed)
    return latencies, False


@dataclass
class _ProgressRun:
    latencies_ns: list[int] = field(default_factory=list)
    """From just before `report_progress` (write + rename) to the 202 read at the caller."""
    from_after_ns: list[int] = field(default_factory=list)
    """From just after it: a lower bound, late when the function is preempted after the rename."""
    report_ns: list[int] = field(default_factory=list)
    """The `report_progress` calls themselves."""
    errors: Counter[str] = field(default_factory=Counter)
    cut_short: bool = False


async def _progress(caller: _Caller, updates: int, cap_s: float) -> _ProgressRun:
    """One progress request: step 0 answers the pexec, each next step a fresh status poll.

    Per step the poll leaves, `SETTLE_S` later the gate lets the function write the file, and
    the latency is the 202's arrival minus the time stamps the function reports at the end.
    """
    run, token = _ProgressRun(), uuid.uuid4().hex
    received: dict[int, int] = {}
    first = await caller.invoke("progress", extra={"X-Bench-Token": token})
    request_id = first.expect(202, "progress pexec").headers["nvcf-reqid"]
    stop_at = time.perf_counter() + cap_s
    for step in range(1, updates + 2):
        last = step == updates + 1 or time.perf_counter() >= stop_at
        poll = asyncio.create_task(caller.status(request_id))
        await asyncio.sleep(SETTLE_S)
        gate_ns = await caller.gate(token, "finish" if last else "step")
        answer = await poll
        if last:
            run.cut_short = step <= updates
            break
        answer.expect(202, f"status poll of step {step}")
        if answer.received_ns < gate_ns:
            run.errors["answered before the write"] += 1
        elif answer.json() != {"step": step}:
            run.errors["wrong step"] += 1
        elif answer.headers.get("NVCF-PERCENT-COMPLETE") != str(min(step, 99)):
            run.errors["wrong NVCF-PERCENT-COMPLETE"] += 1
        else:
            received[step] = answer.received_ns
    stamps = answer.expect(200, "final status poll").json()
    before, after = stamps["before_ns"], stamps["after_ns"]
    run.latencies_ns = [received[step] - before[step] for step in sorted(received)]
    run.from_after_ns = [received[step] - after[step] for step in sorted(received)]
    run.report_ns = [after[step] - before[step] for step in sorted(received)]
    return run


# --- 2. large output ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _LargeRun:
    copy_ns: int
    ship_ns: int
    """From the function's `written_at_ns` to the 302 at the caller."""
    invoke_to_302_ns: int
    download_ns: int
    zip_bytes: int
    write_s: float
    cpu_ship_s: Mapping[str, float]
    cpu_download_s: Mapping[str, float]


async def _large(
    caller: _Caller, size: int, directory: Path, roles: Mapping[str, int | None], copy_ns: int
) -> _LargeRun:
    cpu_before = _cpu_seconds(roles)
    invoked_ns = time.time_ns()
    answer = await caller.invoke(
        "large", poll=_LARGE_POLL_SECONDS, extra={"X-Bench-Bytes": str(size)}
    )
    cpu_shipped = _cpu_seconds(roles)
    request_id = answer.expect(302, "large-output pexec").headers["nvcf-reqid"]
    target = directory / f"{request_id}.zip"
    started = time.perf_counter_ns()
    async with caller.http.get(answer.headers["Location"]) as response:
        if response.status != 200:
            raise CompatBenchError(f"download: {response.status} {(await response.read())[:300]!r}")
        with target.open("wb") as file:
            async for chunk in response.content.iter_chunked(MIB):
                file.write(chunk)
    download_ns = time.perf_counter_ns() - started
    cpu_downloaded = _cpu_seconds(roles)
    try:
        document = await asyncio.to_thread(_check_zip, target, request_id, size)
        zip_bytes = target.stat().st_size
    finally:
        target.unlink(missing_ok=True)
    ship_ns = answer.received_ns - int(document["written_at_ns"])
    if ship_ns <= 0:
        raise CompatBenchError(f"302 received {ship_ns} ns after the file was written")
    return _LargeRun(
        copy_ns=copy_ns,
        ship_ns=ship_ns,
        invoke_to_302_ns=answer.received_ns - invoked_ns,
        download_ns=download_ns,
        zip_bytes=zip_bytes,
        write_s=float(document["write_s"]),
        cpu_ship_s=_spent(cpu_before, cpu_shipped),
        cpu_download_s=_spent(cpu_shipped, cpu_downloaded),
    )


def _check_zip(path: Path, request_id: str, size: int) -> dict[str, Any]:
    """The function's answer from the zip, once the output entry is whole and its bytes right."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if names != [f"{request_id}.response", OUTPUT_NAME]:
            raise CompatBenchError(f"zip entries {names}")
        document: dict[str, Any] = json.loads(archive.read(names[0]))
        if archive.getinfo(OUTPUT_NAME).file_size != size or document.get("bytes") != size:
            raise CompatBenchError(f"output entry is not {size} bytes: {document}")
        digest = hashlib.sha256()
        with archive.open(OUTPUT_NAME) as entry:  # reading it whole checks the CRC too
            while block := entry.read(MIB):
                digest.update(block)
    if digest.hexdigest() != document.get("sha256"):
        raise CompatBenchError("the shipped output differs from what the function wrote")
    return document


def _write_source(path: Path, size: int) -> None:
    """The copy baseline's source: the function's bytes, fsynced like its output file."""
    block = pattern_block()
    with path.open("wb") as file:
        for offset in range(0, size, len(block)):
            file.write(block[: min(len(block), size - offset)])
        file.flush()
        os.fsync(file.fileno())


def _copy_once(source: Path, target: Path) -> int:
    started = time.perf_counter_ns()
    shutil.copyfile(source, target)
    elapsed = time.perf_counter_ns() - started
    target.unlink()
    return elapsed


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sizes:
    plain: int
    warmup: int
    updates: int
    output_bytes: int
    runs: int

    @staticmethod
    def of(settings: RunSettings) -> _Sizes:
        scale = settings.iteration_scale
        return _Sizes(
            plain=max(5, round(PLAIN_ROUND_TRIPS * scale)),
            warmup=max(1, round(settings.warmup * scale)) if settings.warmup else 0,
            updates=max(3, round(PROGRESS_UPDATES * scale)),
            output_bytes=max(1, round(OUTPUT_BYTES * scale / MIB)) * MIB,
            runs=max(1, settings.repeats),
        )


@dataclass
class _Figures:
    plain_ns: list[int] = field(default_factory=list)
    plain_cut: bool = False
    progress: _ProgressRun = field(default_factory=_ProgressRun)
    large: list[_LargeRun] = field(default_factory=list)
    large_cut: bool = False
    rss_before_kib: dict[str, int | None] = field(default_factory=dict)
    rss_after_kib: dict[str, int | None] = field(default_factory=dict)


async def _measure(
    stack: LocalStack,
    port: int,
    directory: Path,
    sizes: _Sizes,
    settings: RunSettings,
    progress: Callable[[str], None],
) -> _Figures:
    figures, cap_s = _Figures(), settings.budget_s / 3
    roles: dict[str, int | None] = {
        "sidecar": stack.sidecars(VERSION_ID)[0].pid,
        "platform": stack.platform.pid,
        "nats-server": stack.nats.pid,
        "function": stack.container(VERSION_ID).pid,
    }
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as http:
        caller = _Caller(http, stack, port)
        progress("progress.plain")
        figures.plain_ns, figures.plain_cut = await _plain(caller, sizes.plain, sizes.warmup, cap_s)
        progress("progress.relay")
        await _progress(caller, _WARMUP_UPDATES, cap_s)  # warms the status and progress paths
        figures.progress = await _progress(caller, sizes.updates, cap_s)
        if not figures.progress.latencies_ns:
            raise CompatBenchError(f"no progress update measured: {dict(figures.progress.errors)}")
        figures.rss_before_kib = _peak_rss(roles)
        source = directory / "copy-source.bin"
        await asyncio.to_thread(_write_source, source, sizes.output_bytes)
        stop_at = time.perf_counter() + cap_s
        for number in range(1, sizes.runs + 1):
            if number > settings.min_repeats and time.perf_counter() >= stop_at:
                figures.large_cut = True
                break
            progress(f"large output, run {number}")
            copy_ns = await asyncio.to_thread(_copy_once, source, directory / "copy-target.bin")
            run = await _large(
                caller, sizes.output_bytes, directory, roles | {"client": None}, copy_ns
            )
            figures.large.append(run)
        source.unlink()
        figures.rss_after_kib = _peak_rss(roles)
    return figures


def _function(port: int) -> FunctionSpec:
    return FunctionSpec(
        command=(sys.executable, str(_SERVER), "--port", str(port)),
        inference_port=port,
        function_id=FUNCTION_ID,
        version_id=VERSION_ID,
        name="bench-compat",
        default_invocation_path="/",
        sidecars=1,
        max_request_concurrency=4,
    )


def run(settings: RunSettings, progress: Callable[[str], None] | None = None) -> CompatReport:
    """Start the stack around the bench function, measure the three parts, print and report.

    Raises `CompatBenchError` (with the stack's log tails) when an answer is not what it must be.
    """
    started = time.perf_counter()
    sizes = _Sizes.of(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nvcf-bench-compat-") as tmp:
        directory = Path(tmp)
        with LocalStack([_function(port)], work_dir=directory / "stack") as stack:
            try:
                figures = asyncio.run(
                    _measure(stack, port, directory, sizes, settings, progress or (lambda _: None))
                )
            except CompatBenchError as error:
                tails = "\n".join(
                    f"--- {process.name} log ends with:\n{process.log_tail()}"
                    for process in stack.processes()
                )
                raise CompatBenchError(f"{error}\n{tails}") from None
        environment = machine_info(
            tmp_filesystem=filesystem_type(directory),
            load_average_1m={"before": load_before[0], "after": os.getloadavg()[0]},
        )
    report = _report(figures, sizes, settings, environment, time.perf_counter() - started)
    print(format_report(report), end="\n\n", flush=True)
    return report


# --- the report ---------------------------------------------------------------------------------


def _ms(samples_ns: Sequence[float], q: float) -> float:
    return percentile(sorted(samples_ns), q) / 1e6


def _latency(samples_ns: Sequence[float]) -> dict[str, float]:
    figures = {f"p{q:g}": _ms(samples_ns, q) for q in (0, 50, 90, 99, 100)}
    return figures | {"mean": sum(samples_ns) / len(samples_ns) / 1e6}


def _median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


def _mib_s(size: int, samples_ns: Sequence[float]) -> float:
    """MiB per second at the median duration."""
    return size / MIB / (_median(samples_ns) / 1e9)


@dataclass(frozen=True)
class CompatReport(SuiteReport):
    """The cases (shared table) and the suite's summaries: `progress`, `large`, `memory`."""

    progress: Mapping[str, Any] = field(default_factory=dict)
    large: Mapping[str, Any] = field(default_factory=dict)
    memory: Mapping[str, Any] = field(default_factory=dict)
    setup: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.header(),
            "method": {
                "plain": "time.perf_counter_ns around one pexec (tiny JSON, 200) and its body",
                "progress": "time.time_ns() at the caller once the 202's body is read, minus "
                "time.time_ns() the function took just before report_progress (write + atomic "
                "rename); each step is answered by a fresh status poll sent "
                f"{SETTLE_S * 1000:g} ms before that write; NVCF-POLL-SECONDS 60",
                "ship": "302 read at the caller minus the function's written_at (file fsynced "
                "and renamed, answer about to leave): sidecar spool + zip + PUT, the platform's "
                "object store (chunks written into the NATS bucket as the upload arrives, file "
                "storage), the 302 relay",
                "download": "GET of the Location streamed into a file on the same disk",
                "copy_baseline": "shutil.copyfile of a file of the same bytes and size, fsynced "
                "once, page cache warm, no fsync of the copy; one before each large-output run",
                "mib_s": "bytes / 2**20 / median seconds; ship uses the output file's size, "
                "download the zip's",
                "cpu_s": "user + system CPU seconds of each process from /proc (clock ticks), "
                "medians over the runs; client = this process",
                "peak_rss": "VmHWM of /proc/<pid>/status: each process's lifetime peak",
                "percentiles": "linear interpolation between closest ranks",
                "budget_s": self.settings.budget_s,
                "iteration_scale": self.settings.iteration_scale,
            },
            "setup": dict(self.setup),
            "environment": dict(self.environment),
            "progress": dict(self.progress),
            "large": dict(self.large),
            "memory": dict(self.memory),
            "cases": [measurement.to_json() for measurement in self.measurements],
        }


def _case(
    key: str,
    group: str,
    label: str,
    samples_ns: Sequence[int],
    short: str,
    baseline: str | None = None,
    cut_short: bool = False,
) -> Measurement:
    case = Case(
        key=key,
        group=group,
        label=label,
        op=_measured_elsewhere,
        iterations=len(samples_ns),
        baseline=baseline is None,
        short=short,
        compare_to=() if baseline is None else (baseline,),
        warmup=0,
    )
    ordered = tuple(sorted(float(ns) for ns in samples_ns))
    return Measurement(case, len(samples_ns), 0, ordered, cut_short, {})


def _measured_elsewhere() -> object:
    raise RuntimeError("bench compat cases are timed by the suite itself, not called")


def _with_ratios(measurements: Sequence[Measurement]) -> tuple[Measurement, ...]:
    by_key = {m.case.key: m for m in measurements}
    return tuple(
        dataclasses.replace(
            m, ratios={key: m.median_ns / by_key[key].median_ns for key in m.case.compare_to}
        )
        for m in measurements
    )


def _report(
    figures: _Figures,
    sizes: _Sizes,
    settings: RunSettings,
    environment: Mapping[str, Any],
    wall_s: float,
) -> CompatReport:
    plain, relay, runs = figures.plain_ns, figures.progress, figures.large
    size, zip_bytes = sizes.output_bytes, runs[0].zip_bytes
    copy, ship = [r.copy_ns for r in runs], [r.ship_ns for r in runs]
    download = [r.download_ns for r in runs]
    group = f"large output, {size // MIB} MiB"
    measurements = _with_ratios(
        [
            _case("progress.plain", "progress", "plain pexec round trip (200, tiny JSON)", plain,
                  "plain", cut_short=figures.plain_cut),
            _case("progress.relay", "progress", "progress write -> 202 at the caller",
                  relay.latencies_ns, "relay", "progress.plain", relay.cut_short),
            _case("large.copy", group, "shutil.copyfile, same disk", copy, "copy"),
            _case("large.ship", group, "sidecar zip + upload (written -> 302)", ship, "ship",
                  "large.copy", figures.large_cut),
            _case("large.download", group, "download of the zip (Location)", download,
                  "download", "large.copy"),
        ]
    )  # fmt: skip
    roles = list(runs[0].cpu_ship_s)
    rates = {
        "copy_mib_s": _mib_s(size, copy),
        "ship_mib_s": _mib_s(size, ship),
        "download_mib_s": _mib_s(zip_bytes, download),
    }
    return CompatReport(
        suite="compat",
        description=DESCRIPTION,
        measurements=measurements,
        settings=settings,
        environment=environment,
        wall_s=wall_s,
        progress={
            "updates_planned": sizes.updates,
            "updates_measured": len(relay.latencies_ns),
            "errors": dict(relay.errors),
            "settle_ms": SETTLE_S * 1000,
            "plain_round_trips": len(plain),
            "plain_round_trip_ms": _latency(plain),
            "relay_ms": _latency(relay.latencies_ns),
            "relay_from_after_write_ms": _latency(relay.from_after_ns),
            "report_progress_ms": _latency(relay.report_ns),
            "added_p50_ms": _ms(relay.latencies_ns, 50) - _ms(plain, 50),
            "added_p99_ms": _ms(relay.latencies_ns, 99) - _ms(plain, 99),
            "p50_ratio": _ms(relay.latencies_ns, 50) / _ms(plain, 50),
        },
        large={
            "output_bytes": size,
            "zip_bytes": zip_bytes,
            **rates,
            "ship_over_copy": rates["ship_mib_s"] / rates["copy_mib_s"],
            "download_over_copy": rates["download_mib_s"] / rates["copy_mib_s"],
            "seconds": {
                "copy": _median(copy) / 1e9,
                "ship": _median(ship) / 1e9,
                "download": _median(download) / 1e9,
                "invoke_to_302": _median([r.invoke_to_302_ns for r in runs]) / 1e9,
                "function_write": _median([r.write_s for r in runs]),
            },
            "cpu_ship_s": {n: _median([r.cpu_ship_s[n] for r in runs]) for n in roles},
            "cpu_download_s": {n: _median([r.cpu_download_s[n] for r in runs]) for n in roles},
            "runs": [dataclasses.asdict(r) for r in runs],
        },
        memory={
            "peak_rss_mib_before_large": _mib(figures.rss_before_kib),
            "peak_rss_mib_after_large": _mib(figures.rss_after_kib),
            "peak_rss_over_output": {
                n: None if kib is None else kib * 1024 / size
                for n, kib in figures.rss_after_kib.items()
            },
        },
        setup={
            "function": "bench/servers/compat_bench_server.py (aiohttp), one process",
            "sidecars": 1,
            "sidecar_max_request_concurrency": 4,
            "client": f"aiohttp {aiohttp.__version__}, one ClientSession, one request at a time",
            "plain_warmup": sizes.warmup,
            "progress_warmup_updates": _WARMUP_UPDATES,
            "large_runs_planned": sizes.runs,
        },
    )


def _mib(kib: Mapping[str, int | None]) -> dict[str, float | None]:
    return {name: None if value is None else value / 1024 for name, value in kib.items()}


# --- the table ----------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def format_report(report: CompatReport) -> str:
    """Progress latency against a plain round trip, MiB/s against a copy, peak RSS."""
    env, p, large, memory = report.environment, report.progress, report.large, report.memory
    load = env.get("load_average_1m", {})
    lines = [
        f"bench compat: Python {env.get('python_version')} on {env.get('platform')}, "
        f"{env.get('cpus_usable', env.get('cpu_count'))} CPUs shared by client, platform, "
        f"nats-server, sidecar and function; temporary files on {env.get('tmp_filesystem')}; "
        f"load average {load.get('before', 0):.2f} before, {load.get('after', 0):.2f} after",
        "",
        f"Progress: {p['updates_measured']} of {p['updates_planned']} updates, each answered by a "
        f"fresh status poll sent {p['settle_ms']:g} ms before the function writes the file",
    ]
    rows: list[tuple[str, ...]] = [("", "count", "p50 ms", "p90 ms", "p99 ms", "max ms")]
    for label, key, count in (
        ("plain pexec round trip (200, tiny JSON)", "plain_round_trip_ms", p["plain_round_trips"]),
        ("progress write -> 202 at the caller", "relay_ms", p["updates_measured"]),
    ):
        ms = p[key]
        rows.append((label, str(count), *(f"{ms[q]:.2f}" for q in ("p50", "p90", "p99", "p100"))))
    lines += _table(rows)
    errors = ", ".join(f"{n} {kind}" for kind, n in p["errors"].items()) or "none"
    lines += [
        f"  relay vs plain round trip: {p['added_p50_ms']:+.2f} ms p50 (x{p['p50_ratio']:.2f}), "
        f"{p['added_p99_ms']:+.2f} ms p99; report_progress itself "
        f"{p['report_progress_ms']['p50']:.2f} ms p50; errors: {errors}",
        "",
        f"Large output: a {large['output_bytes'] / MIB:g} MiB file in NVCF-LARGE-OUTPUT-DIR, "
        f"zip of {large['zip_bytes'] / MIB:.2f} MiB, {len(large['runs'])} run(s), medians",
    ]
    seconds = large["seconds"]
    lines += _table(
        [
            ("", "MiB/s", "seconds", "MiB/s vs copy"),
            ("shutil.copyfile, same disk (baseline)", f"{large['copy_mib_s']:,.0f}",
             f"{seconds['copy']:.2f}", "-"),
            ("sidecar zip + upload (written -> 302)", f"{large['ship_mib_s']:,.0f}",
             f"{seconds['ship']:.2f}", f"x{large['ship_over_copy']:.3f}"),
            ("download of the zip (Location)", f"{large['download_mib_s']:,.0f}",
             f"{seconds['download']:.2f}", f"x{large['download_over_copy']:.3f}"),
        ]
    )  # fmt: skip
    lines.append(
        f"  invoke -> 302 {seconds['invoke_to_302']:.2f} s, of which the function's write "
        f"(fsync, rename) {seconds['function_write']:.2f} s"
    )
    for title, key in (("invoke -> 302", "cpu_ship_s"), ("download", "cpu_download_s")):
        spent = ", ".join(f"{name} {s:.2f}" for name, s in large[key].items())
        lines.append(f"  CPU seconds, {title}: {spent}")
    lines += ["", "Peak RSS (VmHWM), MiB:"]
    rows = [("", "before large", "after large", "after / output size")]  # a new table
    for name, after in memory["peak_rss_mib_after_large"].items():
        before = memory["peak_rss_mib_before_large"][name]
        share = memory["peak_rss_over_output"][name]
        rows.append((name, _num(before, ",.1f"), _num(after, ",.1f"), _num(share, ".3f")))
    lines += _table(rows)
    if any(m.cut_short for m in report.measurements):
        lines.append("* stopped at the time cap: figures are from fewer samples than planned.")
    lines.append(f"{len(report.measurements)} measurements in {report.wall_s:.1f} s.")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
