"""The autoscaler: per deployed version, samples its backlog from JetStream, decides the
instances it should have (`scaling_policy.decide`) and hands that to the reconciler.

Samples are taken every `sample_interval` (a quarter of the decision interval, at most 1 s);
decisions every `interval`, or at once when a call reaches a version with no live instance (a
cold start does not wait for the next round). Every decision that changes something is logged
with its inputs and counted; desired and ready instances are exported as gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from nats.errors import Error as NatsError

from nvcf_platform.control.loops import stop_loop
from nvcf_platform.control.metrics import ControlMetrics
from nvcf_platform.control.records import FunctionStatus, VersionRecord
from nvcf_platform.control.scaling_policy import Sample, ScalingPolicy, decide
from nvcf_platform.errors import PlatformError

__all__ = ["Autoscaler", "spread"]

MAX_SAMPLE_AGE: Final = 3600.0
"""Samples older than this are dropped (stickiness windows are at most PT1H)."""
_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Version:
    """What the autoscaler keeps per version (in memory: a restart begins from the minimums)."""

    desired: int | None = None
    last_scale_at: float = 0.0
    last_invoked_at: float = -math.inf
    samples: deque[Sample] = field(default_factory=deque)


def spread(total: int, specifications: Sequence[dict[str, Any]]) -> list[int]:
    """`total` instances over GPU specifications: each its minimum first, then the rest in
    order up to each maximum (NVIDIA's API spreads a requested count so)."""
    counts = [int(spec["minInstances"]) for spec in specifications]
    left = total - sum(counts)
    for index, spec in enumerate(specifications):
        if left <= 0:
            break
        room = int(spec["maxInstances"]) - counts[index]
        take = min(room, left)
        counts[index] += take
        left -= take
    return counts


class Autoscaler:
    """`async with Autoscaler(...)`: samples and decides inside the block."""

    def __init__(
        self,
        records: Callable[[], list[VersionRecord]],
        *,
        backlog: Callable[[str], Awaitable[int]],
        live_instances: Callable[[VersionRecord, dict[str, Any]], int],
        ready_instances: Callable[[VersionRecord, dict[str, Any]], int],
        on_change: Callable[[], None],
        metrics: ControlMetrics,
        interval: float = 15.0,
        scale_down_cooldown: float = 60.0,
        idle_timeout: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._backlog = backlog
        self._live = live_instances
        self._ready = ready_instances
        self._on_change = on_change
        self._metrics = metrics
        self._interval = interval
        self._sample_interval = min(1.0, interval / 4)
        self._cooldown = scale_down_cooldown
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._versions: dict[str, _Version] = {}
        self._task: asyncio.Task[None] | None = None
        self._decide_now = asyncio.Event()
        self._stopping = asyncio.Event()

    # -- what the reconciler and the invocation path ask -----------------------------------------

    def desired(self, record: VersionRecord, spec: dict[str, Any]) -> int:
        """Instances `spec` of `record` should have now (its minimum until a decision)."""
        deployment = record.deployment
        state = self._versions.get(record.version_id)
        if deployment is None or state is None or state.desired is None:
            return int(spec["minInstances"])
        counts = spread(state.desired, deployment.specifications)
        for index, candidate in enumerate(deployment.specifications):
            if candidate["gpuSpecificationId"] == spec["gpuSpecificationId"]:
                return counts[index]
        return int(spec["minInstances"])

    def note_invocation(self, version_id: str) -> None:
        """A call was routed to `version_id`: it is not idle; with nothing live, decide now."""
        state = self._versions.setdefault(version_id, _Version())
        state.last_invoked_at = self._clock()
        if state.desired == 0 or (state.desired is None and self._nothing_live(version_id)):
            self._decide_now.set()

    def forget(self, version_id: str) -> None:
        self._versions.pop(version_id, None)
        self._metrics.forget(version_id)

    def _nothing_live(self, version_id: str) -> bool:
        for record in self._records():
            if record.version_id == version_id and record.deployment is not None:
                return not any(self._live(record, s) for s in record.deployment.specifications)
        return False

    # -- one round ------------------------------------------------------------------------------

    def _scalable(self) -> list[VersionRecord]:
        return [
            r
            for r in self._records()
            if r.deployment is not None
            and not r.deployment.removing
            and r.status in {FunctionStatus.ACTIVE, FunctionStatus.DEGRADING}
        ]

    async def sample(self) -> None:
        """Record each scalable version's backlog and request slots."""
        now = self._clock()
        for record in self._scalable():
            assert record.deployment is not None
            try:
                backlog = await self._backlog(record.version_id)
            except (NatsError, TimeoutError, PlatformError) as error:
                _log.debug("backlog unknown", extra={"error": repr(error)})
                continue
            slots = sum(
                self._live(record, spec) * int(spec.get("maxRequestConcurrency", 1))
                for spec in record.deployment.specifications
            )
            state = self._versions.setdefault(record.version_id, _Version())
            state.samples.append(Sample(at=now, backlog=backlog, slots=slots))
            while state.samples and state.samples[0].at < now - MAX_SAMPLE_AGE:
                state.samples.popleft()

    def decide(self) -> bool:
        """One decision per scalable version; True when some desired count changed."""
        changed = False
        now = self._clock()
        for record in self._scalable():
            deployment = record.deployment
            assert deployment is not None
            specs = deployment.specifications
            state = self._versions.setdefault(record.version_id, _Version())
            current = sum(self._live(record, spec) for spec in specs)
            bounds = (
                sum(int(s["minInstances"]) for s in specs),
                sum(int(s["maxInstances"]) for s in specs),
            )
            if record.status is not FunctionStatus.ACTIVE and current > 0:
                if state.desired is None:
                    state.desired = bounds[0]  # what `desired` answers until a decision
                continue  # DEGRADING: instances are being replaced, not scaled
            decision = decide(
                current=current,
                samples=state.samples,
                now=now,
                interval=self._interval,
                policy=ScalingPolicy.from_configuration(specs[0].get("autoscalingConfiguration")),
                bounds=bounds,
                idle_for=now - state.last_invoked_at,
                idle_timeout=self._idle_timeout,
                since_last_scale=now - state.last_scale_at,
                cooldown=self._cooldown,
            )
            previous = state.desired if state.desired is not None else bounds[0]
            if decision.desired != previous:
                state.desired = decision.desired
                state.last_scale_at = now
                changed = True
                direction = "up" if decision.desired > previous else "down"
                self._metrics.decisions.labels(direction=direction).inc()
                _log.info(
                    f"scaling {record.name} {record.version_id}: {previous} -> "
                    f"{decision.desired} instances ({decision.reason})",
                    extra={
                        "event": "autoscale",
                        "function_id": record.function_id,
                        "function_version_id": record.version_id,
                        "current": current,
                        "previous_desired": previous,
                        "desired": decision.desired,
                        "utilization": round(min(decision.utilization, 1e6), 1),
                        "backlog": state.samples[-1].backlog if state.samples else 0,
                        "slots": state.samples[-1].slots if state.samples else 0,
                        "reason": decision.reason,
                    },
                )
            state.desired = decision.desired
        self.export()
        return changed

    def export(self) -> None:
        """Desired and ready instances of every deployed version, as gauges."""
        for record in self._records():
            if record.deployment is None:
                continue
            desired = sum(self.desired(record, s) for s in record.deployment.specifications)
            ready = sum(self._ready(record, s) for s in record.deployment.specifications)
            self._metrics.set_instances(record, desired=desired, ready=ready)

    async def _run(self) -> None:
        next_decision = self._clock() + self._interval
        while not self._stopping.is_set():
            try:
                await self.sample()
                if self._decide_now.is_set() or self._clock() >= next_decision:
                    self._decide_now.clear()
                    next_decision = self._clock() + self._interval
                    if self.decide():
                        self._on_change()
            except Exception as error:  # the loop must outlive one bad round
                _log.error("autoscaling round failed", extra={"error": repr(error)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._decide_now.wait(), self._sample_interval)

    async def __aenter__(self) -> Autoscaler:
        self._task = asyncio.create_task(self._run(), name="nvcf-autoscaler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_loop(task, self._stopping, self._decide_now)
