"""Compatibility mode: one request answered by final response, progress or poll budget (§5.2 6-7, §6).

The container call runs in the background. Each time the platform waits for an answer (the
initial request, then every status poll) the sidecar sends whichever comes first: the container's
final response (mapped: errors become problem+json, large bodies and output files become a zip
uploaded to the presigned URL and a 302), a progress update as a 202 with
`NVCF-PERCENT-COMPLETE`, or an empty 202 when the poll budget runs out. After a 202 the request
keeps its slot and its unacked message until a poll takes the final answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import aiohttp
from nats.aio.client import Client as NatsClient

from nvcf_sidecar.protocol import (
    EVENT_STREAM,
    FEATURE_DISABLE_WORKER_COMPATIBILITY,
    INFERENCE_REQUEST_FAILED,
    MAX_DIRECT_RESPONSE_BYTES,
    NVCF_PERCENT_COMPLETE,
    PROBLEM_CONTENT_TYPE,
    WORKER_SERVICE,
    Header,
    PollBudget,
    WorkerInvokeFunctionRequest,
    encode_response_head,
    inference_error_problem,
    worker_problem,
)
from nvcf_sidecar.protocol.limits import CLIENT_GONE_GRACE_SECONDS
from nvcf_sidecar.worker.artifacts import holds_no_outputs, removed_if_empty, scan_artifacts
from nvcf_sidecar.worker.attach import AttachClient, AttachError, AttachFactory
from nvcf_sidecar.worker.deadline import item_budget
from nvcf_sidecar.worker.forward import (
    ContainerCall,
    ContainerCallError,
    ContainerResponse,
    ResponseStream,
    container_failure_problem,
    first_header,
)
from nvcf_sidecar.worker.gate import ContainerGate
from nvcf_sidecar.worker.large import LargeResponseFailed, LargeResponseShipper
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.polling import PollSubscribeFailed, PollSubscription, next_usable_poll
from nvcf_sidecar.worker.progress import ProgressMonitor, ProgressWatch

__all__ = [
    "PROGRESS_ERROR_HEADER",
    "Answer",
    "CompatibilityServices",
    "compatibility_wanted",
    "serve_compatible",
]

PROGRESS_ERROR_HEADER: Final = "NVCF-PROGRESS-ERROR"
"""Carries a rejected progress file's problem (too large, malformed) on the next answer."""

_JSON: Final = "application/json"


def compatibility_wanted(caller: list[Header], disabled_by_config: bool) -> bool:
    """Whether a request is served in compatibility mode (reference §5.2 step 6).

    Not when the caller accepts `text/event-stream` (a stream is relayed as it comes), not when
    `nvcf-feature-disable-worker-compatibility: true` (TLB), not when the sidecar runs with
    `V3_BACKWARDS_COMPATIBILITY_DISABLED`.
    """
    if disabled_by_config:
        return False
    accept = first_header(caller, "accept")
    if accept is not None and accept.split(";", 1)[0].strip().lower() == EVENT_STREAM:
        return False
    return first_header(caller, FEATURE_DISABLE_WORKER_COMPATIBILITY) != "true"


@dataclass(frozen=True, slots=True)
class CompatibilityServices:
    """What compatibility mode needs beyond the data path: all live as long as the sidecar."""

    progress: ProgressMonitor
    nats: NatsClient
    shipper: LargeResponseShipper


@dataclass(frozen=True, slots=True)
class Answer:
    """One complete response to send over POST attach (compatibility answers are never streamed)."""

    status: int
    headers: list[Header]
    body: bytes = b""
    source: str = "final"
    """`final`, `progress`, `generated` (poll budget spent) or `container` (a container 202)."""
    outcome: Outcome = Outcome.DELIVERED
    """How the request ends if this answer is the last one."""

    @property
    def accepted(self) -> bool:
        return self.status == 202


def _problem(source: str, detail: str, outcome: Outcome, status: int = 500) -> Answer:
    body = worker_problem(source, status, detail)
    return Answer(status, [("Content-Type", PROBLEM_CONTENT_TYPE)], body, outcome=outcome)


_GENERATED: Final = Answer(202, [], source="generated")


@dataclass
class _Request:
    """The mutable state of one compatibility-mode request across its polls."""

    request: WorkerInvokeFunctionRequest
    response_dir: str
    log: logging.LoggerAdapter[Any]
    target: float
    """The caller's poll seconds on the initial request: it sets the wait for each next poll."""
    pending: asyncio.Task[Answer] | None = None
    container_polls: bool = False
    """The container answered 202 itself: each poll is then sent to the container."""


