"""The hot path's aims, measured with a compiled client (`wrk`), each against a baseline of the
same run:

1. **echo**: bench sidecar's echo server behind a LocalStack (one sidecar, 32 slots), called at
   concurrency 1 and 32 directly and through the stack; CPU per answered request of the
   platform, nats-server, sidecar and server (user + system time from /proc).
2. **dev**: `nvcf-sidecar dev --config` running the same server with dev's defaults (one
   sidecar, one slot), and a LocalStack of the same spec: concurrency 1 and 32 each. dev's own
   process is counted too: it copies every child's output.
3. **pytriton**: the pytriton_sleeper example (sleep 0) behind a LocalStack with 32 slots,
   against Triton's HTTP port called directly, at concurrency 32.
4. **memory**: the echo stack's sidecar: resident memory (VmRSS) idle, before any load, then
   after each tenth of `MEMORY_REQUESTS` requests at concurrency 32.
5. **loops**: the echo stack at concurrency 32 on asyncio's event loop and on uvloop
   (`NVCF_EVENT_LOOP`), alternated twice, with each one's sidecar VmRSS idle; skipped without
   uvloop.
6. **clients**: the same with the sidecar's container call and POST attach through aiohttp and
   through the lean client (`NVCF_CONTAINER_CLIENT`, `NVCF_ATTACH_CLIENT`), alternated twice
   (`hotpath_ab.py`).
7. **attach**: the same with the platform's worker-facing attach routes on aiohttp's server
   (the platform's HTTP port) and on its lean attach listener (`--attach-port`), alternated
   twice.
8. **profile**: the echo stack at concurrency 32 under `perf` (`hotpath_profile.py`): the
   share of the platform's, the sidecar's and the echo server's CPU in the CPython
   interpreter, the kernel, libc, uvloop and other compiled code; skipped without perf.

Without wrk on PATH the suite measures nothing and says so (`apt-get install wrk`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from bench.dev_process import run_dev
from bench.harness import RunSettings, SuiteReport, machine_info
from bench.hotpath_ab import (
    ATTACH,
    ATTACH_LISTENER_VARIABLE,
    CLIENTS,
    LOOPS,
    Comparison,
    ab_lines,
    alternate,
)
from bench.hotpath_aims import AIMS, evaluate_aims, format_aims, platform_floor, relative_cpu
from bench.hotpath_floors import measure_floors
from bench.hotpath_profile import ProfileError, profile_lines, profile_roles
from bench.processes import CpuSnapshot, memory_kib, process_cpu_split, stack_roles
from bench.sidecar import FUNCTION_ID, VERSION_ID, echo_function
from bench.wrk import WrkError, run_wrk, wrk_path
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack
from nvcf_platform.devstack.stack_spec import free_port

__all__ = [
    "AIMS",
    "DEFAULT_SETTINGS",
    "DESCRIPTION",
    "MEMORY_REQUESTS",
    "HotpathBenchError",
    "HotpathReport",
    "format_report",
    "run",
]

DESCRIPTION: Final = (
    "hot path (wrk): CPU per request, dev vs direct and LocalStack, PyTriton, sidecar memory"
)
#: `budget_s`: seconds of each concurrency-32 phase (concurrency 1: half); `iteration_scale`
#: scales `MEMORY_REQUESTS` (--quick: a tenth).
DEFAULT_SETTINGS: Final = RunSettings(budget_s=10.0)
MEMORY_REQUESTS: Final = 100_000
FLOOR_OPERATIONS: Final = 5_000
"""Client exchanges and JetStream publishes timed for the floors (`hotpath_floors.py`)."""
CONCURRENCY: Final = 32
_ROOT: Final = Path(__file__).resolve().parents[1]
_SLEEPER: Final = _ROOT / "examples" / "byoc" / "pytriton_sleeper"
_MODEL: Final = "timed_sleeper"
_ECHO_BODY: Final = orjson.dumps(
    {
        "id": "hotpath",
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x" * 150]}],
    }
)
_SLEEP_BODY: Final = orjson.dumps(
    {"inputs": [{"name": "sleep_duration", "datatype": "FP32", "shape": [1], "data": [0.0]}]}
)
_JSON: Final = {"Content-Type": "application/json"}


class HotpathBenchError(RuntimeError):
    """A phase could not be measured (the message says which and why)."""


@dataclass(frozen=True)
class _Load:
    """How one phase loads a URL."""

    connections: int
    seconds: float


def _load(
    label: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    load: _Load,
    pids: Mapping[str, Sequence[int]],
) -> dict[str, Any]:
    """One wrk phase: its figures and the CPU µs per answered request of each role in `pids`."""
    before = CpuSnapshot.take(pids)
    try:
        result = run_wrk(
            url, body=body, headers=headers, connections=load.connections, seconds=load.seconds
        )
    except WrkError as error:
        raise HotpathBenchError(f"{label}: {error}") from None
    answered = result.requests - result.status_errors
    if answered <= 0:
        raise HotpathBenchError(f"{label}: no request answered 2xx ({result})")
    cpu = CpuSnapshot.take(pids).per_request_us(before, answered)
    cpu.pop("client", None)  # wrk's CPU is not this process's
    return {**dataclasses.asdict(result), "ok_per_s": result.ok_per_s, "cpu_us": cpu}


def _stack_headers(stack: LocalStack) -> dict[str, str]:
    return {**_JSON, **stack.auth_headers}


# --- 1 and 4: the echo stack, and its sidecar's memory ------------------------------------------


def _echo_and_memory(
    settings: RunSettings, work: Path, progress: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = echo_function()
    direct = f"http://127.0.0.1:{spec.inference_port}/"
    figures: dict[str, Any] = {"sidecars": 1, "slots": spec.max_request_concurrency}
    with LocalStack([spec], work_dir=work / "echo") as stack:
        roles = stack_roles(stack, VERSION_ID)
        sidecar = roles["sidecar"][0]
        idle_kib = memory_kib(sidecar)
        url, headers = stack.invoke_url(FUNCTION_ID), _stack_headers(stack)
        for connections, seconds in ((1, settings.budget_s / 2), (CONCURRENCY, settings.budget_s)):
            load = _Load(connections, seconds)
            progress(f"echo c{connections}")
            figures[f"c{connections}"] = {
                "direct": _load("echo direct", direct, _JSON, _ECHO_BODY, load, roles),
                "stack": _load("echo stack", url, headers, _ECHO_BODY, load, roles),
            }
        progress("profile")
        figures["profile"] = _profile(url, headers, roles, settings, work)
        progress("memory")
        memory = _memory_curve(url, headers, sidecar, idle_kib, settings)
        progress("floors")
        floors = measure_floors(
            direct,
            stack.nats_url,
            _ECHO_BODY,
            count=max(500, round(FLOOR_OPERATIONS * settings.iteration_scale)),
            concurrency=CONCURRENCY,
        )
    figures["floors"] = {**floors, **platform_floor(figures[f"c{CONCURRENCY}"], floors)}
    return figures, memory


def _profile(
    url: str,
    headers: Mapping[str, str],
    roles: Mapping[str, Sequence[int]],
    settings: RunSettings,
    work: Path,
) -> dict[str, Any]:
    """The echo stack at c=32 under perf (`hotpath_profile.py`), or why it was not profiled."""

    def load(seconds: float) -> int:
        figures = _load("profile", url, headers, _ECHO_BODY, _Load(CONCURRENCY, seconds), roles)
        return int(figures["requests"] - figures["status_errors"])

    directory = work / "profile"
    directory.mkdir()
    try:
        return profile_roles(roles, settings.budget_s, load, directory, _cpu_split)
    except ProfileError as error:
        return {"skipped": str(error)}


def _cpu_split(pid: int) -> tuple[float, float]:
    split = process_cpu_split(pid)
    if split is None:
        raise ProfileError(f"process {pid} is gone: its CPU time cannot be read")
    return split


def _memory_curve(
    url: str,
    headers: Mapping[str, str],
    sidecar: int,
    idle_kib: int | None,
    settings: RunSettings,
) -> dict[str, Any]:
    """VmRSS of the sidecar after every tenth of the requests (the echo phases count too)."""
    total = max(1_000, round(MEMORY_REQUESTS * settings.iteration_scale))
    step = total // 10
    curve: list[tuple[int, float | None]] = []
    sent = 0
    roles = {"sidecar": [sidecar]}
    # Each round runs long enough for about one step at the rate of the round before.
    rate = 1_000.0
    for _ in range(200):  # bounded: a stack that answers nothing raises before
        if sent >= total:
            break
        seconds = max(1.0, min(30.0, step / rate))
        figures = _load("memory", url, headers, _ECHO_BODY, _Load(CONCURRENCY, seconds), roles)
        sent += figures["requests"]
        rate = max(figures["ok_per_s"], 50.0)
        kib = memory_kib(sidecar)
        curve.append((sent, None if kib is None else round(kib / 1024, 1)))
    return {
        "requests": sent,
        "idle_mib": None if idle_kib is None else round(idle_kib / 1024, 1),
        "curve_mib": curve,
    }


# --- 5 and 6: A/B of the event loops and of the sidecar's HTTP clients -------------------------


def _ab_phase(
    comparison: Comparison, settings: RunSettings, work: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The echo stack at c=32 in each configuration of `comparison`, alternated."""

    def measure(label: str) -> tuple[Mapping[str, Any], float | None]:
        lean_attach = os.environ.get(ATTACH_LISTENER_VARIABLE) != "off"
        with LocalStack(
            [echo_function()], work_dir=work / f"ab-{label}", attach_listener=lean_attach
        ) as stack:
            roles = stack_roles(stack, VERSION_ID)
            kib = memory_kib(roles["sidecar"][0])
            load = _Load(CONCURRENCY, settings.budget_s)
            url, headers = stack.invoke_url(FUNCTION_ID), _stack_headers(stack)
            run = _load(f"{comparison.title} {label}", url, headers, _ECHO_BODY, load, roles)
            serving = _serving_line(stack.sidecars(VERSION_ID)[0].log_path)
            # Whether workers attached on the lean attach listener (its own URL) in this run.
            lean_ran = stack.attach_url != stack.base_url
            return {**run, "sidecar_ran": serving, "lean_attach": lean_ran}, (
                None if kib is None else kib / 1024
            )

    return alternate(comparison, measure, progress)


