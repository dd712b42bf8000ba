"""Status polls of one request: `rq_polling.<reqid>` requests, answered at once, queued in order (§6).

The platform waits only 10 s for the empty reply that says "the worker took this poll", so the
reply goes out as each poll arrives; serving the poll (a new attach answer) comes later.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nvcf_sidecar.protocol import (
    MalformedMessage,
    MissingAttachConfig,
    WorkerInvokeFunctionRequest,
    decode_invoke_request,
    first_http1_config,
    polling_subject,
)
from nvcf_sidecar.worker.attach import AttachClient, AttachFactory
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = [
    "FLUSH_TIMEOUT_SECONDS",
    "PollSubscribeFailed",
    "PollSubscription",
    "PollTimeout",
    "confirm_interest",
    "next_usable_poll",
]

FLUSH_TIMEOUT_SECONDS: Final = 5
"""How long subscribing (and unsubscribing) waits for the NATS server to confirm it."""


async def confirm_interest(nc: NATS) -> None:
    """Return once the server has processed every subscription `nc` sent so far.

    One `flush()` is not enough with nats-py: it writes its PING straight to the socket while a
    just-made SUB may still wait in the client's pending buffer, so the PONG can come back before
    the server knows the subscription (a poll then gets "no responders"). By the time the first
    PONG arrives the flusher has written the buffer, so the second PING follows the SUB.
    """
    await nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
    await nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)


class PollTimeout(WorkerError):
    """No status poll arrived for a request within the time allowed."""

    def __init__(self, request_id: str, timeout: float) -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(f"no status poll for request {request_id} within {timeout:g} s")


class PollSubscribeFailed(WorkerError):
    """The subscription to a request's polling subject could not be confirmed by the server."""

    def __init__(self, subject: str, cause: BaseException) -> None:
        self.subject = subject
        self.cause = cause
        super().__init__(f"cannot subscribe to {subject}: {type(cause).__name__}: {cause}")