async def serve_compatible(
    call: ContainerCall,
    request: WorkerInvokeFunctionRequest,
    *,
    attach: AttachClient,
    budget: PollBudget,
    response_dir: str,
    services: CompatibilityServices,
    gate: ContainerGate,
    new_attach: AttachFactory,
    make_poll_call: Callable[[WorkerInvokeFunctionRequest], ContainerCall],
    metrics: WorkerMetrics,
    log: logging.LoggerAdapter[Any],
    container_done: Callable[[], None] | None = None,
) -> Outcome:
    """Serve `request` in compatibility mode until its final answer is delivered or given up.

    `make_poll_call` turns a poll into the container call that answers it, for containers that
    answer 202 themselves. `container_done()` is called once the container gave its final
    answer (not a 202 of its own): the request then only waits to deliver it. Never raises
    except `asyncio.CancelledError`; the container call is stopped on the way out.
    """
    state = _Request(request, response_dir, log, target=budget.target)
    with services.progress.watch(request.requestId, response_dir) as watch:
        state.pending = asyncio.create_task(
            _final_answer(call, request, response_dir, services, gate, metrics, log),
            name=f"container {request.requestId}",
        )
        if container_done is not None:
            state.pending.add_done_callback(_when_final(container_done))
        try:
            return await _answer_until_final(
                state,
                attach,
                budget,
                watch,
                services,
                gate,
                new_attach,
                make_poll_call,
                metrics,
            )
        finally:
            if state.pending is not None and not state.pending.done():
                state.pending.cancel()
                with contextlib.suppress(BaseException):
                    await state.pending


async def _answer_until_final(
    state: _Request,
    attach: AttachClient,
    budget: PollBudget,
    watch: ProgressWatch,
    services: CompatibilityServices,
    gate: ContainerGate,
    new_attach: AttachFactory,
    make_poll_call: Callable[[WorkerInvokeFunctionRequest], ContainerCall],
    metrics: WorkerMetrics,
) -> Outcome:
    log = state.log
    polls: PollSubscription | None = None
    async with contextlib.AsyncExitStack() as stack:
        while True:
            answer = await _next_answer(state, budget, watch, log)
            answer = _with_progress_problem(answer, watch)
            if answer.accepted and polls is None:
                # Subscribed before the first 202 leaves, so no poll can arrive unheard.
                try:
                    polls = await stack.enter_async_context(
                        PollSubscription(
                            services.nats, state.request.requestId, metrics=metrics, log=log
                        )
                    )
                except PollSubscribeFailed as error:
                    # A 202 nobody could poll would strand the caller: fail the request now.
                    log.error("cannot take status polls: %s", error)
                    answer = _problem(
                        WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR
                    )
            delivered = await _send(attach, answer, metrics, log)
            if not answer.accepted:
                return answer.outcome if delivered else Outcome.ATTACH_ERROR
            assert polls is not None
            if delivered:
                metrics.accepted.labels(answer.source).inc()
            wait = max(2 * state.target, 10.0)
            if not delivered:
                if budget.shifted > 0:
                    return Outcome.ATTACH_ERROR
                # The platform may have answered its caller with its own 504 in between: a
                # caller still there polls within moments.
                wait = CLIENT_GONE_GRACE_SECONDS
                log.warning("202 not delivered; waiting %g s for a poll", wait)
            taken = await next_usable_poll(polls, wait, new_attach, log)
            if taken is None:
                return Outcome.CANCELLED
            poll, attach = taken
            budget = item_budget(poll, [(kv.key, kv.value) for kv in poll.requestHeaders])
            if state.container_polls and state.pending is None:
                state.pending = asyncio.create_task(
                    _final_answer(
                        make_poll_call(poll),
                        state.request,
                        state.response_dir,
                        services,
                        gate,
                        metrics,
                        log,
                    ),
                    name=f"container poll {state.request.requestId}",
                )


async def _next_answer(
    state: _Request, budget: PollBudget, watch: ProgressWatch, log: logging.LoggerAdapter[Any]
) -> Answer:
    """The first of: the final answer, a progress update, the poll budget running out."""
    if budget.too_late:
        log.error("response target too far in the past (%.1f s left)", budget.shifted)
        return _problem(WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR)
    pending = state.pending
    if pending is not None and pending.done():
        return _take(state)
    update = watch.pending()
    if update is not None:
        return _progress_answer(update.percent, update.body)
    # One future woken by whichever comes first, without a task per wait.
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not woken.done():
            woken.set_result(None)

    timer = loop.call_later(max(budget.shifted, 0.0), wake)
    watch.on_arrival(wake)
    if pending is not None:
        pending.add_done_callback(wake)
    try:
        await woken
    finally:
        timer.cancel()
        watch.forget(wake)
        if pending is not None:
            pending.remove_done_callback(wake)
    if pending is not None and pending.done():
        return _take(state)
    update = watch.pending()
    if update is not None:
        return _progress_answer(update.percent, update.body)
    return _GENERATED  # the budget ran out, or the watch closed (the sidecar stops)