def _serving_line(log_path: Path) -> dict[str, str]:
    """What the sidecar says it runs (`sidecar serving`: its event loop and HTTP clients), so a
    run shows its configuration took effect."""
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("message") == "sidecar serving":
            keys = ("event_loop", "container_client", "attach_client")
            return {key: str(record.get(key)) for key in keys}
    return {}


# --- 2: dev against LocalStack ------------------------------------------------------------------


def _default_spec(port: int) -> FunctionSpec:
    """The echo server as dev runs it from a config that sets only what it must."""
    spec = echo_function(port)
    return dataclasses.replace(
        spec,
        sidecars=FunctionSpec.sidecars,
        max_request_concurrency=FunctionSpec.max_request_concurrency,
    )


def _dev_config(spec: FunctionSpec) -> str:
    return "\n".join(
        [
            "[[functions]]",
            'name = "echo"',
            f"id = {json.dumps(spec.function_id)}",
            f"command = {json.dumps(list(spec.command))}",
            f"inference_port = {spec.inference_port}",
            f"default_invocation_path = {json.dumps(spec.default_invocation_path)}",
            f"health_endpoint = {json.dumps(spec.health_endpoint)}",
            "",
        ]
    )


def _dev_and_localstack(
    settings: RunSettings, work: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    spec = _default_spec(free_port())
    direct = f"http://127.0.0.1:{spec.inference_port}/"
    loads = {1: _Load(1, settings.budget_s / 2), CONCURRENCY: _Load(CONCURRENCY, settings.budget_s)}
    figures: dict[str, Any] = {
        "sidecars": spec.sidecars,
        "slots": spec.max_request_concurrency,
    }
    config = work / "dev.toml"
    config.write_text(_dev_config(spec))
    api_key = "hotpath-key"
    port = free_port(avoid={spec.inference_port})
    with run_dev(config, work / "dev", port, api_key) as dev:
        roles = {"dev": [dev.process.pid], **{n: [p] for n, p in dev.pids.items()}}
        url = f"http://127.0.0.1:{port}/v2/nvcf/pexec/functions/{spec.function_id}"
        headers = {**_JSON, "Authorization": f"Bearer {api_key}"}
        for connections, load in loads.items():
            progress(f"dev c{connections}")
            figures[f"c{connections}"] = {
                "direct": _load("dev direct", direct, _JSON, _ECHO_BODY, load, roles),
                "dev": _load("dev", url, headers, _ECHO_BODY, load, roles),
            }
        figures["dev_output_lines"] = dev.output_lines
    with LocalStack([spec], work_dir=work / "localstack") as stack:
        roles = stack_roles(stack, spec.version_id)
        for connections, load in loads.items():
            progress(f"localstack c{connections}")
            figures[f"c{connections}"]["localstack"] = _load(
                "localstack",
                stack.invoke_url(spec.function_id),
                _stack_headers(stack),
                _ECHO_BODY,
                load,
                roles,
            )
    return figures


# --- 3: PyTriton -------------------------------------------------------------------------------


def _pytriton(settings: RunSettings, work: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [sys.executable, "server.py", "--http-port", str(http)]
    command += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    home = work / "pyt"  # PyTriton's socket paths must stay short: under the bench's temp dir
    home.mkdir()
    spec = FunctionSpec(
        command=command,
        inference_port=http,
        name="sleeper",
        default_invocation_path=f"/v2/models/{_MODEL}/infer",
        health_endpoint=f"/v2/models/{_MODEL}/ready",
        max_request_concurrency=CONCURRENCY,
        container_env={"PYTRITON_HOME": str(home)},
        cwd=_SLEEPER,
    )
    load = _Load(CONCURRENCY, settings.budget_s)
    progress("pytriton")
    with LocalStack([spec], work_dir=work / "pytriton") as stack:
        roles = stack_roles(stack, spec.version_id)
        direct = f"http://127.0.0.1:{http}/v2/models/{_MODEL}/infer"
        return {
            "slots": CONCURRENCY,
            # The one header the model needs (the stack's sidecar sends it and the others).
            "direct": _load(
                "pytriton direct",
                direct,
                {**_JSON, "NVCF-REQID": "hotpath-direct"},
                _SLEEP_BODY,
                load,
                roles,
            ),
            "stack": _load(
                "pytriton stack",
                stack.invoke_url(spec.function_id),
                _stack_headers(stack),
                _SLEEP_BODY,
                load,
                roles,
            ),
        }


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HotpathReport(SuiteReport):
    """The phases' figures (empty without wrk) and the aims judged on them."""

    figures: Mapping[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def aims(self) -> list[dict[str, Any]]:
        return evaluate_aims(self.figures) if self.figures else []

    def _relative_cpu(self) -> dict[str, float]:
        echo = self.figures.get("echo")
        return {} if echo is None else relative_cpu(echo[f"c{CONCURRENCY}"])

    def to_json(self) -> dict[str, Any]:
        return {
            **self.header(),
            "method": {
                "client": "wrk (compiled), POST with keep-alive connections, 2 threads",
                "cpu_us": "user + system time of each process from /proc over the phase, per "
                "answered (2xx) request; the client's not counted",
                "memory": "VmRSS of the sidecar from /proc/<pid>/status",
                "floors": "CPU of this process per aiohttp client exchange with the echo "
                "server, per lean client exchange, per exchange on a bare asyncio protocol, per "
                "JetStream publish awaited to its ack, and per message fetched from a pull "
                "consumer and acked, 32 in flight; the sidecar's floor is one message consumed "
                "plus two lean exchanges; the platform's is two aiohttp server exchanges (the "
                "echo server's CPU per request called directly at c=32) plus one publish; "
                "the platform's own work per call is its functions run in this process without "
                "HTTP or NATS (headers, ids, presigned URL, work item encoded, token, the "
                "worker's head parsed, headers relayed), added to that floor and to one of two "
                "bare asyncio exchanges plus one publish; the sidecar's own work per request "
                "likewise (work item decoded, request directory and progress watch, container "
                "headers, heads encoded and parsed, the outputs check, metrics, its log line), "
                "added to its floor",
                "profile": "perf record -e cpu-clock of the platform, sidecar and echo server "
                "during an echo load at c=32, samples grouped by the code they were in (the "
                "CPython interpreter: its eval loop, its garbage collector, the rest; the "
                "kernel; libc; uvloop; other compiled extensions), with each process's user "
                "and system time per request from /proc over that load",
                "relative_cpu": "the stack's sidecar and platform CPU per request divided by "
                "the echo server's in the same phase (machine speed cancels out)",
                "seconds_at_c32": self.settings.budget_s,
                "seconds_at_c1": self.settings.budget_s / 2,
            },
            "skipped": self.skipped,
            "environment": dict(self.environment),
            "figures": dict(self.figures),
            "relative_cpu": self._relative_cpu(),
            "aims": self.aims(),
            "cases": [],
        }


def run(settings: RunSettings, progress: Callable[[str], None] | None = None) -> HotpathReport:
    """Run every phase (or none, without wrk), print the report and return it."""
    tell = progress or (lambda _: None)
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    skipped = None
    if wrk_path() is None:
        skipped = "wrk is not on PATH (apt-get install wrk): nothing measured"
    else:
        with tempfile.TemporaryDirectory(prefix="nvcf-hp-") as tmp:
            work = Path(tmp)
            figures["echo"], figures["memory"] = _echo_and_memory(settings, work, tell)
            figures["dev"] = _dev_and_localstack(settings, work, tell)
            figures["pytriton"] = _pytriton(settings, work, tell)
            figures["loops"] = (
                _ab_phase(LOOPS, settings, work, tell)
                if importlib.util.find_spec("uvloop") is not None
                else None
            )
            figures["clients"] = _ab_phase(CLIENTS, settings, work, tell)
            figures["attach"] = _ab_phase(ATTACH, settings, work, tell)
    report = HotpathReport(
        suite="hotpath",
        description=DESCRIPTION,
        measurements=(),
        settings=settings,
        environment=machine_info(wrk=wrk_path()),
        wall_s=time.perf_counter() - started,
        figures=figures,
        skipped=skipped,
    )
    print(format_report(report), end="\n\n", flush=True)
    return report


def format_report(report: HotpathReport) -> str:
    if report.skipped:
        return f"bench hotpath: {report.skipped}."
    f = report.figures
    lines = [f"bench hotpath ({report.wall_s:.0f} s), wrk; req/s, p50 ms, CPU µs per request:"]
    for phase, paths in (("echo", ("direct", "stack")), ("dev", ("direct", "dev", "localstack"))):
        for level in ("c1", f"c{CONCURRENCY}"):
            for path in paths:
                lines.append(_row(f"{phase} {level} {path}", f[phase][level][path]))
    for path in ("direct", "stack"):
        lines.append(_row(f"pytriton c{CONCURRENCY} {path}", f["pytriton"][path]))
    memory = f["memory"]
    curve = ", ".join(f"{n // 1000}k {mib}" for n, mib in memory["curve_mib"])
    lines.append(f"sidecar VmRSS MiB: idle {memory['idle_mib']}; after requests: {curve}")
    floors = f["echo"]["floors"]
    lines.append(
        "floors, CPU µs per operation in this Python: aiohttp client exchange "
        f"{floors['aiohttp_client_exchange_us']:,.0f}, lean client exchange "
        f"{floors['lean_client_exchange_us']:,.0f}, bare asyncio exchange "
        f"{floors['raw_asyncio_exchange_us']:,.0f}, JetStream publish + ack "
        f"{floors['jetstream_publish_us']:,.0f}, JetStream message fetched + acked "
        f"{floors['jetstream_consume_us']:,.0f}; the sidecar's floor (one message, two lean "
        f"exchanges) {floors['sidecar_floor_us']:,.0f}"
    )
    if "sidecar_work_us" in floors:
        lines.append(
            f"  the sidecar's own work per request {floors['sidecar_work_us']:,.0f}; its floor "
            f"with that work {floors['sidecar_floor_with_work_us']:,.0f}"
        )
    if "platform_floor_us" in floors:
        lines.append(
            "  aiohttp server exchange (the echo server called directly) "
            f"{floors['aiohttp_server_exchange_us']:,.0f}; the platform's floor (two aiohttp "
            f"server exchanges, one publish + ack) {floors['platform_floor_us']:,.0f}"
        )
    if "platform_bare_floor_us" in floors:
        lines.append(
            f"  the platform's own work per call {floors['platform_work_us']:,.0f}; its floor "
            f"with that work {floors['platform_floor_with_work_us']:,.0f}, and with two bare "
            f"asyncio exchanges instead of aiohttp's {floors['platform_bare_floor_us']:,.0f}"
        )
    relative = relative_cpu(f["echo"][f"c{CONCURRENCY}"])
    if relative:
        shown = ", ".join(f"{role} {ratio:.2f}x" for role, ratio in relative.items())
        lines.append(f"echo c{CONCURRENCY} CPU per request in units of the echo server's: {shown}")
    lines += profile_lines(f["echo"].get("profile"))
    lines += _loop_lines(f.get("loops"))
    if f.get("clients") is not None:
        lines += ab_lines(CLIENTS, f["clients"], CONCURRENCY)
    if f.get("attach") is not None:
        lines += ab_lines(ATTACH, f["attach"], CONCURRENCY)
    lines += format_aims(report.aims())
    return "\n".join(lines)


def _loop_lines(loops: Mapping[str, Any] | None) -> list[str]:
    if loops is None:
        return ["event loops: uvloop is not installed (the `fast` extra): not compared"]
    return ab_lines(LOOPS, loops, CONCURRENCY)


def _row(label: str, figures: Mapping[str, Any]) -> str:
    cpu = ", ".join(f"{n} {v:,.0f}" for n, v in figures["cpu_us"].items() if v is not None)
    errors = figures["status_errors"] + figures["socket_errors"]
    return (
        f"  {label:<26} {figures['ok_per_s']:>8,.0f}  {figures['p50_ms']:6.2f}  "
        f"errors {errors:<3} {cpu}"
    )
