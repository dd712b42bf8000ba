"""The scenarios: one fault each (and a baseline), injected into a dev stack while the load runs.

`run_scenario` starts a `DevStack`, runs the callers and the scenario's fault side by side, stops
the stack, reaps every process and returns the `Summary` with the faults it injected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.callers import LoadSettings, Target, run_load
from chaos.classify import Outcome, Summary, read_executions, summarize
from chaos.cluster import kill_cluster_nodes, latency_around_faults
from chaos.dev_stack import (
    NATS_NAME,
    PLATFORM_NAME,
    DevError,
    DevStack,
    StackLayout,
)
from chaos.stack_logs import log_digest

__all__ = ["CLUSTER_SCENARIOS", "SCENARIOS", "ChaosSettings", "Scenario", "run_scenario"]

_RESTART_TIMEOUT_S = 30.0
_READY_TIMEOUT_S = 30.0
_TICK_S = 0.05


@dataclass(frozen=True)
class ChaosSettings:
    """One run's size: `requests` per scenario, the load, the stack and the faults' pace."""

    requests: int = 1000
    load: LoadSettings = field(default_factory=LoadSettings)
    layout: StackLayout = field(default_factory=StackLayout)
    sidecar_kill_every_s: tuple[float, float] = (1.0, 2.0)
    max_sidecar_kills: int = 40
    server_kills_at: tuple[float, ...] = (1 / 3, 2 / 3)  # fractions of the requests answered
    nats_kills_at: tuple[float, ...] = (0.4,)
    platform_kills_at: tuple[float, ...] = (0.4,)
    time_limit_s: float = 600.0  # the whole load of one scenario
    seed: int = 0


class _Faults:
    """What a fault coroutine sees and records: the load's progress, the stack, the faults."""

    def __init__(self, stack: DevStack, settings: ChaosSettings, started: float) -> None:
        self.stack = stack
        self.settings = settings
        self.started = started
        self.rng = random.Random(settings.seed)
        self.answered = 0
        self.load_done = asyncio.Event()
        self.injected: list[dict[str, object]] = []
        self.unsupported: str | None = None

    async def wait_answered(self, fraction: float) -> bool:
        """Wait until `fraction` of the requests are answered; False if the load ended first."""
        while self.answered < fraction * self.settings.requests:
            if self.load_done.is_set():
                return False
            await asyncio.sleep(_TICK_S)
        return True

    async def wait_ready(self, name: str) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not self.stack.is_ready(name):
            if self.load_done.is_set() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(_TICK_S)
        return True

    async def kill(
        self, name: str, *, wait_restart: bool, sig: signal.Signals = signal.SIGKILL
    ) -> None:
        """Send `sig` to `name` and record it; with `wait_restart`, wait for dev to bring it back
        and record how long that took, or mark the scenario unsupported when dev does not."""
        pid = self.stack.kill(name, sig)
        at = time.monotonic()
        fault: dict[str, object] = {
            "target": name,
            "signal": sig.name,
            "pid": pid,
            "at_s": round(at - self.started, 3),
        }
        self.injected.append(fault)
        if not wait_restart:
            return
        fresh, why = await asyncio.to_thread(
            self.stack.wait_restarted, name, pid, _RESTART_TIMEOUT_S
        )
        if fresh is None:
            self.unsupported = why
            return
        fault["new_pid"] = fresh
        if await self.wait_ready(name):
            fault["back_after_s"] = round(time.monotonic() - at, 3)


FaultPlan = Callable[[_Faults], Coroutine[Any, Any, None]]


async def _no_faults(faults: _Faults) -> None:
    return None


async def _kill_sidecars(faults: _Faults) -> None:
    """A random ready sidecar, SIGKILLed every 1-2 s from 5 % of the load until it ends."""
    settings = faults.settings
    if not await faults.wait_answered(0.05):
        return
    for _ in range(settings.max_sidecar_kills):
        if faults.load_done.is_set():
            return
        ready = [name for name in faults.stack.sidecar_names if faults.stack.is_ready(name)]
        if ready:
            await faults.kill(faults.rng.choice(ready), wait_restart=False)
        pause = faults.rng.uniform(*settings.sidecar_kill_every_s)
        try:
            await asyncio.wait_for(faults.load_done.wait(), pause)
        except TimeoutError:
            continue


