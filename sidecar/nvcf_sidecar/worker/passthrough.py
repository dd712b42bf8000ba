"""Passthrough mode: the container's response relayed to the platform as it streams (§5.2 step 6).

Any status and any length, SSE and full duplex included: the head is re-encoded without hop-by-hop
headers, the body bytes go out unchanged, chunk by chunk, as they arrive from the container.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from nats.aio.client import Client as NatsClient

from nvcf_sidecar.protocol import WorkerInvokeFunctionRequest, encode_response_head
from nvcf_sidecar.worker.attach import AttachClient, AttachError, AttachFactory
from nvcf_sidecar.worker.deadline import answer_deadline, item_budget
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.forward import (
    ContainerCall,
    ContainerCallError,
    ContainerResponse,
    container_failure_problem,
)
from nvcf_sidecar.worker.gate import ContainerGate
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.polling import PollSubscribeFailed, PollSubscription, next_usable_poll

__all__ = [
    "SMALL_BODY_BYTES",
    "ContainerBodyBroken",
    "Polling",
    "relay_response",
    "serve_passthrough",
]

#: Container bodies up to this declared length are posted in one piece, larger ones streamed.
SMALL_BODY_BYTES = 64 * 1024


class ContainerBodyBroken(WorkerError):
    """The container's response body broke off after its head had been relayed."""

    def __init__(self, relayed: int, cause: BaseException) -> None:
        self.relayed = relayed
        self.cause = cause
        super().__init__(
            f"the container's response body broke off after {relayed} bytes: "
            f"{type(cause).__name__}: {cause}"
        )


@dataclass(frozen=True, slots=True)
class Polling:
    """What a passthrough request needs to follow a container's 202 with status polls (§6)."""

    nats: NatsClient
    request_id: str
    target: float
    """The caller's poll seconds: each next poll is awaited max(2 x target, 10 s)."""
    new_attach: AttachFactory
    make_poll_call: Callable[[WorkerInvokeFunctionRequest], ContainerCall]


async def serve_passthrough(
    call: ContainerCall,
    *,
    gate: ContainerGate,
    deadline: float | None,
    attach: AttachClient,
    metrics: WorkerMetrics,
    log: logging.LoggerAdapter[Any],
    polling: Polling | None = None,
) -> Outcome:
    """Call the container and stream whatever it answers to POST attach.

    Raises `ContainerCallError` when no response head arrives (the caller answers with a
    problem); every later failure is an `Outcome`. The container connection is closed on the
    way out unless its response was read to the end. With `polling`, a 202 from the container
    keeps the request: each status poll is sent to the container as a new request and its
    answer relayed, until one is not a 202. A container that refuses the connection holds the
    call until it is back or `deadline` (`time.monotonic()`) passes (see `gate`).
    """
    started = time.monotonic()
    response = await gate.open(call, deadline=deadline, log=log)
    metrics.container_latency.observe(time.monotonic() - started)
    polls: PollSubscription | None = None
    async with contextlib.AsyncExitStack() as stack:
        while True:
            try:
                log.debug(
                    "container answered",
                    extra={"status": response.status, "content_length": response.content_length},
                )
                if polling is not None and response.status == 202 and polls is None:
                    # Subscribed before the 202 leaves, so no poll can arrive unheard. If that
                    # fails the 202 is relayed anyway (the container chose it) and not followed.
                    try:
                        polls = await stack.enter_async_context(
                            PollSubscription(
                                polling.nats, polling.request_id, metrics=metrics, log=log
                            )
                        )
                    except PollSubscribeFailed as error:
                        log.error("cannot take status polls: %s", error)
                outcome = await relay_response(
                    response, call.method, attach=attach, metrics=metrics, log=log
                )
            finally:
                response.close()
            if polling is None or polls is None or response.status != 202:
                return outcome
            if outcome is not Outcome.DELIVERED:
                return outcome
            metrics.accepted.labels("container").inc()
            taken = await next_usable_poll(
                polls, max(2 * polling.target, 10.0), polling.new_attach, log
            )
            if taken is None:
                return Outcome.CANCELLED
            poll, attach = taken
            call = polling.make_poll_call(poll)
            budget = item_budget(poll, [(kv.key, kv.value) for kv in poll.requestHeaders])
            try:
                response = await gate.open(call, deadline=answer_deadline(budget), log=log)
            except ContainerCallError as error:
                log.error("no response from the container to a status poll: %s", error)
                source, detail = container_failure_problem(error.cause)
                try:
                    await attach.send_problem(source, 500, detail)
                except AttachError as failure:
                    metrics.attach_errors.labels("post").inc()
                    log.error("problem response not delivered: %s", failure)
                    return Outcome.ATTACH_ERROR
                return Outcome.CONTAINER_ERROR


async def relay_response(
    response: ContainerResponse,
    method: str,
    *,
    attach: AttachClient,
    metrics: WorkerMetrics,
    log: logging.LoggerAdapter[Any],
) -> Outcome:
    """POST `response` to the platform as HTTP/1.1 bytes: its head, then its body as it arrives.

    The inner head carries Content-Length when the container declared one (the outer POST then
    has head + body length), never a Transfer-Encoding. A body that breaks off aborts the POST,
    so the platform sees a truncated response rather than a short one that looks complete.
    """
    declared = response.content_length
    headers = list(response.headers.items())
    body: bytes | _ContainerBody
    if method == "HEAD" or response.status in (204, 304) or response.status < 200:
        # No body follows, whatever the head says; a HEAD or 304 keeps its declared length.
        keep = declared if method == "HEAD" or response.status == 304 else None
        head = encode_response_head(
            response.status, headers, content_length=keep, reason=response.reason
        )
        body = b""
    elif declared is not None and declared <= SMALL_BODY_BYTES:
        # A small body is read whole and posted with its head in one write: two sends fewer,
        # no latency added (it arrives with the head). Nothing was relayed yet if it breaks.
        try:
            body = await response.read()
        except (aiohttp.ClientError, OSError) as error:
            raise ContainerCallError(error) from error
        head = encode_response_head(
            response.status, headers, content_length=len(body), reason=response.reason
        )
    else:
        head = encode_response_head(
            response.status, headers, content_length=declared, reason=response.reason
        )
        body = _ContainerBody(response)
    try:
        await attach.send_response(head, body, body_length=declared)
    except AttachError as error:
        if isinstance(body, _ContainerBody) and body.error is not None:
            log.warning("relay cut short: %s", body.error)
            return Outcome.CONTAINER_ERROR
        metrics.attach_errors.labels("post").inc()
        log.error("response not delivered: %s", error)
        return Outcome.ATTACH_ERROR
    log.debug("response delivered", extra={"status": response.status})
    return Outcome.DELIVERED


class _ContainerBody:
    """The container's response body as an async iterable; remembers how it broke off."""

    def __init__(self, response: ContainerResponse) -> None:
        self._response = response
        self.relayed = 0
        self.error: ContainerBodyBroken | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            # iter_any hands over whatever arrived, so SSE events are not held back.
            async for chunk in self._response.content.iter_any():
                self.relayed += len(chunk)
                yield chunk
        except (aiohttp.ClientError, OSError) as error:
            self.error = ContainerBodyBroken(self.relayed, error)
            raise self.error from error
