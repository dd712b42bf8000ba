"""NVCF's queue-details routes, read from the work-queue streams: depth per version, a request's position.

Only reads JetStream state (consumer info, direct get, stream info) of the platform's region; the
queues themselves belong to `WorkQueue` (reference §2.1, §2.2).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import orjson
from aiohttp import web
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import ConsumerInfo
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from nvcf_platform.control.functions import FunctionStates, not_found_detail
from nvcf_platform.control.registry import (
    FunctionVersion,
    Registry,
    canonical_uuid,
)
from nvcf_platform.errors import PlatformError
from nvcf_platform.invocation.invocation import CallerIdentity
from nvcf_platform.invocation.problems import UNAUTHORIZED_CLIENT, problem_response
from nvcf_sidecar.protocol import (
    consumer_name,
    parse_bearer,
    request_stream_name,
    request_subject,
)

__all__ = [
    "QUEUES_PATH",
    "QUEUE_POSITION_PATH",
    "QUEUE_TIMEOUT",
    "QUEUE_VERSION_PATH",
    "QueueEndpoints",
    "QueueInspector",
    "QueueUnavailable",
]

QUEUES_PATH: Final = "/v2/nvcf/queues/functions/{function_id}"
QUEUE_VERSION_PATH: Final = QUEUES_PATH + "/versions/{function_version_id}"
QUEUE_POSITION_PATH: Final = "/v2/nvcf/queues/{request_id}/position"
QUEUE_TIMEOUT: Final = 5.0
"""Bound on one JetStream read (consumer info, direct get, stream info)."""

_log = logging.getLogger(__name__)


class QueueUnavailable(PlatformError):
    """The state of a work queue could not be read (NATS down, JetStream not answering)."""

    def __init__(self, stream: str, reason: str) -> None:
        self.stream = stream
        self.reason = reason
        super().__init__(f"cannot read the state of work queue {stream!r}: {reason}")


class QueueInspector:
    """Read-only views of one region's work queues; NATS failures raise `QueueUnavailable`."""

    __slots__ = ("_js", "_nc", "_region")

    def __init__(self, nc: Client, *, region: str) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=QUEUE_TIMEOUT)
        self._region = region

    async def depth(self, function_version_id: str) -> int:
        """Messages not yet delivered to any worker (the durable consumer's `num_pending`).

        A missing stream or consumer counts as an empty queue, as the NVCF API counts it.
        """
        info = await self._consumer_info(function_version_id)
        return 0 if info is None else info.num_pending or 0

    async def backlog(self, function_version_id: str) -> int:
        """Messages queued or delivered and not yet acknowledged (waiting plus being served)."""
        info = await self._consumer_info(function_version_id)
        return 0 if info is None else (info.num_pending or 0) + (info.num_ack_pending or 0)

    async def position(self, function_version_id: str, request_id: str) -> int | None:
        """The 1-based position of `request_id` among the version's undelivered messages.

        None when its message is not in the stream or was already delivered. Counts the
        messages still in the stream between the consumer's last delivered sequence and the
        request's own (purged ones are skipped); an estimate, since the queue moves meanwhile.
        """
        stream = request_stream_name(self._region, function_version_id)
        subject = request_subject(self._region, function_version_id, request_id)
        try:
            message = await self._js.get_last_msg(stream, subject, direct=True)
        except (NotFoundError, NoRespondersError):
            return None
        except (NatsError, TimeoutError) as error:
            raise QueueUnavailable(stream, repr(error)) from error
        sequence = message.seq or 0
        info = await self._consumer_info(function_version_id)
        delivered = info.delivered.stream_seq if info is not None and info.delivered else 0
        if sequence <= delivered:
            return None
        if sequence == delivered + 1:
            return 1
        first, deleted = await self._stream_state(stream)
        floor = max(delivered, first - 1)
        gaps = sum(1 for gap in deleted if floor < gap < sequence)
        return max(1, sequence - floor - gaps)

    async def _consumer_info(self, function_version_id: str) -> ConsumerInfo | None:
        stream = request_stream_name(self._region, function_version_id)
        try:
            info: ConsumerInfo = await self._js.consumer_info(
                stream, consumer_name(self._region, function_version_id), timeout=QUEUE_TIMEOUT
            )
        except NotFoundError:
            return None
        except (NatsError, TimeoutError) as error:
            raise QueueUnavailable(stream, repr(error)) from error
        return info

    async def _stream_state(self, stream: str) -> tuple[int, list[int]]:
        """The stream's first sequence and its interior deleted sequences."""
        request = orjson.dumps({"deleted_details": True})
        try:
            reply = await self._nc.request(
                f"$JS.API.STREAM.INFO.{stream}", request, timeout=QUEUE_TIMEOUT
            )
            body: Any = orjson.loads(reply.data)
        except (NatsError, TimeoutError, orjson.JSONDecodeError) as error:
            raise QueueUnavailable(stream, repr(error)) from error
        if not isinstance(body, dict) or "error" in body:
            raise QueueUnavailable(stream, f"stream info failed: {body!r}")
        state = body.get("state") or {}
        return int(state.get("first_seq") or 0), [int(seq) for seq in state.get("deleted") or ()]


