"""What became of each request, what the function server executed, and one summary per scenario.

Classes of a request: correct (a final 200 echoing its id), clean failure (an error status with
a problem+json body, or NVCF's empty 504 marked `nvcf-status: errored`), wrong (another id, a
garbled body, an unexpected status) and lost (no final answer by its deadline, or a POST whose
connection dropped with no status). From the execution log: duplicates and unreceived executions.
"""

from __future__ import annotations

import enum
import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Answer",
    "Executions",
    "Outcome",
    "RequestClass",
    "Summary",
    "classify_answer",
    "read_executions",
    "summarize",
]


class RequestClass(enum.StrEnum):
    CORRECT = "correct"
    CLEAN_FAILURE = "clean_failure"
    WRONG = "wrong"
    LOST = "lost"


@dataclass(frozen=True)
class Answer:
    """A final HTTP answer as the caller read it (header names lower-cased)."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """One request: its class, final status (None when lost), latency and why."""

    request_id: str
    kind: RequestClass
    status: int | None
    latency_s: float
    polls: int
    reqid: str | None
    detail: str
    ended_at: float = 0.0  # time.monotonic() of the final answer (or of giving up)


def classify_answer(request_id: str, answer: Answer) -> tuple[RequestClass, str]:
    """The class of a final answer to the request `request_id`, and a short reason."""
    status = answer.status
    if status == 200:
        try:
            echoed = json.loads(answer.body).get("id")
        except (ValueError, AttributeError):
            return RequestClass.WRONG, f"200 with a garbled body {answer.body[:60]!r}"
        if echoed == request_id:
            return RequestClass.CORRECT, "200"
        return RequestClass.WRONG, f"200 answering id {echoed!r}"
    if status == 202:
        return RequestClass.WRONG, "202 without nvcf-reqid, or still 202 after every poll"
    if status >= 400:
        content_type = answer.headers.get("content-type", "")
        if content_type.startswith("application/problem+json"):
            try:
                problem = json.loads(answer.body)
            except ValueError:
                return RequestClass.WRONG, f"{status} with a garbled problem {answer.body[:60]!r}"
            if isinstance(problem, dict):
                return RequestClass.CLEAN_FAILURE, f"{status} {problem.get('detail') or ''}".strip()
        if not answer.body and answer.headers.get("nvcf-status") == "errored":
            return RequestClass.CLEAN_FAILURE, f"{status} (empty, nvcf-status: errored)"
        return RequestClass.WRONG, f"{status} with a non-problem body {answer.body[:60]!r}"
    return RequestClass.WRONG, f"unexpected status {status}"


@dataclass(frozen=True)
class Executions:
    """The function server's execution log: executions per id, and lines that did not parse
    (a line torn by a SIGKILL mid-write)."""

    per_id: Counter[str]
    torn_lines: int


def read_executions(path: Path) -> Executions:
    """Parse the execution log; a torn or garbled line is counted, never fatal."""
    per_id: Counter[str] = Counter()
    torn = 0
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            per_id[str(record["id"])] += 1
        except (ValueError, KeyError, TypeError):
            torn += 1
    return Executions(per_id, torn)


def _percentile_ms(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0] * 1000
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1] * 1000


@dataclass
class Summary:
    """The figures of one scenario; `failed` when a request was wrong or lost."""

    scenario: str
    requests: int
    counts: dict[str, int]
    failures: dict[str, int]
    lost_reasons: dict[str, int]
    wrong_examples: list[str]
    duplicates: int
    extra_executions: int
    unreceived: int
    executed_unknown: int
    torn_lines: int
    p50_ms: float | None
    p99_ms: float | None
    wall_s: float
    failure_window_s: tuple[float, float] | None = None  # first and last clean failure
    faults: list[dict[str, object]] = field(default_factory=list)
    unsupported: str | None = None
    aborted: str | None = None
    notes: list[str] = field(default_factory=list)
    log_digest: dict[str, int] = field(default_factory=dict)
    latency: dict[str, object] = field(default_factory=dict)  # around the faults, if measured

    @property
    def failed(self) -> bool:
        if self.unsupported is not None:
            return False
        bad = self.counts[RequestClass.WRONG] + self.counts[RequestClass.LOST]
        return bad > 0 or self.aborted is not None

    @property
    def verdict(self) -> str:
        if self.unsupported is not None:
            return f"UNSUPPORTED by this dev ({self.unsupported})"
        if self.aborted is not None:
            return f"FAILED ({self.aborted})"
        return "FAILED" if self.failed else "ok"

    def line(self) -> str:
        """The one-line summary printed per scenario."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}ms"

        c = self.counts
        kinds = Counter(
            str(fault["target"]).split("-")[0]
            + ("" if fault.get("signal", "SIGKILL") == "SIGKILL" else f" {fault['signal']}")
            for fault in self.faults
        )
        injected = ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items()))
        return (
            f"chaos {self.scenario}: n={self.requests} correct={c[RequestClass.CORRECT]} "
            f"clean_failure={c[RequestClass.CLEAN_FAILURE]} wrong={c[RequestClass.WRONG]} "
            f"lost={c[RequestClass.LOST]} duplicates={self.duplicates} "
            f"unreceived={self.unreceived} p50={ms(self.p50_ms)} p99={ms(self.p99_ms)} "
            f"faults={len(self.faults)}{f' ({injected})' if injected else ''} "
            f"wall={self.wall_s:.1f}s: {self.verdict}"
        )