class PollSubscription:
    """Takes the status polls of one request for the life of its `async with` block.

    Entering subscribes to `rq_polling.<reqid>` (no queue group) and waits until the server
    has the interest, so enter before the first 202 is sent. Each valid poll is answered with
    an empty reply the moment it arrives, counted as `polls{result="taken"}` and queued;
    `next_poll` hands them out oldest first. A payload that is not a `WorkerInvokeFunctionRequest`
    for this request, or a message with no reply subject, is logged, counted as
    `polls{result="malformed"}` and skipped without a reply (the platform then answers its
    caller 504). A reply that cannot be sent is counted as `polls{result="reply_failed"}` and
    the poll skipped: the platform has given up on it. A copy of a poll already taken (the
    platform asks again when a reply was slow or lost) is replied to, counted as
    `polls{result="repeated"}` and not queued again.

    When a caller polls twice before the first poll is served, both are queued; the older one's
    attach token may already be dead on the platform (its caller got a 504), which surfaces as
    a failed attach when that poll is answered. Leaving the block unsubscribes; polls still
    queued are dropped (logged).
    """

    def __init__(
        self,
        nc: NATS,
        request_id: str,
        *,
        metrics: WorkerMetrics,
        log: logging.LoggerAdapter[Any],
    ) -> None:
        self._nc = nc
        self._request_id = request_id
        self._subject = polling_subject(request_id)  # InvalidSubjectToken for an unusable id
        self._metrics = metrics
        self._log = log
        self._polls: asyncio.Queue[WorkerInvokeFunctionRequest] = asyncio.Queue()
        self._taken: set[bytes] = set()
        """The payloads of the polls taken: each carries its own tokens, so a copy is a repeat."""
        self._subscription: Subscription | None = None

    @property
    def subject(self) -> str:
        """The subject polls arrive on."""
        return self._subject

    @property
    def pending(self) -> int:
        """Polls taken (already replied to) and not yet handed out by `next_poll`."""
        return self._polls.qsize()

    async def __aenter__(self) -> PollSubscription:
        if self._subscription is not None:
            raise RuntimeError("PollSubscription is already entered")
        try:
            subscription = await self._nc.subscribe(self._subject, cb=self._on_poll)
        except Exception as error:  # closed or draining connection
            raise PollSubscribeFailed(self._subject, error) from error
        try:
            await confirm_interest(self._nc)
        except Exception as error:
            await _unsubscribe(subscription, self._log)
            raise PollSubscribeFailed(self._subject, error) from error
        self._subscription = subscription
        self._log.debug("subscribed to status polls", extra={"subject": self._subject})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        if not self._nc.is_closed:
            await _unsubscribe(subscription, self._log)
            try:
                # So that once the block is left the server knows: later polls get no responders.
                await self._nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
            except Exception as error:
                self._log.warning("could not confirm the poll unsubscription: %s", error)
        if not self._polls.empty():
            self._log.warning(
                "%d status poll(s) taken but never served",
                self._polls.qsize(),
                extra={"subject": self._subject},
            )

    # The deadline is part of the call, not the caller's scope: it is the worker's §6 wait.
    async def next_poll(self, timeout: float) -> WorkerInvokeFunctionRequest:  # noqa: ASYNC109
        """The oldest poll not yet handed out, waiting up to `timeout` seconds for one.

        Raises `PollTimeout` when none arrives in time. Cancelling the wait loses nothing: a
        poll that arrives meanwhile stays queued for the next call.
        """
        if self._subscription is None:
            raise RuntimeError("PollSubscription is not entered; use `async with`")
        if not self._polls.empty():
            return self._polls.get_nowait()
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                return await self._polls.get()
        except TimeoutError:
            raise PollTimeout(self._request_id, timeout) from None

    async def _on_poll(self, msg: Msg) -> None:
        """Runs for each message on the subject; never raises (it runs in the NATS client)."""
        reason = None
        poll: WorkerInvokeFunctionRequest | None = None
        try:
            poll = decode_invoke_request(msg.data)
        except MalformedMessage as error:
            reason = str(error)
        else:
            if poll.requestId != self._request_id:
                reason = f"it is for request {poll.requestId!r}"
        if reason is None and not msg.reply:
            reason = "it has no reply subject (published, not requested)"
        if reason is not None or poll is None:
            self._metrics.polls.labels("malformed").inc()
            self._log.warning("status poll skipped: %s", reason, extra={"subject": msg.subject})
            return
        try:
            # Empty and without headers, as NVIDIA's worker replies; any reply means "taken".
            await self._nc.publish(msg.reply, b"")
        except Exception as error:
            self._metrics.polls.labels("reply_failed").inc()
            self._log.warning("status poll not acknowledged, skipped: %s", error)
            return
        if msg.data in self._taken:
            # The platform asked again (it may have lost the first during a node loss): the
            # reply above answers it; the poll is queued once.
            self._metrics.polls.labels("repeated").inc()
            self._log.debug("status poll repeated; taken once")
            return
        self._taken.add(msg.data)
        self._metrics.polls.labels("taken").inc()
        self._polls.put_nowait(poll)
        self._log.debug("status poll taken", extra={"pending": self._polls.qsize()})


async def _unsubscribe(subscription: Subscription, log: logging.LoggerAdapter[Any]) -> None:
    try:
        await asyncio.wait_for(subscription.unsubscribe(), FLUSH_TIMEOUT_SECONDS)
    except Exception as error:  # closed, draining or reconnecting connection: nothing to undo
        log.warning("could not unsubscribe from status polls: %s", error)


async def next_usable_poll(
    polls: PollSubscription,
    timeout: float,  # noqa: ASYNC109 - the §6 deadline for the next poll, not a call timeout
    new_attach: AttachFactory,
    log: logging.LoggerAdapter[Any],
) -> tuple[WorkerInvokeFunctionRequest, AttachClient] | None:
    """The next poll that can be answered, with its attach client; None after `timeout` s.

    A poll without an HTTP/1 attach config cannot be answered: it is logged and skipped, and
    the wait goes on until the same deadline.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            poll = await polls.next_poll(max(left, 0.0))
        except PollTimeout:
            log.warning(
                "no status poll within %g s: the caller is gone, the result is dropped", timeout
            )
            return None
        try:
            config = first_http1_config(poll)
        except MissingAttachConfig as error:
            log.error("status poll cannot be answered: %s", error)
            continue
        return poll, new_attach(config)
