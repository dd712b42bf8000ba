"""A 3-node NATS cluster loses its work-queue stream's leader, another node, then two nodes at once:
no request is wrong or lost, and the queue and the tracking records survive every kill.

The short variant of `make chaos-cluster` (docs/scale.md): 150 requests through a real
`nvcf-sidecar dev --nats-cluster 3 --restart` stack on loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.callers import LoadSettings
from chaos.classify import RequestClass, Summary
from chaos.cluster import NODE_LOSS_PLAN
from chaos.scenarios import CLUSTER_SCENARIOS, ChaosSettings, run_scenario
from chaos.test_chaos import details as chaos_details

pytestmark = [pytest.mark.chaos, pytest.mark.nats, pytest.mark.timeout(170)]

SHORT = ChaosSettings(
    requests=150,
    load=LoadSettings(concurrency=16, poll_seconds=5, deadline_s=45.0),
    time_limit_s=120.0,
)


def details(summary: Summary) -> str:
    return "\n".join([chaos_details(summary), *map(str, summary.faults)])


def test_no_request_is_wrong_or_lost_when_cluster_nodes_die(
    tmp_path: Path, chaos_report: list[Summary]
) -> None:
    summary = run_scenario(CLUSTER_SCENARIOS["cluster-node-loss"], SHORT, tmp_path)
    chaos_report.append(summary)
    assert summary.unsupported is None, details(summary)
    assert summary.aborted is None, details(summary)
    assert sum(summary.counts.values()) == SHORT.requests
    assert summary.counts[RequestClass.WRONG] == 0, details(summary)
    assert summary.counts[RequestClass.LOST] == 0, details(summary)
    # Every step killed its nodes (the last one two at once), and dev restarted each.
    assert len(summary.faults) == len(NODE_LOSS_PLAN) + 1, details(summary)
    assert all("new_pid" in fault for fault in summary.faults), details(summary)
    assert summary.faults[0]["stream_leader"] is True, details(summary)
    # After every kill, two at once included, the queue's stream answered through a leader again.
    assert all(fault["new_stream_leader"] for fault in summary.faults), details(summary)
