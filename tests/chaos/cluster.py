"""The node-loss scenario: the load through `dev --nats-cluster 3 --restart` while NATS nodes die.

SIGKILL of the node leading the version's work-queue stream, later of another node, at last of
two nodes at once (no quorum until dev restarts them); dev restarts every node on its store. The
stream's leader is asked from the cluster itself (`$JS.API.STREAM.INFO`), and the latency of the
requests in flight around each kill is reported beside the chaos suite's usual figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

from chaos.classify import Outcome, RequestClass

if TYPE_CHECKING:  # scenarios.py registers the plan below, so it imports this module
    from chaos.scenarios import _Faults

__all__ = ["NODE_LOSS_PLAN", "kill_cluster_nodes", "latency_around_faults"]

NODE_LOSS_PLAN: tuple[tuple[float, str], ...] = (
    (0.25, "stream-leader"),
    (0.5, "another-node"),
    (0.75, "two-nodes"),
)
"""(fraction of the requests answered, what dies then)."""
_LEADER_WAIT_S = 15.0
_RESTART_TIMEOUT_S = 30.0
_INFO_TIMEOUT_S = 0.5  # the resolution of "the stream answers again"
_TICK_S = 0.05
_AROUND_S = 5.0  # requests in flight this long after a kill count as "around" it
_STREAM_PREFIX = "rq_"


async def _connect(urls: Sequence[str]) -> Client:
    return await nats.connect(
        list(urls),
        name="chaos-leader-probe",
        connect_timeout=2,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
    )


async def work_queue_stream(nc: Client) -> str | None:
    """The name of the version's work-queue stream (the only `rq_` one), None until listed."""
    js = nc.jetstream(timeout=_INFO_TIMEOUT_S)
    try:
        names = await js.streams_info()
    except (NatsError, TimeoutError):
        return None
    for info in names:
        if info.config.name and info.config.name.startswith(_STREAM_PREFIX):
            return info.config.name
    return None


async def stream_leader(nc: Client, stream: str) -> str | None:
    """The stream's leader, as the leader itself answers `$JS.API.STREAM.INFO` (a dead one
    cannot), or None while it has none or cannot be asked."""
    js = nc.jetstream(timeout=_INFO_TIMEOUT_S)
    try:
        info = await js.stream_info(stream)
    except (NatsError, TimeoutError):
        return None
    return info.cluster.leader if info.cluster is not None else None


async def _wait_leader(nc: Client, stream: str, limit_s: float) -> str | None:
    """The stream's leader once one answers, within `limit_s`; else None."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        leader = await stream_leader(nc, stream)
        if leader:
            return leader
        await asyncio.sleep(_TICK_S)
    return None


async def kill_cluster_nodes(faults: _Faults) -> None:
    """The fault plan (for `scenarios._Faults`): at each step of `NODE_LOSS_PLAN`, once every
    node is ready, SIGKILL the stream's leader, then another node, then two nodes at once; wait
    for dev to restart them and record who led before and who leads after (and how soon)."""
    stack = faults.stack
    nodes = sorted(stack.nats_nodes)
    if len(nodes) < 3:
        faults.unsupported = f"dev printed {len(nodes)} NATS nodes, not a cluster of 3"
        return
    nc = await _connect([stack.nats_nodes[name] for name in nodes])
    try:
        deadline = time.monotonic() + _LEADER_WAIT_S
        while (stream := await work_queue_stream(nc)) is None:
            if time.monotonic() > deadline:
                faults.unsupported = "the cluster lists no work-queue stream"
                return
            await asyncio.sleep(_TICK_S)
        killed_before: list[str] = []
        for fraction, what in NODE_LOSS_PLAN:
            if not await faults.wait_answered(fraction):
                return
            for name in nodes:
                if not await faults.wait_ready(name):
                    return
            leader = await _wait_leader(nc, stream, _LEADER_WAIT_S)
            if leader is None:
                faults.unsupported = "the work-queue stream has no leader to kill"
                return
            if what == "stream-leader":
                targets = [leader]
            elif what == "another-node":
                others = [n for n in nodes if n not in killed_before]
                targets = [leader if leader not in killed_before else others[0]]
            else:
                targets = [leader, next(n for n in nodes if n != leader)]
            killed_before += targets
            await _kill_and_restart(faults, nc, stream, targets, leader, what)
            if faults.unsupported is not None:
                return
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await asyncio.wait_for(nc.close(), 5)


async def _kill_and_restart(
    faults: _Faults, nc: Client, stream: str, targets: list[str], leader: str, what: str
) -> None:
    """SIGKILL `targets` at once; record when the stream answers again through a leader (the
    restarted node may lead again: dev brings it back within about a second, often before the
    others have elected a new leader) and when dev has every killed node ready again."""
    pids = {}
    at = time.monotonic()
    for name in targets:
        pids[name] = faults.stack.kill(name)
    records = []
    for name in targets:
        record: dict[str, object] = {
            "target": name,
            "signal": "SIGKILL",
            "pid": pids[name],
            "at_s": round(at - faults.started, 3),
            "step": what,
            "stream_leader": name == leader,
        }
        faults.injected.append(record)
        records.append(record)

    async def leader_back() -> tuple[str | None, float]:
        leader = await _wait_leader(nc, stream, _LEADER_WAIT_S)
        return leader, round(time.monotonic() - at, 3)

    async def restarted(name: str) -> tuple[int | None, str, float]:
        fresh, why = await asyncio.to_thread(
            faults.stack.wait_restarted, name, pids[name], _RESTART_TIMEOUT_S
        )
        return fresh, why, round(time.monotonic() - at, 3)

    # Both at once: dev restarts a node within about a second, the stream answers later.
    leader_task = asyncio.create_task(leader_back())
    restarts = await asyncio.gather(*(restarted(name) for name in targets))
    new_leader, answering_after = await leader_task
    for record in records:
        record["new_stream_leader"] = new_leader
        if new_leader is not None:
            record["stream_answering_after_s"] = answering_after
    for name, record, (fresh, why, after) in zip(targets, records, restarts, strict=True):
        if fresh is None:
            faults.unsupported = why
            return
        record["new_pid"] = fresh
        record["restarted_after_s"] = after
        if await faults.wait_ready(name):
            record["back_after_s"] = round(time.monotonic() - at, 3)


def latency_around_faults(
    outcomes: Sequence[Outcome], faults: Sequence[dict[str, object]], started: float
) -> dict[str, object]:
    """Latency of the requests in flight within 5 s after a kill, against the others: counts,
    p50 and p99 (ms) of the correct ones, and the clean failures among them."""
    kills = sorted({float(str(f["at_s"])) + started for f in faults if "at_s" in f})

    def near(outcome: Outcome) -> bool:
        begun = outcome.ended_at - outcome.latency_s
        return any(begun <= at + _AROUND_S and outcome.ended_at >= at for at in kills)

    around = [o for o in outcomes if near(o)]
    rest = [o for o in outcomes if not near(o)]

    def figures(group: list[Outcome]) -> dict[str, object]:
        correct = sorted(o.latency_s for o in group if o.kind is RequestClass.CORRECT)
        return {
            "requests": len(group),
            "correct": len(correct),
            "clean_failures": sum(1 for o in group if o.kind is RequestClass.CLEAN_FAILURE),
            "p50_ms": _percentile_ms(correct, 0.50),
            "p99_ms": _percentile_ms(correct, 0.99),
        }

    return {"window_s": _AROUND_S, "around_kills": figures(around), "elsewhere": figures(rest)}


def _percentile_ms(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return round(sorted_values[index] * 1000, 1)
