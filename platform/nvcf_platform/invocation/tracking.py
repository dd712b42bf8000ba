"""The request-tracking stream `requestToFunctionVersion_<region>`: which version a polled reqid ran on.

Written on every 202 the platform relays, read by status polls, purged once a poll ends the request
(reference §2.4, §6). One record per reqid, kept at most an hour. Memory storage as NVIDIA's, or
file storage (the dev stack's) so that records outlive a nats-server restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Final

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from nvcf_platform.errors import NatsUnavailable, PlatformError
from nvcf_platform.invocation.js_retry import write_through_elections
from nvcf_platform.invocation.nats_link import NOT_CONNECTED
from nvcf_sidecar.protocol import (
    MAX_QUEUED_MESSAGES,
    WorkerResultTracking,
    tracking_stream_config,
    tracking_stream_name,
    tracking_subject,
)

__all__ = ["TRACKING_TIMEOUT", "RequestTracking", "TrackingFailed"]

TRACKING_TIMEOUT: Final = 10.0
"""Bound on one tracking-stream call (create, direct get, purge) and on a write, retries included."""
PUBLISH_TIMEOUT: Final = 5.0
"""How long one try of a write waits for the stream's acknowledgement."""

_STREAM_NAME_IN_USE: Final = 10058

_log = logging.getLogger(__name__)


class TrackingFailed(PlatformError):
    """The tracking stream could not be written, read or purged (NATS down, stream full, ...)."""

    def __init__(self, request_id: str, action: str, reason: str) -> None:
        self.request_id = request_id
        self.action = action
        self.reason = reason
        super().__init__(
            f"failed to {action} the tracking record of request {request_id}: {reason}"
        )


class RequestTracking:
    """The tracking stream of one region: `provision`, then `record`, `lookup`, `forget` by reqid.

    Every call raises `NatsUnavailable` (instead of `TrackingFailed`) while the connection is
    down, at once when it is known down before the call.
    """

    __slots__ = ("_js", "_max_messages", "_nc", "_region", "_replicas", "_storage", "_stream")

    def __init__(
        self,
        nc: Client,
        *,
        region: str,
        max_messages: int = MAX_QUEUED_MESSAGES,
        storage: StorageType = StorageType.MEMORY,
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=TRACKING_TIMEOUT)
        self._region = region
        self._max_messages = max_messages
        self._storage = storage
        self._replicas = replicas
        self._stream = tracking_stream_name(region)

    @property
    def region(self) -> str:
        """The region whose stream this object reads and writes (the region owning its records)."""
        return self._region

    @property
    def stream(self) -> str:
        """The stream name, `requestToFunctionVersion_<region>`."""
        return self._stream

    async def provision(self) -> None:
        """Create the stream unless it exists (whatever its settings); done at start-up.

        Eagerly, as NVIDIA's service does: a direct get on a missing stream times out instead of
        answering "not found".
        """
        self._require_connection()
        config = dataclasses.replace(
            tracking_stream_config(
                self._region, replicas=self._replicas, max_messages=self._max_messages
            ),
            storage=self._storage,
        )
        try:
            await self._js.add_stream(config)
        except APIError as error:
            if error.err_code != _STREAM_NAME_IN_USE:
                raise
        _log.debug("tracking stream provisioned", extra={"stream": self._stream})

    async def record(
        self,
        request_id: str,
        function_id: str,
        function_version_id: str,
        *,
        request_time_ns: int | None = None,
    ) -> None:
        """Write (or replace) the record of `request_id`: its function, version and start time.

        `request_time_ns` is when the platform accepted the original invocation (Unix time in
        nanoseconds; default now). Carried through a missing stream or a cluster's leader
        election within `TRACKING_TIMEOUT` (`js_retry.write_through_elections`). Raises
        `TrackingFailed`.
        """
        record = WorkerResultTracking(functionId=function_id, functionVersionId=function_version_id)
        record.requestTime.FromNanoseconds(
            time.time_ns() if request_time_ns is None else request_time_ns
        )
        subject = tracking_subject(self._region, request_id)
        payload = record.SerializeToString()
        self._require_connection()
        error = await write_through_elections(
            lambda deadline: self._publish_once(request_id, payload, deadline),
            deadline=time.monotonic() + TRACKING_TIMEOUT,
            create_stream=self.provision,
            extra={"request_id": request_id, "subject": subject},
        )
        if error is not None:
            raise self._failure(request_id, "write", error)
        _log.debug(
            "request tracked",
            extra={"request_id": request_id, "function_version_id": function_version_id},
        )

    async def _publish_once(
        self, request_id: str, payload: bytes, deadline: float
    ) -> Exception | None:
        """None on success; the error to retry otherwise. A stream's refusal (full, ...) is
        raised as `TrackingFailed`; the connection down as `NatsUnavailable`."""
        self._require_connection()
        timeout = max(0.1, min(PUBLISH_TIMEOUT, deadline - time.monotonic()))
        try:
            await self._js.publish(
                tracking_subject(self._region, request_id), payload, timeout=timeout
            )
        except APIError as error:
            raise TrackingFailed(request_id, "write", _reason(error)) from error
        except (NatsError, TimeoutError) as error:
            return error
        return None

    async def lookup(self, request_id: str) -> WorkerResultTracking | None:
        """The record of `request_id`; None if absent.

        A direct get of the subject's last message, which any replica may answer. Before saying
        "absent", the stream's leader is asked too: a replica that has not applied the latest
        write yet (one rejoining after a node loss) answers "not found" for a record that
        exists, and a status poll must not tell the caller its request is unknown. Raises
        `TrackingFailed` when the stream cannot be read or the record does not decode.
        """
        subject = tracking_subject(self._region, request_id)
        self._require_connection()
        try:
            try:
                message = await self._js.get_last_msg(self._stream, subject, direct=True)
            except NotFoundError:
                message = await self._js.get_last_msg(self._stream, subject)
        except NotFoundError:
            return None
        except (NatsError, TimeoutError) as error:
            raise self._failure(request_id, "read", error) from error
        record = WorkerResultTracking()
        try:
            record.ParseFromString(message.data or b"")
        except DecodeError as error:
            raise TrackingFailed(request_id, "decode", str(error)) from error
        return record

    async def forget(self, request_id: str) -> None:
        """Purge the record of `request_id` (no-op when there is none). Raises `TrackingFailed`."""
        subject = tracking_subject(self._region, request_id)
        self._require_connection()
        try:
            await asyncio.wait_for(
                self._js.purge_stream(self._stream, subject=subject), TRACKING_TIMEOUT
            )
        except (NatsError, TimeoutError) as error:
            raise self._failure(request_id, "purge", error) from error
        _log.debug("request tracking purged", extra={"request_id": request_id})

    def _require_connection(self) -> None:
        if not self._nc.is_connected:
            raise NatsUnavailable(NOT_CONNECTED)

    def _failure(self, request_id: str, action: str, error: BaseException) -> PlatformError:
        """`NatsUnavailable` when the connection dropped meanwhile, else `TrackingFailed`."""
        if not self._nc.is_connected:
            return NatsUnavailable(NOT_CONNECTED)
        return TrackingFailed(request_id, action, _reason(error))


def _reason(error: BaseException) -> str:
    if isinstance(error, APIError) and error.description:
        return error.description
    return repr(error)
