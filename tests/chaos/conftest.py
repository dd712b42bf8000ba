"""The chaos suite's pytest side: each scenario's summary line, shown after the run.

`chaos_report` collects the summaries; `pytest_terminal_summary` prints them in a "chaos" section
of pytest's own report, so they show in CI output without `-s`.
"""

from __future__ import annotations

import pytest

from chaos.classify import Summary

_SUMMARIES = pytest.StashKey[list[Summary]]()


@pytest.fixture
def chaos_report(request: pytest.FixtureRequest) -> list[Summary]:
    """Where a test puts the summaries of the scenarios it ran."""
    return request.config.stash.setdefault(_SUMMARIES, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    summaries = config.stash.get(_SUMMARIES, [])
    if not summaries:
        return
    terminalreporter.write_sep("=", "chaos")
    for summary in summaries:
        terminalreporter.write_line(summary.line())
        for reason, count in {**summary.failures, **summary.lost_reasons}.items():
            terminalreporter.write_line(f"  {count} x {reason}")
        for note in summary.notes:
            terminalreporter.write_line(f"  {note}")