def _kill_at(
    names: Callable[[DevStack], list[str]],
    fractions: Callable[[ChaosSettings], tuple[float, ...]],
    sig: signal.Signals = signal.SIGKILL,
) -> FaultPlan:
    """Send `sig` to every process `names` gives, together, once each listed fraction of the
    requests is answered; each must be restarted (the scenario is unsupported when one is
    not)."""

    async def plan(faults: _Faults) -> None:
        for fraction in fractions(faults.settings):
            targets = names(faults.stack)
            if not await faults.wait_answered(fraction):
                return
            for name in targets:
                if not await faults.wait_ready(name):
                    return
            await asyncio.gather(*(faults.kill(n, wait_restart=True, sig=sig) for n in targets))
            if faults.unsupported is not None:
                return

    return plan


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    plan: FaultPlan
    nats_cluster: int = 1
    """NATS nodes of the dev stack (`--nats-cluster`); 1: one nats-server."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("baseline", "no fault", _no_faults),
        Scenario("sidecar-kill", "SIGKILL of a random ready sidecar every 1-2 s", _kill_sidecars),
        Scenario(
            "server-kill",
            "SIGKILL of every instance's function server at 1/3 and 2/3 of the load",
            _kill_at(lambda stack: stack.server_names, lambda s: s.server_kills_at),
        ),
        Scenario(
            "nats-kill",
            "SIGKILL of nats-server, restarted by dev",
            _kill_at(lambda stack: [NATS_NAME], lambda s: s.nats_kills_at),
        ),
        # SIGTERM: a restart, as a deploy does it. A SIGKILL drops the callers' connections,
        # which no platform can avoid; a graceful stop must answer or hand over every request.
        Scenario(
            "platform-restart",
            "SIGTERM of the platform, restarted by dev",
            _kill_at(lambda stack: [PLATFORM_NAME], lambda s: s.platform_kills_at, signal.SIGTERM),
        ),
    )
}


CLUSTER_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "cluster-node-loss",
            "3-node NATS cluster: SIGKILL of the work-queue stream's leader, later of another "
            "node, then of two nodes at once, each restarted by dev",
            kill_cluster_nodes,
            nats_cluster=3,
        ),
    )
}
"""Scenarios on a NATS cluster (`make chaos-cluster`), apart from `make chaos`'s."""


def run_scenario(scenario: Scenario, settings: ChaosSettings, work_dir: Path) -> Summary:
    """Run one scenario in `work_dir` and summarise it; every process is reaped before it
    returns (leftovers are reported in the summary's `aborted`)."""
    layout = settings.layout
    if scenario.nats_cluster != layout.nats_cluster:
        layout = dataclasses.replace(layout, nats_cluster=scenario.nats_cluster)
        settings = dataclasses.replace(settings, layout=layout)
    stack = DevStack(work_dir, layout)
    request_ids = [uuid.uuid4().hex for _ in range(settings.requests)]
    outcomes: list[Outcome] = []
    started = time.monotonic()
    faults: _Faults | None = None
    aborted: str | None = None
    try:
        stack.start()
        started = time.monotonic()
        faults = _Faults(stack, settings, started)
        aborted = asyncio.run(_drive(scenario, stack, faults, request_ids, outcomes))
    except DevError as error:
        aborted = str(error)
    finally:
        orphans = stack.stop()
    wall = time.monotonic() - started
    executions = read_executions(stack.execution_log)
    summary = summarize(
        scenario.name, request_ids, outcomes, executions, wall_s=wall, started=started
    )
    if faults is not None:
        summary.faults = faults.injected
        summary.unsupported = faults.unsupported
        if scenario.nats_cluster > 1:
            summary.latency = latency_around_faults(outcomes, faults.injected, started)
    if orphans:
        summary.notes += orphans
        aborted = aborted or f"{len(orphans)} processes outlived dev"
    summary.aborted = None if summary.unsupported else aborted
    summary.notes += [line for line in stack.lines if _worth_noting(line)]
    summary.log_digest = log_digest(stack.work_dir / "dev" / "logs")
    return summary


def _worth_noting(line: str) -> bool:
    """dev's errors, and exits that were not our SIGKILLs."""
    unexpected_exit = " exited with " in line and "signal 9 (SIGKILL)" not in line
    return line.startswith("[dev] error") or unexpected_exit


async def _drive(
    scenario: Scenario,
    stack: DevStack,
    faults: _Faults,
    request_ids: list[str],
    outcomes: list[Outcome],
) -> str | None:
    """The load and the fault plan side by side; the load is cut short when the scenario turns
    out unsupported, when dev exits, or at the time limit. Returns why it was cut, if it was."""
    target = Target(stack.base_url, stack.function_id, stack.api_key)

    def on_done(count: int) -> None:
        faults.answered = count

    load = asyncio.create_task(
        run_load(target, request_ids, faults.settings.load, outcomes, on_done)
    )
    plan = asyncio.create_task(scenario.plan(faults))
    deadline = time.monotonic() + faults.settings.time_limit_s
    cut: str | None = None
    while not load.done():
        if faults.unsupported is not None:
            cut = "unsupported"
        elif stack.returncode is not None:
            cut = f"dev exited with status {stack.returncode}: {stack.tail(3)}"
        elif time.monotonic() > deadline:
            cut = f"the load outlasted its {faults.settings.time_limit_s:g} s limit"
        if cut is not None:
            load.cancel()
            break
        await asyncio.sleep(_TICK_S)
    try:
        await load
    except asyncio.CancelledError:
        pass
    faults.load_done.set()
    await plan
    return None if cut == "unsupported" else cut
