"""Autoscaling with real instances: cold start, scale-up reaction to a burst, scale-down.

One nats-server (a child process) and one in-process `PlatformService` with a local image
catalog; every instance the platform starts is its own function server and `nvcf-sidecar run`
processes, as `nvcf-sidecar dev` runs them. In one run:

1. Cold start: the hello example (`examples/byoc/hello/server.py`) deployed with
   `minInstances: 0`; a pexec while no instance is live, timed to its 200 (instance start
   included), then a few calls to the instance it started (the warm baseline), then idle until
   the autoscaler scales it back to zero; repeated.
2. Scale-up: a burst of concurrent calls of `{"sleep": 0.05}` to `servers/sleep.py` deployed
   at min 1 / max 3 while `GET` of the deployment is polled every 50 ms: when the autoscaler
   first wants more than one instance, when the second and the third are ready, and how long
   the burst takes against the same burst on deployments fixed at 1 and at 3 instances.
3. Scale-down: from the burst's last answer to the autoscaled deployment back at 1 instance.

The caller, the deployment poller and the platform share one event loop (the platform is
in-process, as in the control-plane tests), so every figure includes the caller's own share of
this machine's CPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.harness import Case, Measurement, RunSettings, SuiteReport, filesystem_type, machine_info
from nvcf_platform.control.registry import Registry
from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.service import PlatformService
from nvcf_platform.settings import PlatformSettings

__all__ = [
    "BURST_CALLS",
    "BURST_ROUNDS",
    "BURST_SLEEP_S",
    "DEFAULT_SETTINGS",
    "DESCRIPTION",
    "PLATFORM_SETTINGS",
    "POLL_INTERVAL_S",
    "ScalingBenchError",
    "ScalingReport",
    "format_report",
    "run",
]

DESCRIPTION: Final = "autoscaling: cold start, scale-up reaction to a burst, scale-down"

#: `repeats`: cold starts (no new one after `min_repeats` once 40 % of `budget_s` is spent; 1
#: with --quick);
#: `warmup`: warm calls after each cold start (the baseline); `iteration_scale` scales the
#: burst (at least `_MIN_BURST_CALLS` calls).
DEFAULT_SETTINGS: Final = RunSettings(budget_s=120.0, repeats=5, min_repeats=2, warmup=5)

#: The platform's control-plane settings of the whole run (in the JSON as they were used).
PLATFORM_SETTINGS: Final[Mapping[str, float]] = {
    "autoscale_interval": 1.0,
    "scale_down_cooldown": 3.0,
    "idle_timeout": 2.0,
    "reconcile_interval": 0.1,
}
BURST_CALLS: Final = 100
#: Bursts per deployment (1 with --quick); the figures are medians over them.
BURST_ROUNDS: Final = 3
BURST_SLEEP_S: Final = 0.05
POLL_INTERVAL_S: Final = 0.05
SCALED_SPEC: Final = {"minInstances": 1, "maxInstances": 3}

_MIN_BURST_CALLS: Final = 60
_API_KEY: Final = "nvapi-bench-scaling"
_HELLO_IMAGE: Final = "nvcr.io/bench/hello:1.0"
_SLEEP_IMAGE: Final = "nvcr.io/bench/sleep:1.0"
_ROOT: Final = Path(__file__).resolve().parents[1]
_HELLO_SERVER: Final = _ROOT / "examples" / "byoc" / "hello" / "server.py"
_SLEEP_SERVER: Final = Path(__file__).resolve().parent / "servers" / "sleep.py"
_HEALTH_PATH: Final = "/v2/health/ready"
_BASE_SPEC: Final = {"gpu": "CPU", "instanceType": "LOCAL.CPU"}
_WAIT_LIMIT_S: Final = 60.0
_WARM_BEFORE_BURST: Final = 3
_SETTLE_S: Final = 1.0
_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=180)
_AUTOSCALER_LOGGER: Final = "nvcf_platform.control.autoscaler"


class ScalingBenchError(RuntimeError):
    """The platform answered something that cannot be measured (the message says what)."""


# --- the caller ---------------------------------------------------------------------------------


Counts = dict[str, int]
Progress = Callable[[str], None]


class _Api:
    """The control-plane and invocation routes of the platform, as a caller uses them."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base = base_url
        self.headers = {"Authorization": f"Bearer {_API_KEY}", "NVCF-POLL-SECONDS": "120"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers
        ) as response:
            data = await response.read()
            return response.status, json.loads(data) if data else None

    async def expect(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = await self.call(method, path, body)
        if got != status:
            raise ScalingBenchError(f"{method} {path}: {got}, not {status}: {answer!r:.300}")
        return answer

    async def create(self, name: str, image: str) -> tuple[str, str]:
        body = {
            "name": name,
            "inferenceUrl": "/",
            "inferencePort": 8000,
            "healthUri": _HEALTH_PATH,
            "containerImage": image,
        }
        answer = await self.expect("POST", "/v2/nvcf/functions", body)
        return str(answer["function"]["id"]), str(answer["function"]["versionId"])

    async def deploy(self, fid: str, fvid: str, spec: Mapping[str, int]) -> None:
        body = {"deploymentSpecifications": [{**_BASE_SPEC, **spec}]}
        await self.expect("POST", _deployment(fid, fvid), body)

    async def undeploy(self, fid: str, fvid: str) -> None:
        await self.expect("DELETE", _deployment(fid, fvid))
        await self._until(lambda: self._gone(fid, fvid), f"deployment of {fvid} removed")

    async def _gone(self, fid: str, fvid: str) -> bool:
        status, _ = await self.call("GET", _deployment(fid, fvid))
        return status == 404

    async def counts(self, fid: str, fvid: str) -> Counts:
        answer = await self.expect("GET", _deployment(fid, fvid))
        counts: Counts = answer["deployment"]["deploymentSpecifications"][0]["instances"]
        return counts

    async def wait_counts(self, fid: str, fvid: str, wanted: Counts) -> None:
        async def reached() -> bool:
            return await self.counts(fid, fvid) == wanted

        await self._until(reached, f"instance counts {wanted}")

    async def wait_active(self, fid: str, fvid: str) -> None:
        async def active() -> bool:
            answer = await self.expect("GET", f"/v2/nvcf/functions/{fid}/versions/{fvid}")
            status = answer["function"]["status"]
            if status == "ERROR":
                raise ScalingBenchError(f"version {fvid} is in ERROR")
            return bool(status == "ACTIVE")

        await self._until(active, f"version {fvid} ACTIVE")

    async def _until(self, condition: Callable[[], Any], what: str) -> None:
        deadline = time.perf_counter() + _WAIT_LIMIT_S
        while not await condition():
            if time.perf_counter() > deadline:
                raise ScalingBenchError(f"not reached within {_WAIT_LIMIT_S:g} s: {what}")
            await asyncio.sleep(0.05)

    async def pexec(self, fid: str, body: Any) -> Any:
        """One call by function id; its JSON answer, after checking it is a 200."""
        return await self.expect("POST", f"/v2/nvcf/pexec/functions/{fid}", body)


def _deployment(fid: str, fvid: str) -> str:
    return f"/v2/nvcf/deployments/functions/{fid}/versions/{fvid}"


# --- what the autoscaler logs -------------------------------------------------------------------


@dataclass(frozen=True)
class _Decision:
    at: float
    """`time.perf_counter()` of the log record."""
    previous: int
    desired: int
    current: int
    reason: str
    utilization: float
    backlog: int
    slots: int


class _DecisionLog(logging.Handler):
    """Collects the autoscaler's `event=autoscale` records (one per changed decision)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.decisions: list[_Decision] = []
        self._offset = time.time() - time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        values = record.__dict__
        if values.get("event") != "autoscale":
            return
        self.decisions.append(
            _Decision(
                at=record.created - self._offset,
                previous=int(values.get("previous_desired", 0)),
                desired=int(values.get("desired", 0)),
                current=int(values.get("current", 0)),
                reason=str(values.get("reason", "")),
                utilization=float(values.get("utilization", 0.0)),
                backlog=int(values.get("backlog", 0)),
                slots=int(values.get("slots", 0)),
            )
        )

    def since(self, start: float) -> list[dict[str, Any]]:
        return [
            {**dataclasses.asdict(d), "at": round(d.at - start, 3)}
            for d in self.decisions
            if d.at >= start
        ]


@contextlib.contextmanager
def _decision_log() -> Iterator[_DecisionLog]:
    logger = logging.getLogger(_AUTOSCALER_LOGGER)
    handler, level, propagate = _DecisionLog(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # its INFO lines are figures here, not output
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# --- 1. cold start ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ColdTry:
    cold_s: float
    warm_s: tuple[float, ...]
    to_zero_s: float
    """From the last warm answer to no instance left (desired, ready and starting 0)."""


async def _cold_starts(
    api: _Api, plan: _Plan, cap_s: float, progress: Callable[[str], None]
) -> tuple[list[_ColdTry], bool]:
    fid, fvid = await api.create("bench-hello", _HELLO_IMAGE)
    await api.deploy(fid, fvid, {"minInstances": 0, "maxInstances": 1})
    await api.wait_active(fid, fvid)
    zero = {"desired": 0, "ready": 0, "starting": 0}
    tries: list[_ColdTry] = []
    stop_at = time.perf_counter() + cap_s
    cut = False
    for number in range(plan.cold_starts):
        if number >= plan.min_cold_starts and time.perf_counter() >= stop_at:
            cut = True
            break
        progress(f"cold start {number + 1}")
        await api.wait_counts(fid, fvid, zero)
        started = time.perf_counter()
        answer = await api.pexec(fid, {"cold": number})
        cold = time.perf_counter() - started
        _check_hello(answer, {"cold": number})
        warm = []
        for index in range(plan.warm_calls):
            started = time.perf_counter()
            answer = await api.pexec(fid, {"warm": index})
            warm.append(time.perf_counter() - started)
            _check_hello(answer, {"warm": index})
        idle_from = time.perf_counter()
        await api.wait_counts(fid, fvid, zero)
        tries.append(_ColdTry(cold, tuple(warm), time.perf_counter() - idle_from))
    await api.undeploy(fid, fvid)
    return tries, cut


def _check_hello(answer: Any, sent: Any) -> None:
    if not isinstance(answer, dict) or answer.get("echo") != sent:
        raise ScalingBenchError(f"hello answered {answer!r:.200}, not an echo of {sent!r}")


# --- 2 and 3. bursts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Observation:
    at: float
    """`time.perf_counter()` once the answer was read (the counts were true before it)."""
    desired: int
    ready: int
    starting: int


@dataclass
class _Poller:
    """`GET` of one deployment every `POLL_INTERVAL_S` until `stop` is set."""

    api: _Api
    fid: str
    fvid: str
    seen: list[_Observation] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        next_at = time.perf_counter()
        while not self.stop.is_set():
            counts = await self.api.counts(self.fid, self.fvid)
            self.seen.append(
                _Observation(
                    time.perf_counter(), counts["desired"], counts["ready"], counts["starting"]
                )
            )
            next_at = max(next_at + POLL_INTERVAL_S, time.perf_counter())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), next_at - time.perf_counter())

    async def wait_for(self, condition: Callable[[_Observation], bool], after: float) -> None:
        """Until an observation made after `after` meets `condition` (bounded)."""
        deadline = time.perf_counter() + _WAIT_LIMIT_S
        while self.first(condition, after) is None:
            if time.perf_counter() > deadline:
                raise ScalingBenchError(
                    f"not reached within {_WAIT_LIMIT_S:g} s; last seen {self.seen[-1:]}"
                )
            await asyncio.sleep(POLL_INTERVAL_S)

    def first(self, condition: Callable[[_Observation], bool], after: float) -> float | None:
        """Seconds from `after` to the first observation (at or after it) meeting `condition`."""
        for seen in self.seen:
            if seen.at >= after and condition(seen):
                return seen.at - after
        return None

    def changes(self, start: float) -> list[dict[str, float | int]]:
        """The observations whose counts differ from the one before, times from `start`."""
        out: list[dict[str, float | int]] = []
        previous: tuple[int, int, int] | None = None
        for seen in self.seen:
            counts = (seen.desired, seen.ready, seen.starting)
            if counts != previous and seen.at >= start:
                out.append(
                    {
                        "at": round(seen.at - start, 3),
                        "desired": seen.desired,
                        "ready": seen.ready,
                        "starting": seen.starting,
                    }
                )
            previous = counts
        return out


@dataclass(frozen=True)
class _Burst:
    label: str
    spec: Mapping[str, int]
    calls: int
    seconds: tuple[float, ...]
    """Each round's burst, from the first send to the last answer."""
    call_s: tuple[float, ...]
    """Each call's own duration, every round, sorted."""
    rounds: tuple[Mapping[str, Any], ...] = ()
    """Autoscaled only: each round's reaction times, timeline and logged decisions."""


async def _burst(api: _Api, fid: str, calls: int) -> tuple[float, float, list[float]]:
    """`calls` concurrent sleeps; (start, end, each call's seconds), every answer checked."""
    body = {"sleep": BURST_SLEEP_S}

    async def one() -> float:
        began = time.perf_counter()
        answer = await api.pexec(fid, body)
        if answer != {"slept": BURST_SLEEP_S}:
            raise ScalingBenchError(f"sleep server answered {answer!r:.200}")
        return time.perf_counter() - began

    start = time.perf_counter()
    durations = await asyncio.gather(*(one() for _ in range(calls)))
    return start, time.perf_counter(), list(durations)


async def _deployed(api: _Api, label: str, spec: Mapping[str, int]) -> tuple[str, str]:
    """A sleep function deployed with `spec`, its minimum of instances ready."""
    fid, fvid = await api.create(f"bench-sleep-{label}", _SLEEP_IMAGE)
    await api.deploy(fid, fvid, spec)
    await api.wait_active(fid, fvid)
    low = spec["minInstances"]
    await api.wait_counts(fid, fvid, {"desired": low, "ready": low, "starting": 0})
    return fid, fvid


async def _warm(api: _Api, fid: str) -> None:
    for _ in range(_WARM_BEFORE_BURST):
        await api.pexec(fid, {"sleep": 0})


async def _fixed_bursts(
    api: _Api, label: str, instances: int, calls: int, rounds: int, progress: Progress
) -> _Burst:
    spec = {"minInstances": instances, "maxInstances": instances}
    fid, fvid = await _deployed(api, label, spec)
    seconds, durations = [], []
    for number in range(rounds):
        progress(f"burst {number + 1}, {label}")
        await _warm(api, fid)
        start, end, each = await _burst(api, fid, calls)
        seconds.append(end - start)
        durations += each
    await api.undeploy(fid, fvid)
    return _Burst(label, spec, calls, tuple(seconds), tuple(sorted(durations)))


async def _scaled_bursts(
    api: _Api, calls: int, rounds: int, decisions: _DecisionLog, progress: Progress
) -> _Burst:
    """Bursts against min 1 / max 3, each polled from before it starts until back at 1."""
    fid, fvid = await _deployed(api, "autoscaled", SCALED_SPEC)
    seconds, durations, figures = [], [], []
    for number in range(rounds):
        progress(f"burst {number + 1}, autoscaled")
        if number:
            await asyncio.sleep(_SETTLE_S)  # the instances scaled away finish stopping
        await _warm(api, fid)
        start, end, each, round_figures = await _scaled_round(api, fid, fvid, calls, decisions)
        seconds.append(end - start)
        durations += each
        figures.append(round_figures)
    await api.undeploy(fid, fvid)
    return _Burst(
        "autoscaled", dict(SCALED_SPEC), calls, tuple(seconds), tuple(sorted(durations)),
        tuple(figures),
    )  # fmt: skip


def _back_at_one(seen: _Observation) -> bool:
    return (seen.desired, seen.ready, seen.starting) == (1, 1, 0)


async def _scaled_round(
    api: _Api, fid: str, fvid: str, calls: int, decisions: _DecisionLog
) -> tuple[float, float, list[float], dict[str, Any]]:
    poller = _Poller(api, fid, fvid)
    polling = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(2 * POLL_INTERVAL_S)  # observations from before the burst
        if not poller.seen or not _back_at_one(poller.seen[-1]):
            raise ScalingBenchError(f"not at 1 instance before the burst: {poller.seen[-1:]}")
        start, end, durations = await _burst(api, fid, calls)
        await poller.wait_for(_back_at_one, end)
    finally:
        poller.stop.set()
        await polling
    top = SCALED_SPEC["maxInstances"]
    peak = max(seen.desired for seen in poller.seen)
    logged = decisions.since(start)
    ups = [d["at"] for d in logged if d["desired"] > d["previous"]]
    downs = [d["at"] - (end - start) for d in logged if d["desired"] < d["previous"]]
    figures = {
        "burst_s": end - start,
        "first_scale_up_decision_s": poller.first(lambda s: s.desired > 1, start),
        "first_scale_up_decision_logged_s": ups[0] if ups else None,
        "second_ready_s": poller.first(lambda s: s.ready >= 2, start),
        "all_ready_s": poller.first(lambda s: s.ready >= top, start),
        "peak_desired": peak,
        "peak_ready": max(seen.ready for seen in poller.seen),
        "scale_down": {
            "first_decision_s": poller.first(lambda s: s.desired < peak, end),
            "first_decision_logged_s": round(downs[0], 3) if downs else None,
            "desired_1_s": poller.first(lambda s: s.desired == 1, end),
            "back_at_1_s": poller.first(_back_at_one, end),
        },
        "observations": len(poller.seen),
        "timeline": poller.changes(start),
        "decisions_logged": logged,
    }
    return start, end, durations, figures


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    cold_starts: int
    min_cold_starts: int
    warm_calls: int
    burst_calls: int
    burst_rounds: int

    @staticmethod
    def of(settings: RunSettings) -> _Plan:
        return _Plan(
            cold_starts=max(1, settings.repeats if settings.iteration_scale >= 1 else 1),
            min_cold_starts=max(1, min(settings.min_repeats, settings.repeats)),
            warm_calls=max(1, settings.warmup),
            burst_calls=max(_MIN_BURST_CALLS, round(BURST_CALLS * settings.iteration_scale)),
            burst_rounds=BURST_ROUNDS if settings.iteration_scale >= 1 else 1,
        )


@dataclass
class _Figures:
    cold: list[_ColdTry] = field(default_factory=list)
    cold_cut: bool = False
    bursts: dict[str, _Burst] = field(default_factory=dict)


def _catalog(path: Path) -> Path:
    python = json.dumps(sys.executable)
    lines = []
    for image, server in ((_HELLO_IMAGE, _HELLO_SERVER), (_SLEEP_IMAGE, _SLEEP_SERVER)):
        lines += [
            "[[images]]",
            f"image = {json.dumps(image)}",
            f'command = [{python}, {json.dumps(str(server))}, "--port", "{{port}}"]',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def _measure(
    nats_url: str, directory: Path, plan: _Plan, settings: RunSettings, progress: Progress
) -> _Figures:
    platform_settings = PlatformSettings(
        nats_url=nats_url,
        port=0,
        grpc_port=0,
        api_keys=(_API_KEY,),
        images_path=_catalog(directory / "images.toml"),
        instances_dir=directory / "instances",
        control_state=False,
        log_level="WARNING",
        autoscale_interval=PLATFORM_SETTINGS["autoscale_interval"],
        scale_down_cooldown=PLATFORM_SETTINGS["scale_down_cooldown"],
        idle_timeout=PLATFORM_SETTINGS["idle_timeout"],
        reconcile_interval=PLATFORM_SETTINGS["reconcile_interval"],
    )
    figures = _Figures()
    registry = Registry.from_mapping({}, source="bench scaling")
    with _decision_log() as decisions:
        async with (
            PlatformService(platform_settings, registry) as platform,
            aiohttp.ClientSession(
                timeout=_TIMEOUT, connector=aiohttp.TCPConnector(limit=0)
            ) as http,
        ):
            api = _Api(http, platform.base_url)
            figures.cold, figures.cold_cut = await _cold_starts(
                api, plan, settings.budget_s * 0.4, progress
            )
            calls, rounds = plan.burst_calls, plan.burst_rounds
            for label, instances in (("fixed_1", 1), ("fixed_3", 3)):
                figures.bursts[label] = await _fixed_bursts(
                    api, label, instances, calls, rounds, progress
                )
            figures.bursts["autoscaled"] = await _scaled_bursts(
                api, calls, rounds, decisions, progress
            )
    return figures


def _log_tails(directory: Path) -> str:
    tails = []
    for log in sorted((directory / "instances").glob("**/*.log"))[-6:]:
        lines = log.read_text(errors="replace").splitlines()[-8:]
        tails.append(f"--- {log.relative_to(directory)} ends with:\n" + "\n".join(lines))
    return "\n".join(tails)


def run(settings: RunSettings, progress: Callable[[str], None] | None = None) -> ScalingReport:
    """Start nats-server and the platform, measure the three parts, print and report.

    Raises `ScalingBenchError` (with the instances' log tails) when an answer is not what it
    must be or a wait runs out.
    """
    started = time.perf_counter()
    plan = _Plan.of(settings)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nvcf-bench-scaling-") as tmp:
        directory = Path(tmp)
        with EmbeddedNatsServer(store_dir=directory / "nats") as nats_server:
            try:
                figures = asyncio.run(
                    _measure(
                        nats_server.url, directory, plan, settings, progress or (lambda _: None)
                    )
                )
            except ScalingBenchError as error:
                raise ScalingBenchError(f"{error}\n{_log_tails(directory)}") from None
        environment = machine_info(
            tmp_filesystem=filesystem_type(directory),
            gpu=None,
            load_average_1m={"before": load_before[0], "after": os.getloadavg()[0]},
        )
    report = _report(figures, plan, settings, environment, time.perf_counter() - started)
    print(format_report(report), end="\n\n", flush=True)
    return report


# --- the report ---------------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _median_of(values: Sequence[float | None]) -> float | None:
    """The median of the values that are there (None when none is)."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _case(
    key: str,
    group: str,
    label: str,
    seconds: Sequence[float],
    short: str,
    baseline: str | None = None,
    cut_short: bool = False,
) -> Measurement:
    case = Case(
        key=key,
        group=group,
        label=label,
        op=_measured_elsewhere,
        iterations=1,
        baseline=baseline is None,
        short=short,
        compare_to=() if baseline is None else (baseline,),
        warmup=0,
    )
    samples = tuple(sorted(s * 1e9 for s in seconds))
    return Measurement(case, 1, 0, samples, cut_short, {"samples": len(samples)})


def _measured_elsewhere() -> object:
    raise RuntimeError("bench scaling cases are timed by the suite itself, not called")


def _with_ratios(measurements: Sequence[Measurement]) -> tuple[Measurement, ...]:
    by_key = {m.case.key: m for m in measurements}
    return tuple(
        dataclasses.replace(
            m, ratios={key: m.median_ns / by_key[key].median_ns for key in m.case.compare_to}
        )
        for m in measurements
    )


@dataclass(frozen=True)
class ScalingReport(SuiteReport):
    """The cases (shared table) and the suite's summaries: `cold_start`, `scale_up`,
    `scale_down`, with the platform settings and set-up they were measured with."""

    cold_start: Mapping[str, Any] = field(default_factory=dict)
    scale_up: Mapping[str, Any] = field(default_factory=dict)
    scale_down: Mapping[str, Any] = field(default_factory=dict)
    setup: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.header(),
            "method": {
                "clock": "time.perf_counter in the caller, which shares its event loop with the "
                "in-process platform",
                "cold_start": "POST pexec by function id -> 200 read, while the version (min 0) "
                "has no instance: the autoscaler's immediate decision, the instance's processes "
                "(function server + nvcf-sidecar run) started and healthy, the call served",
                "warm": "the same call right after, to the instance the cold start left running",
                "scale_up": "GET of the deployment every "
                f"{POLL_INTERVAL_S * 1000:g} ms; each time is the first answer (read) showing "
                "the condition, from the burst's start: resolution one poll plus its latency",
                "burst": "all calls sent at once (asyncio.gather, no connection limit), from the "
                "first send to the last answer; every answer checked",
                "scale_down": "from the burst's last answer to the first poll showing the state",
                "ratio": "median / median (above 1: slower than the baseline)",
                "budget_s": self.settings.budget_s,
                "iteration_scale": self.settings.iteration_scale,
            },
            "setup": dict(self.setup),
            "environment": dict(self.environment),
            "cold_start": dict(self.cold_start),
            "scale_up": dict(self.scale_up),
            "scale_down": dict(self.scale_down),
            "cases": [measurement.to_json() for measurement in self.measurements],
        }


def _report(
    figures: _Figures,
    plan: _Plan,
    settings: RunSettings,
    environment: Mapping[str, Any],
    wall_s: float,
) -> ScalingReport:
    cold = [t.cold_s for t in figures.cold]
    warm = [s for t in figures.cold for s in t.warm_s]
    bursts = figures.bursts
    scaled = bursts["autoscaled"]
    calls = plan.burst_calls
    measurements = _with_ratios(
        [
            _case("cold.warm", "pexec, hello", "warm instance (200)", warm, "warm"),
            _case("cold.cold", "pexec, hello", "no instance live: cold start (200)", cold,
                  "warm", "cold.warm", figures.cold_cut),
            _case("burst.fixed_3", f"burst of {calls}", "fixed at 3 instances",
                  bursts["fixed_3"].seconds, "fixed-3"),
            _case("burst.autoscaled", f"burst of {calls}", "autoscaled, min 1 / max 3",
                  scaled.seconds, "autoscaled", "burst.fixed_3"),
            _case("burst.fixed_1", f"burst of {calls}", "fixed at 1 instance",
                  bursts["fixed_1"].seconds, "autoscaled", "burst.autoscaled"),
        ]
    )  # fmt: skip
    work_s = calls * BURST_SLEEP_S
    burst_json = {
        label: {
            "spec": dict(b.spec),
            "seconds": _median(b.seconds),
            "rounds_s": list(b.seconds),
            "calls_per_s": b.calls / _median(b.seconds),
            "call_s": {
                "p50": statistics.median(b.call_s),
                "max": b.call_s[-1],
                "min": b.call_s[0],
            },
            "ideal_s": work_s / b.spec["maxInstances"] if label != "autoscaled" else None,
        }
        for label, b in bursts.items()
    }
    rounds = scaled.rounds
    downs = [r["scale_down"] for r in rounds]
    up_keys = (
        "first_scale_up_decision_s",
        "first_scale_up_decision_logged_s",
        "second_ready_s",
        "all_ready_s",
    )
    down_keys = ("first_decision_s", "first_decision_logged_s", "desired_1_s", "back_at_1_s")
    return ScalingReport(
        suite="scaling",
        description=DESCRIPTION,
        measurements=measurements,
        settings=settings,
        environment=environment,
        wall_s=wall_s,
        cold_start={
            "tries": len(figures.cold),
            "tries_planned": plan.cold_starts,
            "cut_short": figures.cold_cut,
            "cold_s": _summary(cold),
            "warm_s": _summary(warm),
            "ratio_cold_over_warm": statistics.median(cold) / statistics.median(warm),
            "added_s": statistics.median(cold) - statistics.median(warm),
            "idle_to_zero_s": _summary([t.to_zero_s for t in figures.cold]),
            "runs": [dataclasses.asdict(t) for t in figures.cold],
        },
        scale_up={
            "burst": {"calls": calls, "sleep_s": BURST_SLEEP_S, "work_s": work_s},
            "rounds": len(rounds),
            **{key: _median_of([r[key] for r in rounds]) for key in up_keys},
            "all_ready_in_rounds": sum(r["all_ready_s"] is not None for r in rounds),
            "peak_desired": max(r["peak_desired"] for r in rounds),
            "burst_s": {label: _median(b.seconds) for label, b in bursts.items()},
            "ratio_autoscaled_over_fixed_3": _median(scaled.seconds)
            / _median(bursts["fixed_3"].seconds),
            "ratio_fixed_1_over_autoscaled": _median(bursts["fixed_1"].seconds)
            / _median(scaled.seconds),
            "bursts": burst_json,
            "per_round": [{k: v for k, v in r.items() if k != "scale_down"} for r in rounds],
        },
        scale_down={
            "rounds": len(downs),
            **{key: _median_of([d[key] for d in downs]) for key in down_keys},
            "settings": {
                "scale_down_cooldown": PLATFORM_SETTINGS["scale_down_cooldown"],
                "autoscale_interval": PLATFORM_SETTINGS["autoscale_interval"],
            },
            "per_round": downs,
        },
        setup={
            "platform_settings": dict(PLATFORM_SETTINGS),
            "autoscaler_sample_interval_s": min(1.0, PLATFORM_SETTINGS["autoscale_interval"] / 4),
            "scaling_policy": "default: up x1.2 (at least +1) above 70 %, down x0.8 below 30 %",
            "cold_start_function": "examples/byoc/hello/server.py (aiohttp + nvcf_worker)",
            "cold_start_spec": {"minInstances": 0, "maxInstances": 1},
            "warm_calls_per_try": plan.warm_calls,
            "burst_function": "bench/servers/sleep.py (aiohttp), maxRequestConcurrency 1",
            "autoscaled_spec": dict(SCALED_SPEC),
            "poll_interval_s": POLL_INTERVAL_S,
            "instance": "function server + nvcf-sidecar run, child processes of the platform",
            "platform": "in-process PlatformService, nats-server child process (JetStream)",
            "client": f"aiohttp {aiohttp.__version__}, one ClientSession, no connection limit",
        },
    )


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


def _s(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def format_report(report: ScalingReport) -> str:
    """Cold against warm, reaction times, bursts against fixed deployments, scale-down."""
    env, cold, up, down = report.environment, report.cold_start, report.scale_up, report.scale_down
    load = env.get("load_average_1m", {})
    platform = report.setup.get("platform_settings", {})
    lines = [
        f"bench scaling: Python {env.get('python_version')} on {env.get('platform')}, "
        f"{env.get('cpus_usable', env.get('cpu_count'))} CPUs shared by client, platform, "
        f"nats-server and instances; load average {load.get('before', 0):.2f} before, "
        f"{load.get('after', 0):.2f} after",
        "platform: " + ", ".join(f"{k} {v:g} s" for k, v in platform.items()),
        "",
        f"Cold start: hello, min 0 / max 1, {cold['tries']} tries "
        f"({report.setup.get('warm_calls_per_try')} warm calls after each), seconds",
    ]
    rows: list[tuple[str, ...]] = [("", "median", "min", "max")]
    for label, key in (
        ("warm instance (baseline)", "warm_s"),
        ("cold start (no instance live)", "cold_s"),
        ("last answer -> scaled to zero", "idle_to_zero_s"),
    ):
        rows.append((label, *(_s(cold[key][q]) for q in ("median", "min", "max"))))
    lines += _table(rows)
    lines += [
        f"  cold / warm: x{cold['ratio_cold_over_warm']:.1f} "
        f"(+{cold['added_s']:.2f} s at the median)",
        "",
        f"Scale-up: burst of {up['burst']['calls']} concurrent calls of "
        f"{up['burst']['sleep_s']:g} s, min 1 / max 3, seconds from the burst's start, "
        f"median of {up['rounds']} round(s)",
    ]
    lines += _table(
        [
            ("", "seconds"),
            ("first decision above 1 instance", _s(up["first_scale_up_decision_s"])),
            ("  (the autoscaler's log record)", _s(up["first_scale_up_decision_logged_s"])),
            ("second instance ready", _s(up["second_ready_s"])),
            (
                f"all 3 ready ({up['all_ready_in_rounds']} of {up['rounds']} rounds)",
                _s(up["all_ready_s"]),
            ),
            ("burst answered (autoscaled)", _s(up["burst_s"]["autoscaled"])),
        ]
    )
    lines += ["", f"Burst completion, seconds (median of {up['rounds']} round(s)):"]
    rows = [("", "seconds", "calls/s", "ratio")]
    for label, key, ratio in (
        ("fixed at 3 instances (baseline)", "fixed_3", "-"),
        ("autoscaled 1..3", "autoscaled", f"x{up['ratio_autoscaled_over_fixed_3']:.2f} fixed-3"),
        (
            "fixed at 1 instance",
            "fixed_1",
            f"x{up['ratio_fixed_1_over_autoscaled']:.2f} autoscaled",
        ),
    ):
        burst = up["bursts"][key]
        rows.append((label, _s(burst["seconds"]), f"{burst['calls_per_s']:.1f}", ratio))
    lines += _table(rows)
    lines += [
        "",
        f"Scale-down (cooldown {down['settings']['scale_down_cooldown']:g} s, interval "
        f"{down['settings']['autoscale_interval']:g} s), seconds from the burst's last answer:",
    ]
    lines += _table(
        [
            ("", "seconds"),
            ("first scale-down decision", _s(down["first_decision_s"])),
            ("  (the autoscaler's log record)", _s(down["first_decision_logged_s"])),
            ("desired back at 1", _s(down["desired_1_s"])),
            ("back at 1 instance (ready 1, none starting)", _s(down["back_at_1_s"])),
        ]
    )
    if any(m.cut_short for m in report.measurements):
        lines.append("* stopped at the time cap: fewer cold starts than planned.")
    lines.append(f"{len(report.measurements)} measurements in {report.wall_s:.1f} s.")
    return "\n".join(lines)
