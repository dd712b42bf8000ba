"""The chaos suite's own logic: how answers are classed and how the execution log is read."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from chaos.classify import (
    Answer,
    Executions,
    Outcome,
    RequestClass,
    classify_answer,
    read_executions,
    summarize,
)
from chaos.function_server import ExecutionLog

PROBLEM = {"content-type": "application/problem+json"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(200, {}, b'{"id": "a", "reqid": "r"}'), RequestClass.CORRECT),
        (Answer(200, {}, b'{"id": "b"}'), RequestClass.WRONG),
        (Answer(200, {}, b'{"id": "a"'), RequestClass.WRONG),
        (Answer(200, {}, b"[1]"), RequestClass.WRONG),
        (Answer(500, PROBLEM, b'{"status": 500, "detail": "x"}'), RequestClass.CLEAN_FAILURE),
        (Answer(504, {"nvcf-status": "errored"}, b""), RequestClass.CLEAN_FAILURE),
        (Answer(504, {}, b""), RequestClass.WRONG),
        (Answer(500, PROBLEM, b"{not json"), RequestClass.WRONG),
        (Answer(500, {"content-type": "text/plain"}, b"Internal Server Error"), RequestClass.WRONG),
        (Answer(202, {}, b""), RequestClass.WRONG),
        (Answer(302, {}, b""), RequestClass.WRONG),
    ],
)
def test_final_answers_are_classed_by_status_and_echoed_id(
    answer: Answer, expected: RequestClass
) -> None:
    assert classify_answer("a", answer)[0] is expected


def test_a_torn_last_line_is_counted_and_the_next_execution_starts_a_new_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "executions.log"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "re')  # SIGKILL mid-line
    ExecutionLog(str(path)).append({"id": "c"})
    executions = read_executions(path)
    assert executions.per_id == Counter({"a": 1, "c": 1})
    assert executions.torn_lines == 1


def test_the_summary_joins_answers_with_executions() -> None:
    def outcome(request_id: str, kind: RequestClass, latency: float = 0.1) -> Outcome:
        return Outcome(request_id, kind, None, latency, 0, None, "why")

    outcomes = [
        outcome("a", RequestClass.CORRECT),
        outcome("b", RequestClass.CORRECT, 0.3),
        outcome("c", RequestClass.CLEAN_FAILURE),
    ]
    executed = Executions(Counter({"a": 2, "b": 1, "c": 1, "stranger": 1}), torn_lines=0)
    summary = summarize("s", ["a", "b", "c", "d"], outcomes, executed, wall_s=1.0)
    assert summary.counts == {"correct": 2, "clean_failure": 1, "wrong": 0, "lost": 1}
    assert summary.lost_reasons == {"never sent: the load was cut short": 1}
    assert (summary.duplicates, summary.extra_executions) == (1, 1)
    assert summary.unreceived == 1  # c ran, its caller got a failure
    assert summary.executed_unknown == 1
    assert summary.failed
    assert "correct=2 clean_failure=1 wrong=0 lost=1 duplicates=1 unreceived=1" in summary.line()


def test_failure_reasons_are_counted_by_kind_whatever_ids_they_name() -> None:
    def failed(request_id: str, detail: str) -> Outcome:
        return Outcome(request_id, RequestClass.CLEAN_FAILURE, 500, 0.1, 0, None, detail)

    publish = "failed to publish the work item on 'rq.local.{}.{}': NoStreamResponseError()"
    version = "1839ee0e-485e-4736-b3cd-f90b203111be"
    outcomes = [
        failed("a", publish.format(version, "027ab066-4981-403b-a3d3-576791b1bec3")),
        failed("b", publish.format(version, "830C94B5-80ED-44E1-AC26-D4FF0C614E2C")),
        failed("c", "NATS is not connected"),
    ]
    summary = summarize("s", ["a", "b", "c"], outcomes, Executions(Counter(), 0), wall_s=1.0)
    assert summary.failures == {
        "failed to publish the work item on 'rq.local.<id>.<id>': NoStreamResponseError()": 2,
        "NATS is not connected": 1,
    }
