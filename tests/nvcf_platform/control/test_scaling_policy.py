"""The autoscaling decision (NVIDIA's default policy and custom configurations), pure logic."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from nvcf_platform.control.autoscaler import spread
from nvcf_platform.control.scaling_policy import (
    DEFAULT_POLICY,
    Sample,
    ScalingPolicy,
    decide,
)


def _decide(current: int, utilizations: list[float], **overrides: object):  # type: ignore[no-untyped-def]
    slots = current * 100  # 100 slots per instance: utilizations land exactly
    samples = [
        Sample(at=float(i), backlog=round(u * max(slots, 1) / 100), slots=slots)
        for i, u in enumerate(utilizations)
    ]
    options = {
        "current": current,
        "samples": samples,
        "now": float(len(utilizations)),
        "interval": float(len(utilizations)),
        "policy": DEFAULT_POLICY,
        "bounds": (1, 10),
        "idle_for": 0.0,
        "idle_timeout": 1800.0,
        "since_last_scale": 1e9,
        "cooldown": 60.0,
    }
    options.update(overrides)
    return decide(**options)  # type: ignore[arg-type]


def test_above_70_percent_scales_up_by_1_2_and_at_least_one() -> None:
    assert _decide(1, [100, 100]).desired == 2
    assert _decide(5, [90, 90]).desired == 6
    assert _decide(10, [90], bounds=(1, 20)).desired == 12


def test_below_30_percent_scales_down_by_0_8_never_below_one() -> None:
    assert _decide(3, [10, 10]).desired == 2
    assert _decide(10, [0, 0]).desired == 8
    assert _decide(1, [0, 0]).desired == 1


def test_between_the_thresholds_nothing_changes() -> None:
    decision = _decide(2, [50, 50])
    assert (decision.desired, decision.reason) == (2, "steady")


def test_no_scale_down_that_would_open_the_up_gate_again() -> None:
    assert _decide(2, [29, 29]).desired == 1  # 58 % on one instance stays below 70 %
    assert _decide(5, [29, 29]).desired == 4  # 29 x 5 / 4 = 36 %
    wide = ScalingPolicy.from_configuration({"scaleDownDetails": {"factor": 0.5, "threshold": 40}})
    assert _decide(2, [36, 36], policy=wide).desired == 2  # 72 % on one: it would flap


def test_scale_down_waits_for_the_cooldown() -> None:
    assert _decide(3, [0, 0], since_last_scale=10.0, cooldown=60.0).desired == 3
    assert _decide(3, [0, 0], since_last_scale=60.0, cooldown=60.0).desired == 2


def test_bounds_win() -> None:
    assert _decide(3, [100], bounds=(1, 3)).desired == 3
    assert _decide(3, [0], bounds=(3, 5)).desired == 3


def test_scale_to_zero_only_with_minimum_zero_idle_and_nothing_waiting() -> None:
    assert _decide(1, [0, 0], bounds=(0, 3), idle_for=1800.0).desired == 0
    assert _decide(1, [0, 0], bounds=(0, 3), idle_for=10.0).desired == 1
    assert _decide(1, [0, 0], bounds=(1, 3), idle_for=1e9).desired == 1


def test_a_call_to_a_version_with_nothing_live_starts_one() -> None:
    cold = decide(
        current=0,
        samples=[Sample(at=0.0, backlog=1, slots=0)],
        now=1.0,
        interval=1.0,
        policy=DEFAULT_POLICY,
        bounds=(0, 3),
        idle_for=1e9,
        idle_timeout=30.0,
        since_last_scale=0.0,
        cooldown=0.0,
    )
    assert (cold.desired, cold.reason) == (1, "cold start")
    idle = decide(
        current=0,
        samples=[Sample(at=0.0, backlog=0, slots=0)],
        now=1.0,
        interval=1.0,
        policy=DEFAULT_POLICY,
        bounds=(0, 3),
        idle_for=1e9,
        idle_timeout=30.0,
        since_last_scale=0.0,
        cooldown=0.0,
    )
    assert idle.desired == 0


def test_a_custom_configuration_replaces_factor_and_threshold() -> None:
    policy = ScalingPolicy.from_configuration(
        {
            "scaleUpDetails": {"factor": 2.0, "threshold": 50},
            "scaleDownDetails": {"factor": 0.5, "threshold": 10},
        }
    )
    assert _decide(2, [60], policy=policy).desired == 4
    assert _decide(4, [20], policy=policy).desired == 4  # 20 % is not below 10 %
    assert _decide(4, [5], policy=policy).desired == 2


def test_stickiness_needs_the_utilization_to_hold() -> None:
    policy = ScalingPolicy.from_configuration(
        {
            "scaleUpDetails": {
                "factor": 1.5,
                "threshold": 70,
                "stickiness": {"size": "PT10S", "threshold": "PT5S"},
            }
        }
    )
    brief = [50.0] * 8 + [100.0] * 2  # above for 2 of the last 10 s
    assert _decide(2, brief, policy=policy).desired == 2
    held = [50.0] * 4 + [100.0] * 6  # above for 6 of the last 10 s
    assert _decide(2, held, policy=policy).desired == 3


def test_missing_directions_keep_the_defaults() -> None:
    policy = ScalingPolicy.from_configuration({"scaleUpDetails": {"factor": 3.0, "threshold": 80}})
    assert policy.down == DEFAULT_POLICY.down
    assert ScalingPolicy.from_configuration(None) == DEFAULT_POLICY


@given(
    current=st.integers(0, 50),
    low=st.integers(0, 10),
    extra=st.integers(0, 20),
    utilization=st.floats(0, 10_000),
    idle_for=st.floats(0, 4000),
)
def test_the_decision_stays_within_the_bounds(
    current: int, low: int, extra: int, utilization: float, idle_for: float
) -> None:
    high = max(low, 1) + extra
    decision = _decide(current, [utilization], bounds=(low, high), idle_for=idle_for)
    assert low <= decision.desired <= high
    assert not math.isnan(decision.utilization)


def test_spread_fills_minimums_first_then_in_order_up_to_each_maximum() -> None:
    specs = [
        {"minInstances": 1, "maxInstances": 2},
        {"minInstances": 0, "maxInstances": 3},
    ]
    assert spread(0, specs) == [1, 0]
    assert spread(2, specs) == [2, 0]
    assert spread(4, specs) == [2, 2]
    assert spread(9, specs) == [2, 3]
