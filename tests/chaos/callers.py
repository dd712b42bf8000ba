"""The load: concurrent callers, each sending requests with unique ids through pexec and polls.

A caller posts `{"id": ...}` with `NVCF-POLL-SECONDS`, follows every 202 by polling
`/v2/nvcf/pexec/status/{nvcf-reqid}` and classifies the final answer (`classify.classify_answer`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from chaos.classify import Answer, Outcome, RequestClass, classify_answer

__all__ = ["LoadSettings", "Target", "run_load"]

_RETRY_PAUSE_S = 0.2
_MAX_ATTEMPTS = 200  # connection attempts per HTTP call (refused while a process restarts)
_MAX_POLLS = 100


@dataclass(frozen=True)
class Target:
    """Where the callers send: the platform's base URL, the function and the API key."""

    base_url: str
    function_id: str
    api_key: str


@dataclass(frozen=True)
class LoadSettings:
    """How hard the callers push: `concurrency` callers, `poll_seconds` per call and status poll,
    `deadline_s` for each request from its first POST to its final answer. A caller that got a
    clean failure waits `failure_pause_s` before its next request, as a client backs off after
    a 503: without it, a fast refusal burns through the rest of the load while a process is down,
    and nothing is learnt about the stack once it is back."""

    concurrency: int = 16
    poll_seconds: int = 5
    deadline_s: float = 60.0
    failure_pause_s: float = 0.5


class _Lost(Exception):
    """No final answer: the deadline passed, or a POST's connection dropped with no status."""


async def run_load(
    target: Target,
    request_ids: Sequence[str],
    settings: LoadSettings,
    outcomes: list[Outcome],
    on_done: Callable[[int], None] = lambda done: None,
) -> None:
    """Send every id once, `settings.concurrency` at a time; each outcome is appended to
    `outcomes` as it is known (so a cancelled load keeps what it has) and `on_done` hears the
    count so far."""
    pending = iter(request_ids)
    connector = aiohttp.TCPConnector(limit=settings.concurrency * 2, force_close=True)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def caller() -> None:
            for request_id in pending:
                outcome = await _invoke(session, target, request_id, settings)
                outcomes.append(outcome)
                on_done(len(outcomes))
                if outcome.kind is RequestClass.CLEAN_FAILURE:
                    await asyncio.sleep(settings.failure_pause_s)

        async with asyncio.TaskGroup() as group:
            for _ in range(settings.concurrency):
                group.create_task(caller())


async def _invoke(
    session: aiohttp.ClientSession, target: Target, request_id: str, settings: LoadSettings
) -> Outcome:
    """One request from its POST to its final answer, within its deadline. A refused connection
    is retried (nothing was sent); a poll is retried on any connection failure (a GET), a POST
    whose connection drops after sending is lost: nobody can tell whether it will run."""
    started = time.monotonic()
    deadline = started + settings.deadline_s
    headers = {
        "Authorization": f"Bearer {target.api_key}",
        "Content-Type": "application/json",
        "NVCF-POLL-SECONDS": str(settings.poll_seconds),
    }
    url = f"{target.base_url}/v2/nvcf/pexec/functions/{target.function_id}"
    body = json.dumps({"id": request_id}).encode()
    polls = 0
    reqid: str | None = None
    try:
        answer = await _call(session, "POST", url, body, headers, deadline, retry_dropped=False)
        while answer.status == 202 and polls < _MAX_POLLS:
            reqid = answer.headers.get("nvcf-reqid")
            if not reqid:
                break  # classified as wrong: a 202 nobody can poll
            polls += 1
            status_url = f"{target.base_url}/v2/nvcf/pexec/status/{reqid}"
            answer = await _call(session, "GET", status_url, None, headers, deadline)
    except _Lost as lost:
        ended = time.monotonic()
        return Outcome(
            request_id, RequestClass.LOST, None, ended - started, polls, reqid, str(lost), ended
        )
    ended = time.monotonic()
    kind, detail = classify_answer(request_id, answer)
    reqid = answer.headers.get("nvcf-reqid") or reqid
    return Outcome(request_id, kind, answer.status, ended - started, polls, reqid, detail, ended)


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    deadline: float,
    *,
    retry_dropped: bool = True,
) -> Answer:
    """One HTTP call, its body read in full; raises `_Lost` at the deadline or on a dropped
    connection (unless `retry_dropped`)."""
    last_error = "no attempt"
    for _ in range(_MAX_ATTEMPTS):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=remaining),
            ) as response:
                content = await response.read()
                lower = {name.lower(): value for name, value in response.headers.items()}
                return Answer(response.status, lower, content)
        except aiohttp.ClientConnectorError as error:
            last_error = f"{method} refused: {error}"
        except TimeoutError:
            raise _Lost(f"no final answer within its deadline ({method} pending)") from None
        except aiohttp.ClientError as error:
            if not retry_dropped:
                why = f"{type(error).__name__}: {error}"[:100]
                raise _Lost(f"{method} connection dropped with no status: {why}") from None
            last_error = f"{method} dropped: {type(error).__name__}"
        await asyncio.sleep(min(_RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))
    raise _Lost(f"no final answer within its deadline (last: {last_error})")
