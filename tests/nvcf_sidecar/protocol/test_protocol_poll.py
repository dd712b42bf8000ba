"""The IS's NVCF-POLL-SECONDS table and the worker's shifted budget."""

from __future__ import annotations

import pytest

from nvcf_sidecar.protocol import (
    InvalidPollSeconds,
    PollBudget,
    PollSecondsTooLarge,
    UnparsablePollSeconds,
    parse_poll_seconds,
    shift_poll_budget,
)

SSE = "text/event-stream"


@pytest.mark.parametrize(
    ("value", "accept", "tlb", "expected"),
    [
        (None, None, False, 60),
        (None, "application/json", False, 60),
        (None, SSE, False, 1200),
        (None, SSE, True, 60),
        (None, "text/event-stream; charset=utf-8", False, 60),
        (None, "Text/Event-Stream", False, 60),
        ("0", None, False, 1),
        ("00", SSE, False, 1),
        ("1", None, False, 1),
        ("30", SSE, False, 30),
        ("+5", None, False, 5),
        ("0005", None, False, 5),
        ("3600", None, False, 3600),
        ("caf\u00e9", None, False, 60),  # not visible ASCII: read as absent
        ("caf\u00e9", SSE, False, 1200),
    ],
)
def test_poll_seconds_table(
    value: str | None, accept: str | None, tlb: bool, expected: int
) -> None:
    assert parse_poll_seconds(value, accept, tlb=tlb) == expected


@pytest.mark.parametrize("value", ["3601", "10000", "18446744073709551615"])
def test_poll_seconds_above_an_hour_is_refused(value: str) -> None:
    with pytest.raises(PollSecondsTooLarge) as caught:
        parse_poll_seconds(value, None)
    assert caught.value.value == value
    assert caught.value.detail == "failed to parse poll duration"


@pytest.mark.parametrize(
    "value",
    ["", "-5", "-0", "abc", " 5", "5 ", "5.0", "1e3", "+", "18446744073709551616", "9" * 5000],
)
def test_unparsable_poll_seconds_is_refused(value: str) -> None:
    with pytest.raises(UnparsablePollSeconds) as caught:
        parse_poll_seconds(value, SSE)
    assert isinstance(caught.value, InvalidPollSeconds)
    assert caught.value.detail == "failed to parse poll duration"


def test_budget_is_shifted_by_the_age_of_the_work_item() -> None:
    budget = shift_poll_budget("60", request_time=1000.0, now=1000.5)
    assert budget == PollBudget(target=60.0, shifted=59.5)
    assert budget.header_value == "59"
    assert not budget.too_late
    assert budget.next_poll_timeout == 120.0


@pytest.mark.parametrize("value", [None, "", "abc", "5.5", " 5", "99999999999999999999"])
def test_worker_falls_back_to_60_seconds(value: str | None) -> None:
    assert shift_poll_budget(value, 0.0, 0.0).target == 60.0


def test_worker_does_not_clamp_what_it_is_given() -> None:
    assert shift_poll_budget("-5", 0.0, 0.0).target == -5.0
    assert shift_poll_budget("+7", 0.0, 0.0).target == 7.0
    assert shift_poll_budget("10000", 0.0, 0.0).target == 10000.0


@pytest.mark.parametrize(
    ("shifted", "header", "too_late"),
    [
        (0.4, "0", False),
        (-0.5, "0", False),
        (-1.5, "-1", False),
        (-2.0, "-2", False),
        (-2.5, "-2", True),
        (-100.0, "-100", True),
    ],
)
def test_spent_budgets(shifted: float, header: str, too_late: bool) -> None:
    budget = PollBudget(target=1.0, shifted=shifted)
    assert budget.header_value == header
    assert budget.too_late is too_late


def test_next_poll_wait_is_at_least_ten_seconds() -> None:
    assert PollBudget(target=1.0, shifted=0.0).next_poll_timeout == 10.0
    assert PollBudget(target=5.0, shifted=0.0).next_poll_timeout == 10.0
    assert PollBudget(target=6.0, shifted=0.0).next_poll_timeout == 12.0
