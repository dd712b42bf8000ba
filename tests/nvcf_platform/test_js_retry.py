"""The retry policy of JetStream writes (`js_retry.write_through_elections`), as pure logic.

The writes it carries run against a real 3-node cluster in test_nats_cluster.py and the chaos
suite's `cluster-node-loss`; here the tries are scripted to pin the policy itself.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError

from nvcf_platform.invocation import js_retry
from nvcf_platform.invocation.js_retry import RETRY_FLOOR, write_through_elections


class Script:
    """Answers each try with the next outcome (None = written); counts tries and creations."""

    def __init__(
        self,
        *outcomes: Exception | None,
        create_error: Exception | None = None,
        create_hangs: bool = False,
    ) -> None:
        self.outcomes = list(outcomes)
        self.tries = 0
        self.creations = 0
        self.create_error = create_error
        self.create_hangs = create_hangs

    async def attempt(self, deadline: float) -> Exception | None:
        self.tries += 1
        return self.outcomes.pop(0) if self.outcomes else None

    async def create(self) -> None:
        self.creations += 1
        if self.create_hangs:  # waits for a meta leader that is not there
            await asyncio.sleep(3600)
        if self.create_error is not None:
            raise self.create_error


async def _run(script: Script, within: float) -> Exception | None:
    return await write_through_elections(
        script.attempt,
        deadline=time.monotonic() + within,
        create_stream=script.create,
        delays=(0.01, 0.01),
        extra={"request_id": "r1"},
    )


async def test_a_first_try_that_lands_is_the_only_one() -> None:
    script = Script(None)
    assert await _run(script, 5) is None
    assert (script.tries, script.creations) == (1, 0)


async def test_no_stream_creates_it_once_and_the_write_is_tried_again() -> None:
    script = Script(NoStreamResponseError(), NoStreamResponseError(), None)
    assert await _run(script, 5) is None
    assert (script.tries, script.creations) == (3, 1)


async def test_a_creation_refused_while_a_cluster_elects_is_not_the_end() -> None:
    script = Script(NoStreamResponseError(), None, create_error=NatsTimeoutError())
    assert await _run(script, 5) is None
    assert (script.tries, script.creations) == (2, 1)


async def test_a_creation_that_hangs_is_given_up_and_the_write_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(js_retry, "CREATE_WAIT", 0.2)
    script = Script(NoStreamResponseError(), NoStreamResponseError(), None, create_hangs=True)
    started = time.monotonic()
    assert await _run(script, 5) is None
    assert time.monotonic() - started < 2
    assert (script.tries, script.creations) == (3, 1)


async def test_a_write_that_never_lands_returns_its_last_error_by_the_deadline() -> None:
    last = NatsTimeoutError()
    script = Script(*([NoStreamResponseError()] * 5), last, *([last] * 100))
    started = time.monotonic()
    assert await _run(script, 1.5) is last
    took = time.monotonic() - started
    assert 1.5 - RETRY_FLOOR - 0.1 <= took <= 1.5 + 0.5
    assert script.creations == 1
    assert 3 <= script.tries <= 10  # the backoff's pauses, then one every RETRY_FLOOR


async def test_a_deadline_already_spent_allows_the_first_try_only() -> None:
    script = Script(NatsTimeoutError())
    assert isinstance(await _run(script, 0.0), NatsTimeoutError)
    assert script.tries == 1


@pytest.mark.parametrize("error", [NatsTimeoutError(), TimeoutError()])
async def test_timeouts_are_retried_without_creating_the_stream(error: Exception) -> None:
    script = Script(error, None)
    assert await _run(script, 5) is None
    assert (script.tries, script.creations) == (2, 0)
