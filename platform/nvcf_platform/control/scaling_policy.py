"""The autoscaling decision, as a pure function: NVIDIA's default policy (reference §6.2) and the
custom `autoscalingConfiguration` of a GPU specification (§6.3), on utilization samples.

Utilization is `100 * backlog / slots`: the version's work items queued or being served (what
JetStream knows: `num_pending + num_ack_pending` of its consumer) over its request slots (live
instances x `maxRequestConcurrency`). Above 100 means a queue is building up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from nvcf_platform.control.validation_fields import parse_duration

__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "Sample",
    "ScalingPolicy",
    "ScalingRule",
    "decide",
]

NO_SLOTS_BUSY: Final = 1e9
"""The utilization of a version with work waiting and no live instance (any threshold is below)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation of a version: when, its backlog, and its request slots then."""

    at: float
    backlog: int
    slots: int

    @property
    def utilization(self) -> float:
        if self.slots <= 0:
            return NO_SLOTS_BUSY if self.backlog > 0 else 0.0
        return 100.0 * self.backlog / self.slots


@dataclass(frozen=True, slots=True)
class ScalingRule:
    """One direction: scale by `factor` when utilization passes `threshold` (percent).

    With stickiness (`window` > 0): only when utilization was past the threshold for at least
    `sticky_for` seconds of the last `window` seconds; otherwise the samples of the last decision
    interval, averaged, decide."""

    factor: float
    threshold: float
    window: float = 0.0
    sticky_for: float = 0.0


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    up: ScalingRule
    down: ScalingRule

    @classmethod
    def from_configuration(cls, configuration: object) -> ScalingPolicy:
        """A GPU specification's `autoscalingConfiguration` (validated at deploy) on top of the
        defaults; a missing direction keeps its default, as NVIDIA's autoscaler does."""
        if not isinstance(configuration, dict):
            return DEFAULT_POLICY
        return cls(
            up=_rule(configuration.get("scaleUpDetails"), DEFAULT_POLICY.up),
            down=_rule(configuration.get("scaleDownDetails"), DEFAULT_POLICY.down),
        )


DEFAULT_POLICY: Final = ScalingPolicy(
    up=ScalingRule(factor=1.2, threshold=70.0), down=ScalingRule(factor=0.8, threshold=30.0)
)
"""NVIDIA's defaults: up by x1.2 above 70 %, down by x0.8 below 30 %."""


def _seconds(text: object) -> float:
    value = parse_duration(text) if isinstance(text, str) else None
    return float(value) if isinstance(value, Decimal) else 0.0


def _rule(details: object, default: ScalingRule) -> ScalingRule:
    if not isinstance(details, dict):
        return default
    stickiness: Any = details.get("stickiness") or {}
    return ScalingRule(
        factor=float(details.get("factor", default.factor)),
        threshold=float(details.get("threshold", default.threshold)),
        window=_seconds(stickiness.get("size")),
        sticky_for=_seconds(stickiness.get("threshold")),
    )


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: str
    utilization: float


def _past(
    samples: Sequence[Sample], rule: ScalingRule, now: float, interval: float, up: bool
) -> tuple[bool, float]:
    """Whether `rule`'s gate is open, and the utilization it looked at."""
    if rule.window > 0:
        recent = [s for s in samples if s.at >= now - rule.window]
        if not recent:
            return False, 0.0
        above = 0.0
        for earlier, later in zip(recent, [*recent[1:], None], strict=True):
            span = (later.at if later is not None else now) - earlier.at
            passed = (
                earlier.utilization > rule.threshold if up else earlier.utilization < rule.threshold
            )
            above += span if passed else 0.0
        average = sum(s.utilization for s in recent) / len(recent)
        return above >= rule.sticky_for, average
    recent = [s for s in samples if s.at >= now - interval] or list(samples[-1:])
    if not recent:
        return False, 0.0
    average = sum(min(s.utilization, NO_SLOTS_BUSY) for s in recent) / len(recent)
    return (average > rule.threshold if up else average < rule.threshold), average


def decide(
    *,
    current: int,
    samples: Sequence[Sample],
    now: float,
    interval: float,
    policy: ScalingPolicy,
    bounds: tuple[int, int],
    idle_for: float,
    idle_timeout: float,
    since_last_scale: float,
    cooldown: float,
) -> Decision:
    """The instances a version should have (within `bounds` = (Σmin, Σmax)).

    - Nothing live: one instance (or the minimum) as soon as work waits or a call came in since
      it went idle; else the minimum.
    - Up: `ceil(current x factor)` (at least one more) when the up gate is open.
    - Down: `max(1, floor(current x factor))` when the down gate is open, no scaling happened
      within `cooldown`, and the same load on that many instances stays below the up threshold
      (ours: without it, 70/30 % thresholds make 1 <-> 2 instances flap at ~70 % of one); to
      zero (minimum 0 only) once idle for `idle_timeout` with nothing waiting.
    """
    low = bounds[0]
    backlog = samples[-1].backlog if samples else 0
    if current == 0:
        if backlog > 0 or idle_for < idle_timeout:
            return Decision(
                _clamp(max(1, low), bounds), "cold start", NO_SLOTS_BUSY if backlog else 0.0
            )
        return Decision(low, "idle", 0.0)
    up, utilization = _past(samples, policy.up, now, interval, up=True)
    if up:
        wanted = max(current + 1, math.ceil(current * policy.up.factor))
        return Decision(
            _clamp(wanted, bounds), "utilization above the scale-up threshold", utilization
        )
    # Down looks further back (the cool-down, if longer): taking capacity away is the costly
    # mistake, and a short window of a noisy load reads low too often.
    down, utilization = _past(samples, policy.down, now, max(interval, cooldown), up=False)
    if low == 0 and backlog == 0 and idle_for >= idle_timeout:
        # No call for the idle timeout: only the last interval's load matters.
        quiet, recent = _past(samples, policy.down, now, interval, up=False)
        if quiet:
            return Decision(0, "idle past the scale-to-zero timeout", recent)
    if down and since_last_scale >= cooldown and current > max(low, 1):
        wanted = _clamp(max(1, math.floor(current * policy.down.factor)), bounds)
        # The load left on fewer instances must not open the up gate again (no flapping).
        if utilization * current / wanted < policy.up.threshold:
            return Decision(wanted, "utilization below the scale-down threshold", utilization)
        return Decision(
            _clamp(current, bounds),
            "steady (fewer instances would be above the scale-up threshold)",
            utilization,
        )
    return Decision(_clamp(current, bounds), "steady", utilization)


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))
