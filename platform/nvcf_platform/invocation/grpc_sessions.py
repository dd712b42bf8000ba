"""The registrations of live gRPC sessions, for resume (reference nvcf-grpc-sessions §2, §5).

Workers publish `StatefulSessionTracking` to `stateful_session.lookup.<region>.<fvid>.<reqid>`
while a session lives; this stream keeps the last one per subject for an hour. The proxy
creates the stream, reads a registration when a caller sends `nvcf-reqid`, and asks the
session's worker for another tunnel on `stateful_session.reconnect.<reqid>` (core NATS).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from nvcf_platform.errors import PlatformError
from nvcf_sidecar.protocol import (
    session_lookup_stream_name,
    session_lookup_subject,
    session_lookup_subject_filter,
    session_reconnect_subject,
)
from nvcf_sidecar.protocol.gen.nvcf_pb2 import StatefulSessionTracking

__all__ = ["LOOKUP_MAX_AGE_SECONDS", "SessionLookup"]

_log = logging.getLogger(__name__)

LOOKUP_MAX_AGE_SECONDS: Final = 3600.0
"""A registration outlives its last refresh (workers refresh every 20 minutes) by this much."""
_MAX_MESSAGES: Final = 100_000


class SessionLookup:
    """The session lookup stream of one region, and the reconnect subject."""

    def __init__(
        self,
        nats: Client,
        *,
        region: str,
        replicas: int,
        versions_of: Callable[[str], Sequence[str]],
    ) -> None:
        self._nats = nats
        self._region = region
        self._replicas = replicas
        self._versions_of = versions_of

    def stream_config(self) -> StreamConfig:
        """NVIDIA's settings: limits, 1 message per subject, discard new, 1 h, memory."""
        return StreamConfig(
            name=session_lookup_stream_name(self._region),
            subjects=[session_lookup_subject_filter(self._region)],
            retention=RetentionPolicy.LIMITS,
            max_msgs=_MAX_MESSAGES,
            max_msgs_per_subject=1,
            max_age=LOOKUP_MAX_AGE_SECONDS,
            discard=DiscardPolicy.NEW,
            storage=StorageType.MEMORY,
            num_replicas=self._replicas,
            allow_direct=True,
        )

    async def provision(self) -> None:
        """Create the stream unless it exists (a failure is logged: resume then answers 500)."""
        stream = self._nats.jetstream()
        name = session_lookup_stream_name(self._region)
        try:
            await stream.stream_info(name)
        except NotFoundError:
            try:
                await stream.add_stream(self.stream_config())
            except (NatsError, TimeoutError) as error:
                _log.warning("session lookup stream not created", extra={"error": repr(error)})
        except (NatsError, TimeoutError) as error:
            _log.warning("session lookup stream not checked", extra={"error": repr(error)})

    async def find(
        self, request_id: str, function_id: str, version_id: str | None
    ) -> StatefulSessionTracking | None:
        """The registration of session `request_id` under the named version, else under any
        version of the function; None when there is none."""
        versions = [version_id] if version_id else list(self._versions_of(function_id))
        stream = self._nats.jetstream()
        name = session_lookup_stream_name(self._region)
        for version in versions:
            subject = session_lookup_subject(self._region, version, request_id)
            try:
                message = await stream.get_last_msg(name, subject)
            except NotFoundError:
                continue
            except (NatsError, TimeoutError) as error:
                raise PlatformError(f"session lookup failed: {error!r}") from None
            if message.data:
                return StatefulSessionTracking.FromString(message.data)
        return None

    async def ask_reconnect(self, request_id: str, item: bytes) -> None:
        """Ask the session's worker to dial back once more (fire and forget, as NVIDIA's)."""
        try:
            await self._nats.publish(session_reconnect_subject(request_id), item)
            await self._nats.flush(timeout=5)
        except (NatsError, TimeoutError) as error:
            raise PlatformError(f"reconnect not published: {error!r}") from None