def summarize(
    scenario: str,
    request_ids: Sequence[str],
    outcomes: Iterable[Outcome],
    executions: Executions,
    *,
    wall_s: float,
    started: float = 0.0,
) -> Summary:
    """Count the classes of `outcomes` and join them with the execution log. A request that was
    never sent (the load was cut short) is counted as lost. Times are given relative to
    `started` (a `time.monotonic()` value)."""
    by_id = {outcome.request_id: outcome for outcome in outcomes}
    counts = dict.fromkeys(RequestClass, 0)
    failures: Counter[str] = Counter()
    lost_reasons: Counter[str] = Counter()
    wrong: list[str] = []
    for outcome in by_id.values():
        counts[outcome.kind] += 1
        if outcome.kind is RequestClass.CLEAN_FAILURE:
            failures[_without_ids(outcome.detail)] += 1
        elif outcome.kind is RequestClass.LOST:
            lost_reasons[_without_ids(outcome.detail)] += 1
        elif outcome.kind is RequestClass.WRONG and len(wrong) < 10:
            wrong.append(f"{outcome.request_id}: {outcome.detail}")
    unsent = len(request_ids) - len(by_id)
    if unsent:
        counts[RequestClass.LOST] += unsent
        lost_reasons["never sent: the load was cut short"] += unsent
    known = set(request_ids)
    per_id = executions.per_id
    correct = {i for i, o in by_id.items() if o.kind is RequestClass.CORRECT}
    latencies = sorted(o.latency_s for o in by_id.values() if o.kind is RequestClass.CORRECT)
    summary = Summary(
        scenario=scenario,
        requests=len(request_ids),
        counts={str(kind): count for kind, count in counts.items()},
        failures=dict(failures.most_common()),
        lost_reasons=dict(lost_reasons.most_common()),
        wrong_examples=wrong,
        duplicates=sum(1 for i in known if per_id[i] > 1),
        extra_executions=sum(per_id[i] - 1 for i in known if per_id[i] > 1),
        unreceived=sum(1 for i in known if per_id[i] > 0 and i not in correct),
        executed_unknown=sum(count for i, count in per_id.items() if i not in known),
        torn_lines=executions.torn_lines,
        p50_ms=_percentile_ms(latencies, 0.50),
        p99_ms=_percentile_ms(latencies, 0.99),
        wall_s=wall_s,
    )
    failed_at = [
        o.ended_at - started for o in by_id.values() if o.kind is RequestClass.CLEAN_FAILURE
    ]
    if failed_at:
        summary.failure_window_s = (round(min(failed_at), 3), round(max(failed_at), 3))
    answered_unexecuted = sum(1 for i in correct if per_id[i] == 0)
    if answered_unexecuted:
        summary.notes.append(f"{answered_unexecuted} correct answers with no logged execution")
    if summary.executed_unknown:
        summary.notes.append(f"{summary.executed_unknown} executions of ids nobody sent")
    return summary


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def _without_ids(reason: str) -> str:
    """`reason` with its UUIDs (request, version ids) as `<id>`: one count per kind of failure."""
    return _UUID.sub("<id>", reason)
