"""Handing one work item to a worker and waiting for its answer: the core of pexec, exec and polls.

Mints the attach tokens, queues the item (or, for a status poll, requests it on `rq_polling.<reqid>`),
waits for the worker's POST attach, and keeps the tracking stream in step (reference §5.1, §6).
While NATS is down callers are answered 503 with Retry-After: at once, or after the outage grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

from aiohttp import web
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from nvcf_platform.control.registry import FunctionVersion
from nvcf_platform.errors import (
    NatsUnavailable,
    PlatformError,
    PublishFailed,
    QueueFull,
    WorkerResponseFailed,
)
from nvcf_platform.invocation.background import BackgroundTasks
from nvcf_platform.invocation.nats_link import NatsLink
from nvcf_platform.invocation.problems import problem_response, unavailable_response
from nvcf_platform.invocation.relay import gateway_timeout
from nvcf_platform.invocation.tokens import AttachTokens, RequestBody, ResponseSlot, WorkerResponse
from nvcf_platform.invocation.tracking import RequestTracking, TrackingFailed
from nvcf_platform.invocation.workqueue import WorkQueue
from nvcf_sidecar.cancellation import raise_if_cancelled
from nvcf_sidecar.protocol import (
    MAX_DIRECT_RESPONSE_BYTES,
    POLL_GRACE_SECONDS,
    POLL_REPLY_TIMEOUT_SECONDS,
    Header,
    InputAssetReference,
    MessageTooLarge,
    WorkerInvokeFunctionRequest,
    attach_config,
    encode_invoke_request,
    polling_subject,
)

__all__ = [
    "POLL_NOT_ACKNOWLEDGED",
    "InvocationRefused",
    "Outcome",
    "WorkerExchange",
    "refused",
    "unavailable",
]

POLL_NOT_ACKNOWLEDGED: Final = "worker did not acknowledge the status request."
"""Detail of the 504 problem when no worker replied on `rq_polling.<reqid>` in time."""
POLL_SUBSCRIBER_WAIT: Final = 3.0
"""How long a status poll that finds no worker subscribed is asked again before its 504: a worker
whose NATS node died is back on another within about a second."""
POLL_SUBSCRIBER_RETRY: Final = 0.1
"""Pause between those asks."""
POLL_TRY_SECONDS: Final = 5.0
"""How long one ask of a status poll waits for the worker's reply before the poll is sent again
(a worker replies on receipt, in milliseconds; within `POLL_REPLY_TIMEOUT_SECONDS` in all)."""
WITHDRAW_WAIT: Final = 60.0
"""How long the withdrawal of a request answered 503 waits for NATS to come back (not at
shutdown: then it gives up at once)."""

Outcome = WorkerResponse | web.Response
"""What a wait ends with: the worker's response, or the platform's own answer that stands in for
one (the empty 504, or a status poll's 404/504 problem). The exec wrapper wraps either."""

_log = logging.getLogger(__name__)


class InvocationRefused(PlatformError):
    """The platform answers the caller itself, with `answer` (a problem+json), and no worker answer.

    Unlike an `Outcome` answer, the exec wrapper passes it through unwrapped, as NVIDIA's does.
    """

    def __init__(self, answer: web.Response, reason: str) -> None:
        self.answer = answer
        self.reason = reason
        super().__init__(f"{answer.status}: {reason}")


def refused(status: int, detail: str | None = None) -> InvocationRefused:
    """An `InvocationRefused` answering a problem with this status and detail."""
    return InvocationRefused(problem_response(status, detail), detail or str(status))


def unavailable(error: NatsUnavailable) -> InvocationRefused:
    """An `InvocationRefused` answering the 503 problem (with Retry-After) for NATS being down."""
    return InvocationRefused(unavailable_response(error.reason), error.reason)


class WorkerExchange:
    """Everything between a parsed invocation and the worker's response head, for one region."""

    __slots__ = (
        "_background",
        "_base_url",
        "_grpc_url",
        "_link",
        "_nca_id",
        "_queue",
        "_subject",
        "_tokens",
        "_tracking",
    )

    def __init__(
        self,
        *,
        link: NatsLink,
        queue: WorkQueue,
        tracking: RequestTracking,
        tokens: AttachTokens,
        background: BackgroundTasks,
        nca_id: str,
        subject: str,
        base_url: str,
        grpc_url: str,
    ) -> None:
        self._link = link
        self._queue = queue
        self._tracking = tracking
        self._tokens = tokens
        self._background = background
        self._nca_id = nca_id
        self._subject = subject
        self._base_url = base_url
        self._grpc_url = grpc_url

    @property
    def region(self) -> str:
        """The platform's region: queue streams, tracking records, `nvcf-invocation-region`."""
        return self._queue.region

    @property
    def nca_id(self) -> str:
        """The callers' NCA id (work items' `ncaId`; object-store keys)."""
        return self._nca_id

    def work_item(
        self,
        version: FunctionVersion,
        request_id: str,
        *,
        method: str,
        headers: Sequence[Header],
        body: bytes | None,
        assets: Sequence[InputAssetReference] = (),
        large_response_url: str = "",
    ) -> WorkerInvokeFunctionRequest:
        """A work item without its attach config (reference §3.1); `requestTime` is now.

        `body` None leaves `requestBody` absent, as on status polls; b"" sets it empty.
        """
        item = WorkerInvokeFunctionRequest(
            requestId=request_id,
            ncaId=self._nca_id,
            subject=self._subject,
            largeResponseUrl=large_response_url,
            maxDirectResponseSizeBytes=MAX_DIRECT_RESPONSE_BYTES,
            directResponseUrl=self._grpc_url,
            requestMethod=method,
            requestPath=version.invocation_path,
        )
        if body is not None:
            item.requestBody = body
        item.requestTime.FromNanoseconds(time.time_ns())
        add_header = item.requestHeaders.add  # a third cheaper than extending with new StringKVs
        for name, value in headers:
            add_header(key=name, value=value)
        if assets:
            item.inputAssetReference.extend(assets)
        return item

    @asynccontextmanager
    async def invoke(
        self,
        version: FunctionVersion,
        item: WorkerInvokeFunctionRequest,
        rest: RequestBody | None,
        poll_seconds: int,
    ) -> AsyncIterator[Outcome]:
        """Queue an initial work item and yield the worker's response (or the empty 504).

        Raises `InvocationRefused` (429 queue full, 500 not queued, unreadable POST attach or
        tracking failure, 503 while NATS is down or once it was down for the outage grace).
        No answer within poll + 2 s: cancel broadcast and purge, then the 504. A 202 is tracked
        before it is yielded. Tokens and the caller's body live until the `async with` block
        ends; a caller leaving while waiting, or answered 503, withdraws the request.
        """
        request_id = item.requestId
        extra = _extra(version, request_id)
        slot = self._tokens.mint_response(request_id)
        request_token = None if rest is None else self._tokens.mint_request(rest)
        try:
            item.statelessConfig.CopyFrom(
                attach_config(self._base_url, slot.token, request_token=request_token)
            )
            try:
                payload = encode_invoke_request(item)
                await self._queue.publish(version.function_version_id, request_id, payload)
            except NatsUnavailable as error:
                _log.warning("work item not queued: NATS is down", extra=extra)
                raise unavailable(error) from None
            except QueueFull as error:
                _log.warning("work queue full", extra=extra)
                raise refused(429, error.description) from None
            except (MessageTooLarge, PublishFailed, NatsError) as error:
                _log.error("work item not queued", extra={**extra, "error": str(error)})
                raise refused(500, f"failed to send nats request; cause: {error}") from None
            _log.debug("invocation queued", extra={**extra, "poll_seconds": poll_seconds})
            outcome: Outcome
            try:
                worker = await self._wait(slot, poll_seconds)
            except TimeoutError:
                _log.warning("no worker response in time", extra=extra)
                if self._link.up:
                    await self._queue.withdraw(version.function_version_id, request_id)
                else:
                    self._withdraw_later(version, request_id)
                outcome = gateway_timeout(request_id)
            except WorkerResponseFailed as error:
                self._withdraw_later(version, request_id)
                raise refused(500, error.detail) from None
            except NatsUnavailable as error:
                _log.warning("caller answered 503", extra={**extra, "reason": str(error)})
                self._withdraw_later(version, request_id)
                raise unavailable(error) from None
            except asyncio.CancelledError:
                _log.info("caller left before the response", extra=extra)
                self._withdraw_later(version, request_id)
                raise
            else:
                # DEBUG: one line per request is the sidecar's ("request finished", INFO).
                _log.debug("worker responded", extra={**extra, "status": worker.status})
                if worker.status == 202:
                    try:
                        await self._track(version, request_id, item.requestTime.ToNanoseconds())
                    except InvocationRefused:
                        self._withdraw_later(version, request_id)
                        raise
                outcome = worker
            yield outcome
        finally:
            self._tokens.revoke(slot.token)
            self._tokens.revoke(request_token)
            slot.abandon()
            if rest is not None:
                await rest.close()

    @asynccontextmanager
    async def poll(
        self,
        version: FunctionVersion,
        item: WorkerInvokeFunctionRequest,
        poll_seconds: int,
        *,
        request_time_ns: int | None,
    ) -> AsyncIterator[Outcome]:
        """Send a status-poll item on `rq_polling.<reqid>` and yield what answers it.

        No worker replying within 10 s (or none subscribed): the 504 problem
        `POLL_NOT_ACKNOWLEDGED`, record kept. No POST attach within poll + 2 s: the empty 504,
        record purged, no cancel. A 202 refreshes the record (`request_time_ns` is the original
        invocation's); any other answer purges it, so the result is fetched once. Raises
        `InvocationRefused`: 500 when NATS fails otherwise or the POST attach is unreadable, 503
        while NATS is down or once it was down for the outage grace (record kept).
        """
        request_id = item.requestId
        extra = _extra(version, request_id)
        slot = self._tokens.mint_response(request_id)
        try:
            item.statelessConfig.CopyFrom(attach_config(self._base_url, slot.token))
            outcome: Outcome
            if not await self._request_poll(item, extra):
                outcome = problem_response(504, POLL_NOT_ACKNOWLEDGED)
            else:
                try:
                    worker = await self._wait(slot, poll_seconds)
                except TimeoutError:
                    _log.warning("no worker response to the poll in time", extra=extra)
                    await self._forget(request_id, extra)
                    outcome = gateway_timeout(request_id)
                except WorkerResponseFailed as error:
                    raise refused(500, error.detail) from None
                except NatsUnavailable as error:
                    _log.warning("poll answered 503", extra={**extra, "reason": str(error)})
                    raise unavailable(error) from None
                except asyncio.CancelledError:
                    _log.info("caller left before the poll response", extra=extra)
                    raise
                else:
                    _log.info("worker answered the poll", extra={**extra, "status": worker.status})
                    if worker.status == 202:
                        await self._track(version, request_id, request_time_ns)
                    else:
                        await self._forget(request_id, extra)
                    outcome = worker
            yield outcome
        finally:
            self._tokens.revoke(slot.token)
            slot.abandon()

    async def _wait(self, slot: ResponseSlot, poll_seconds: int) -> WorkerResponse:
        """The worker's response head within poll + 2 s; the response token dies either way.

        The answer comes over HTTP, so an outage shorter than the grace changes nothing; a longer
        one (or shutdown) fails the slot with `NatsUnavailable` (`AttachTokens.give_up`).
        """
        try:
            raise_if_cancelled()  # a caller gone while a NATS call swallowed the cancel
            if (reason := self._link.gave_up) is not None:
                raise NatsUnavailable(reason)
            async with asyncio.timeout(poll_seconds + POLL_GRACE_SECONDS):
                return await slot.wait()
        finally:
            self._tokens.revoke(slot.token)

    async def _request_poll(self, item: WorkerInvokeFunctionRequest, extra: dict[str, str]) -> bool:
        """Whether a worker took the poll (any reply) within `POLL_REPLY_TIMEOUT_SECONDS`.

        Asked again, the same poll, when a node loss may have lost it: after no reply for
        `POLL_TRY_SECONDS` (routes still pointing at a dead node swallow it), and every
        `POLL_SUBSCRIBER_RETRY` seconds while nobody is subscribed, up to `POLL_SUBSCRIBER_WAIT`
        (a worker whose node died subscribes again once it reconnected to another). The sidecar
        takes a repeated poll once; NVIDIA's worker would also serve a copy it got after a reply
        slower than `POLL_TRY_SECONDS` (docs/platform.md).
        """
        payload = encode_invoke_request(item)
        subject = polling_subject(item.requestId)
        started = time.monotonic()
        deadline = started + POLL_REPLY_TIMEOUT_SECONDS
        while True:
            left = deadline - time.monotonic()
            try:
                self._link.require()
                await self._link.client.request(
                    subject, payload, timeout=max(0.05, min(POLL_TRY_SECONDS, left))
                )
            except NatsUnavailable as error:
                raise unavailable(error) from None
            except NoRespondersError as error:
                if self._link.up and time.monotonic() - started < POLL_SUBSCRIBER_WAIT:
                    await asyncio.sleep(POLL_SUBSCRIBER_RETRY)
                    continue
                return self._poll_not_taken(error, extra)
            except TimeoutError as error:
                if self._link.up and deadline - time.monotonic() > POLL_SUBSCRIBER_RETRY:
                    _log.warning("poll not acknowledged yet; asking again", extra=extra)
                    continue
                return self._poll_not_taken(error, extra)
            except (MessageTooLarge, NatsError) as error:
                _log.error("poll not sent", extra={**extra, "error": repr(error)})
                raise refused(500, f"failed to send nats request; cause: {error}") from None
            _log.debug("poll acknowledged", extra=extra)
            return True

    def _poll_not_taken(self, error: Exception, extra: dict[str, str]) -> bool:
        if not self._link.up:
            raise unavailable(NatsUnavailable("NATS connection lost")) from None
        _log.warning("no worker took the poll", extra={**extra, "error": repr(error)})
        return False

    async def _track(
        self, version: FunctionVersion, request_id: str, request_time_ns: int | None
    ) -> None:
        try:
            await self._tracking.record(
                request_id,
                version.function_id,
                version.function_version_id,
                request_time_ns=request_time_ns,
            )
        except NatsUnavailable as error:
            _log.warning("request not tracked: NATS is down", extra={"request_id": request_id})
            raise unavailable(error) from None
        except TrackingFailed as error:
            _log.error("request not tracked", extra={"request_id": request_id, "error": str(error)})
            raise refused(500, str(error)) from None

    async def _forget(self, request_id: str, extra: dict[str, str]) -> None:
        try:
            await self._tracking.forget(request_id)
        except (NatsUnavailable, TrackingFailed) as error:
            _log.warning("tracking record not purged", extra={**extra, "error": str(error)})

    def _withdraw_later(self, version: FunctionVersion, request_id: str) -> None:
        self._background.spawn(
            self._withdraw_when_connected(version.function_version_id, request_id),
            name=f"withdraw-{request_id}",
        )

    async def _withdraw_when_connected(self, function_version_id: str, request_id: str) -> None:
        """Withdraw once NATS is up (bounded by `WITHDRAW_WAIT`; not at all after shutdown began)."""
        try:
            async with asyncio.timeout(WITHDRAW_WAIT):
                connected = await self._link.wait_connected()
        except TimeoutError:
            connected = False
        if connected:
            await self._queue.withdraw(function_version_id, request_id)
            return
        _log.warning(
            "request not withdrawn: NATS did not come back",
            extra={"request_id": request_id, "function_version_id": function_version_id},
        )


def _extra(version: FunctionVersion, request_id: str) -> dict[str, str]:
    return {
        "request_id": request_id,
        "function_id": version.function_id,
        "function_version_id": version.function_version_id,
    }