class QueueEndpoints:
    """NVCF's queue-details API for the platform's caller (bearer auth as pexec).

    Every configured version is listed, whatever its status. 401 problem for a bearer that is
    not an accepted key; 404 for an unknown function or version, or a request that is not
    queued; 400 for a request id that is not a UUID; 503 when JetStream cannot be read.
    """

    def __init__(
        self,
        registry: Registry,
        callers: CallerIdentity,
        states: FunctionStates,
        inspector: QueueInspector,
    ) -> None:
        self._registry = registry
        self._callers = callers
        self._states = states
        self._inspector = inspector

    def register(self, router: web.UrlDispatcher) -> None:
        # The function routes first: `/queues/functions/position` is a function id, not a reqid.
        router.add_get(QUEUES_PATH, self.queues, allow_head=False)
        router.add_get(QUEUE_VERSION_PATH, self.queues, allow_head=False)
        router.add_get(QUEUE_POSITION_PATH, self.position, allow_head=False)

    async def queues(self, request: web.Request) -> web.StreamResponse:
        """`{"functionId", "queues": [{"functionVersionId", "functionName", "functionStatus",
        "queueDepth"}]}` for every version of the function, or the one in the path."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        function_id = request.match_info["function_id"]
        version_id = request.match_info.get("function_version_id")
        try:
            function = self._registry.function(function_id)
            versions = (
                function.versions
                if version_id is None
                else (self._registry.version(function_id, version_id),)
            )
        except LookupError:  # FunctionNotFound, FunctionVersionNotFound
            detail = not_found_detail(function_id, version_id, self._callers.nca_id)
            return problem_response(404, detail)
        try:
            depths = await asyncio.gather(
                *(self._inspector.depth(v.function_version_id) for v in versions)
            )
        except QueueUnavailable as error:
            return _unavailable(error, {"function_id": function.function_id})
        queues = [
            {
                "functionVersionId": version.function_version_id,
                "functionName": version.function_name,
                "functionStatus": str(self._states.status(version)),
                "queueDepth": depth,
            }
            for version, depth in zip(versions, depths, strict=True)
        ]
        return _json({"functionId": function.function_id, "queues": queues})

    async def position(self, request: web.Request) -> web.StreamResponse:
        """`{"requestId", "functionId", "functionVersionId", "positionInQueue"}`, or 404."""
        text = request.match_info["request_id"]
        request_id = canonical_uuid(text)
        if request_id is None:
            return problem_response(400, f"invalid request id {text!r}: not a UUID")
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        versions = self._registry.versions
        try:
            positions = await asyncio.gather(
                *(self._inspector.position(v.function_version_id, request_id) for v in versions)
            )
        except QueueUnavailable as error:
            return _unavailable(error, {"request_id": request_id})
        found = _first_queued(versions, positions)
        if found is None:
            _log.debug("queue position: request not queued", extra={"request_id": request_id})
            return problem_response(
                404,
                f"Function invocation request id '{request_id}': Invocation request message "
                "is not queued (unknown, or already delivered to a worker)",
            )
        version, position = found
        return _json(
            {
                "requestId": request_id,
                "functionId": version.function_id,
                "functionVersionId": version.function_version_id,
                "positionInQueue": position,
            }
        )

    def _denied(self, request: web.Request) -> bool:
        return not self._callers.accepts(parse_bearer(request.headers.get("Authorization")))


def _first_queued(
    versions: tuple[FunctionVersion, ...], positions: list[int | None]
) -> tuple[FunctionVersion, int] | None:
    for version, position in zip(versions, positions, strict=True):
        if position is not None:
            return version, position
    return None


def _unavailable(error: QueueUnavailable, extra: dict[str, str]) -> web.Response:
    _log.error(
        "work queue unreadable", extra={**extra, "stream": error.stream, "error": error.reason}
    )
    return problem_response(503, str(error))


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")
