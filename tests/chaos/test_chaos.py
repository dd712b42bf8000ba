"""Under each fault, every request ends correct or as a clean failure: none is wrong, none is lost.

The short variant of `make chaos` (docs/reliability.md): 150 requests per scenario through a
real `nvcf-sidecar dev --restart` stack, fewer sidecar kills. Beyond "none wrong, none lost": a
function-server kill fails only the calls that were in it (never more than every slot of every
sidecar), and a graceful platform restart leaves no execution that nobody could receive.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.callers import LoadSettings
from chaos.classify import RequestClass, Summary
from chaos.scenarios import SCENARIOS, ChaosSettings, run_scenario

pytestmark = [pytest.mark.chaos, pytest.mark.nats, pytest.mark.timeout(150)]

SHORT = ChaosSettings(
    requests=150,
    load=LoadSettings(concurrency=16, poll_seconds=5, deadline_s=45.0),
    max_sidecar_kills=3,
    time_limit_s=100.0,
)
# Faults each scenario must really have injected (at least).
INJECTED = {
    "baseline": 0,
    "sidecar-kill": 1,
    # Every instance's server at least once: a short load can end before the later round
    # (CI saw 150 requests answered before the servers of the first round were ready again).
    "server-kill": SHORT.layout.sidecars,
    "nats-kill": len(SHORT.nats_kills_at),
    "platform-restart": len(SHORT.platform_kills_at),
}


def details(summary: Summary) -> str:
    return "\n".join(
        [
            summary.line(),
            *summary.wrong_examples,
            *(f"{n} x {why}" for why, n in summary.lost_reasons.items()),
            *(f"{n} x failed: {why}" for why, n in summary.failures.items()),
            *summary.notes,
        ]
    )


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_request_is_wrong_or_lost_under_the_fault(
    scenario: str, tmp_path: Path, chaos_report: list[Summary]
) -> None:
    summary = run_scenario(SCENARIOS[scenario], SHORT, tmp_path)
    chaos_report.append(summary)
    assert summary.unsupported is None, details(summary)
    assert summary.aborted is None, details(summary)
    assert sum(summary.counts.values()) == SHORT.requests
    assert summary.counts[RequestClass.WRONG] == 0, details(summary)
    assert summary.counts[RequestClass.LOST] == 0, details(summary)
    assert len(summary.faults) >= INJECTED[scenario], details(summary)
    restarted = [fault for fault in summary.faults if "new_pid" in fault]
    if scenario != "sidecar-kill":  # sidecar kills do not wait for dev's restart
        assert len(restarted) == len(summary.faults), details(summary)
    if scenario == "server-kill":
        # Calls refused while the server is down are held, not failed: only those in flight in
        # a server when it died (at most its sidecar's slots) can fail.
        failed = summary.counts[RequestClass.CLEAN_FAILURE]
        assert failed <= SHORT.layout.concurrency * len(summary.faults), details(summary)
    if scenario == "platform-restart":  # a SIGTERM drains: waiting callers get their answers
        assert summary.unreceived == 0, details(summary)
        # The new platform knows the deployed version before its first caller (no 404).
        assert not [why for why in summary.failures if why.startswith("404")], details(summary)
