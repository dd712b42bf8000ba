"""The status-poll route `GET /v2/nvcf/pexec/status/{requestId}` (reference §6, §11).

Finds the version of a request that answered 202 in the tracking stream, sends its worker a poll
item on `rq_polling.<reqid>` and relays the answer; a final answer ends the request (fetch once).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

from aiohttp import web

from nvcf_platform.control.registry import Registry, canonical_uuid
from nvcf_platform.errors import (
    FunctionNotFound,
    FunctionVersionNotFound,
    NatsUnavailable,
)
from nvcf_platform.invocation.exchange import (
    InvocationRefused,
    Outcome,
    WorkerExchange,
    refused,
    unavailable,
)
from nvcf_platform.invocation.invocation import CallerIdentity, poll_seconds_of, request_headers
from nvcf_platform.invocation.problems import problem_response
from nvcf_platform.invocation.relay import relay_response
from nvcf_platform.invocation.tracking import RequestTracking, TrackingFailed
from nvcf_sidecar.protocol import (
    NVCF_POLL_SECONDS,
    Header,
)

__all__ = ["STATUS_PATH", "StatusEndpoint"]

STATUS_PATH: Final = "/v2/nvcf/pexec/status/{request_id}"

_log = logging.getLogger(__name__)


class StatusEndpoint:
    """The pexec status route, and `poll`, the status-poll core the exec status route shares."""

    def __init__(
        self,
        *,
        registry: Registry,
        callers: CallerIdentity,
        exchange: WorkerExchange,
        tracking: RequestTracking,
    ) -> None:
        self._registry = registry
        self._callers = callers
        self._exchange = exchange
        self._tracking = tracking

    @property
    def exchange(self) -> WorkerExchange:
        """The core that sends poll items and waits for workers (shared with pexec)."""
        return self._exchange

    def register(self, router: web.UrlDispatcher) -> None:
        """Add `GET /v2/nvcf/pexec/status/{request_id}` (no HEAD: a HEAD would consume a poll)."""
        router.add_get(STATUS_PATH, self.status, allow_head=False)

    def authorize(self, request: web.Request) -> str:
        """The polled request id (canonical UUID) after checking the caller's bearer.

        Raises `InvocationRefused`: 400 problem for an id that is not a UUID (NVIDIA's path
        extractor rejects it before anything else), 401 for a bearer that is not accepted.
        """
        text = request.match_info["request_id"]
        request_id = canonical_uuid(text)
        if request_id is None:
            raise refused(400, f"invalid request id {text!r}: not a UUID")
        self._callers.check(request)
        return request_id

    async def status(self, request: web.Request) -> web.StreamResponse:
        """Poll a request that answered 202 and relay what its worker answers now.

        400 for a request id that is not a UUID or a bad NVCF-POLL-SECONDS, 401 for a bearer that
        is not accepted, 404 problem for an unknown (or already fetched) request or a version no
        longer configured, 504 problem when no worker took the poll, empty 504 when the worker
        took it but did not answer within the poll duration + 2 s (the request is then gone).
        """
        try:
            request_id = self.authorize(request)
            poll_seconds = poll_seconds_of(
                request.headers.get(NVCF_POLL_SECONDS), request.headers.get("Accept")
            )
            headers = request_headers(request, self._exchange.region)
            async with self.poll(request_id, headers, poll_seconds) as outcome:
                if isinstance(outcome, web.Response):
                    return outcome
                return await relay_response(request, outcome, request_id)
        except InvocationRefused as error:
            return error.answer

    @asynccontextmanager
    async def poll(
        self, request_id: str, headers: Sequence[Header], poll_seconds: int
    ) -> AsyncIterator[Outcome]:
        """Poll `request_id` and yield the worker's answer or the platform's stand-in.

        Yields a 404 problem (no detail, as NVIDIA's) when the request is not tracked, else see
        `WorkerExchange.poll`. Raises `InvocationRefused`: 500 when the tracking stream cannot be
        read, 503 while NATS is down, 404 when the tracked version is no longer configured.
        """
        extra = {"request_id": request_id}
        try:
            tracked = await self._tracking.lookup(request_id)
        except NatsUnavailable as error:
            raise unavailable(error) from None
        except TrackingFailed as error:
            _log.error("tracking lookup failed", extra={**extra, "error": str(error)})
            raise refused(500, str(error)) from None
        if tracked is None:
            _log.info("status poll of an unknown request", extra=extra)
            yield problem_response(404)
            return
        try:
            version = self._registry.version(tracked.functionId, tracked.functionVersionId)
        except FunctionNotFound:
            raise refused(404, "function not found") from None
        except FunctionVersionNotFound:
            raise refused(404, "function version not found") from None
        item = self._exchange.work_item(
            version, request_id, method="GET", headers=headers, body=None
        )
        request_time_ns = (
            tracked.requestTime.ToNanoseconds() if tracked.HasField("requestTime") else None
        )
        async with self._exchange.poll(
            version, item, poll_seconds, request_time_ns=request_time_ns
        ) as outcome:
            yield outcome