def _when_final(container_done: Callable[[], None]) -> Callable[[asyncio.Task[Answer]], None]:
    def done(task: asyncio.Task[Answer]) -> None:
        if (
            not task.cancelled()
            and task.exception() is None
            and task.result().source != "container"
        ):
            container_done()

    return done


def _take(state: _Request) -> Answer:
    pending, state.pending = state.pending, None
    assert pending is not None
    answer = pending.result()  # _final_answer never raises
    if answer.source == "container":
        state.container_polls = True
    return answer


def _progress_answer(percent: int, body: bytes) -> Answer:
    headers: list[Header] = [("Content-Type", _JSON), (NVCF_PERCENT_COMPLETE, str(percent))]
    return Answer(202, headers, body, source="progress")


def _with_progress_problem(answer: Answer, watch: ProgressWatch) -> Answer:
    problem = watch.take_problem()
    if problem is None:
        return answer
    return replace(answer, headers=[*answer.headers, (PROGRESS_ERROR_HEADER, problem)])


async def _send(
    attach: AttachClient, answer: Answer, metrics: WorkerMetrics, log: logging.LoggerAdapter[Any]
) -> bool:
    head = encode_response_head(answer.status, answer.headers, content_length=len(answer.body))
    try:
        await attach.send_response(head, answer.body)
    except AttachError as error:
        metrics.attach_errors.labels("post").inc()
        log.error("answer %d (%s) not delivered: %s", answer.status, answer.source, error)
        return False
    log.debug("answer delivered", extra={"status": answer.status, "source": answer.source})
    return True


async def _final_answer(
    call: ContainerCall,
    request: WorkerInvokeFunctionRequest,
    response_dir: str,
    services: CompatibilityServices,
    gate: ContainerGate,
    metrics: WorkerMetrics,
    log: logging.LoggerAdapter[Any],
) -> Answer:
    """Call the container and map its response (§5.2 step 7). Never raises but CancelledError.

    A refused connection is held until the container is back (no deadline: the poll loop around
    it answers 202s meanwhile and cancels this call when the request ends).
    """
    started = time.monotonic()
    try:
        response = await gate.open(call, deadline=None, log=log)
    except ContainerCallError as error:
        log.error("no response from the container: %s", error)
        source, detail = container_failure_problem(error.cause)
        return _problem(source, detail, Outcome.CONTAINER_ERROR)
    try:
        metrics.container_latency.observe(time.monotonic() - started)
        return await _map_response(response, request, response_dir, services, metrics, log)
    except (aiohttp.ClientError, OSError) as error:
        log.error("the container's response broke off: %s", error)
        return _problem(WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.CONTAINER_ERROR)
    except LargeResponseFailed:
        # Already logged and counted by the shipper.
        return _problem(WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR)
    except Exception:
        log.exception("unexpected failure while mapping the container's response")
        return _problem(WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR)
    finally:
        response.close()


async def _map_response(
    response: ContainerResponse,
    request: WorkerInvokeFunctionRequest,
    response_dir: str,
    services: CompatibilityServices,
    metrics: WorkerMetrics,
    log: logging.LoggerAdapter[Any],
) -> Answer:
    # proto3 cannot tell 0 from unset; NVIDIA's IS always sends 5 MiB, so unset means that.
    limit = request.maxDirectResponseSizeBytes or MAX_DIRECT_RESPONSE_BYTES
    buffered = await _read_up_to(response.content, limit + 1)
    headers = list(response.headers.items())
    if response.status >= 400:
        body = inference_error_problem(response.status, buffered)
        log.info("container answered %d; relayed as a problem", response.status)
        return Answer(response.status, [("Content-Type", PROBLEM_CONTENT_TYPE)], body)
    # A final answer's empty directory goes at once (one rmdir); a 202's stays for the
    # container's further writes.
    final = response.status != 202
    artifacts = (
        []
        if (final and removed_if_empty(response_dir)) or holds_no_outputs(response_dir)
        else await asyncio.to_thread(scan_artifacts, response_dir, log=log, metrics=metrics)
    )
    if len(buffered) > limit or artifacts:
        reason = f"body over {limit} bytes" if len(buffered) > limit else "output files"
        log.info("large response (%s, %d file(s))", reason, len(artifacts))
        url = await services.shipper.ship(
            request, _rest(buffered, response.content), artifacts, log=log
        )
        return Answer(302, [("Location", url)])
    source = "final" if final else "container"
    return Answer(response.status, headers, buffered, source=source)


async def _read_up_to(stream: ResponseStream, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _rest(first: bytes, stream: ResponseStream) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in stream.iter_any():
        yield chunk
