"""The JetStream side of invocations: queue streams, durable consumers, publish, cancel and purge.

Mirrors NVIDIA's invocation service (reference §2.1, §2.2, §5.1 step 5, §10): idempotent creation,
publish retries that tell a duplicate from a full queue, and withdrawal of abandoned work items.
Nothing here waits on a connection known to be down: that is `NatsUnavailable` at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Final

import orjson
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from nvcf_platform.errors import NatsUnavailable, PublishFailed, QueueFull
from nvcf_platform.invocation.js_retry import RETRY_DELAYS, write_through_elections
from nvcf_platform.invocation.nats_link import NOT_CONNECTED
from nvcf_sidecar.protocol import (
    cancel_subject,
    request_consumer_config,
    request_stream_config,
    request_stream_name,
    request_subject,
)

__all__ = ["PUBLISH_DEADLINE", "WorkQueue"]

PUBLISH_TIMEOUT: Final = 5.0
"""How long one publish waits for the stream's acknowledgement."""
PUBLISH_DEADLINE: Final = 10.0
"""Bound on a whole publish, retries included (NVIDIA's retries could take a minute)."""
ADMIN_TIMEOUT: Final = 10.0
"""Bound on one stream/consumer create or purge call (NVIDIA's purge timeout is 10 s)."""

_STORE_FAILED: Final = 10077
_STREAM_NAME_IN_USE: Final = 10058
_CONSUMER_EXISTS: Final = 10148
_CONSUMER_CREATE: Final = 10012
_PER_SUBJECT_LIMIT: Final = "maximum messages per subject exceeded"
_STREAM_FULL: Final = "maximum messages exceeded"

_log = logging.getLogger(__name__)


class WorkQueue:
    """Work-queue streams and consumers of one region, and the work items published to them."""

    __slots__ = (
        "_ack_wait",
        "_deadline",
        "_js",
        "_max_messages",
        "_nc",
        "_region",
        "_replicas",
        "_retry_delays",
        "_storage",
    )

    def __init__(
        self,
        nc: Client,
        *,
        region: str,
        max_messages: int,
        ack_wait: float,
        storage: StorageType,
        replicas: int = 1,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        deadline: float = PUBLISH_DEADLINE,
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=ADMIN_TIMEOUT)
        self._region = region
        self._max_messages = max_messages
        self._ack_wait = ack_wait
        self._storage = storage
        self._replicas = replicas
        self._retry_delays = tuple(retry_delays)
        self._deadline = deadline

    @property
    def region(self) -> str:
        """The region whose streams `publish` and `withdraw` use."""
        return self._region

    async def provision(self, function_version_id: str, region: str | None = None) -> None:
        """Create the stream `rq_<region>_<fvid>` and its durable consumer unless they exist.

        Settings as reference §2.1/§2.2 (with this platform's max messages, ack wait, storage
        and replicas: the consumer has as many as its stream). An existing stream or consumer is left as it is, whatever its settings.
        Raises `NatsUnavailable` at once while the connection is down.
        """
        self._require_connection()
        region = region or self._region
        stream = request_stream_config(
            region,
            function_version_id,
            replicas=self._replicas,
            storage=self._storage,
            max_messages=self._max_messages,
        )
        consumer = dataclasses.replace(
            request_consumer_config(region, function_version_id),
            ack_wait=self._ack_wait,
            # None inherits the stream's: exactly the single-node consumer of before.
            num_replicas=self._replicas if self._replicas > 1 else None,
        )
        assert stream.name is not None
        try:
            await self._js.add_stream(stream)
        except APIError as error:
            if error.err_code != _STREAM_NAME_IN_USE:
                raise
        try:
            await self._js.add_consumer(stream.name, consumer)
        except APIError as error:
            description = error.description or ""
            exists = error.err_code == _CONSUMER_EXISTS or (
                error.err_code == _CONSUMER_CREATE and "can not be updated" in description
            )
            if not exists:
                raise
        _log.debug(
            "queue provisioned",
            extra={"stream": stream.name, "consumer": consumer.durable_name},
        )

    async def remove(self, function_version_id: str) -> bool:
        """Delete the version's stream and consumer (an undeployed version's queue, §4.4);
        False when there was none."""
        self._require_connection()
        try:
            return bool(
                await self._js.delete_stream(request_stream_name(self._region, function_version_id))
            )
        except NotFoundError:
            return False

    async def publish(self, function_version_id: str, request_id: str, payload: bytes) -> None:
        """Publish one work item on `rq.<region>.<fvid>.<reqid>` (reference §5.1 step 5).

        Carried through a missing stream or a cluster's leader election until the deadline
        (`js_retry.write_through_elections`). "Maximum messages per subject exceeded" means an
        earlier attempt landed: success. A full stream raises `QueueFull` at once; the deadline
        passed raises `PublishFailed`. The connection being down raises `NatsUnavailable` instead
        of retrying.
        """
        subject = request_subject(self._region, function_version_id, request_id)
        error = await write_through_elections(
            lambda deadline: self._publish_once(subject, payload, deadline),
            deadline=time.monotonic() + self._deadline,
            create_stream=lambda: self.provision(function_version_id),
            delays=self._retry_delays,
            extra={"request_id": request_id, "subject": subject},
        )
        if error is not None:
            raise PublishFailed(subject, str(error) or repr(error))  # nats-py says what in str()

    async def _publish_once(
        self, subject: str, payload: bytes, deadline: float
    ) -> Exception | None:
        """None on success (or duplicate); the retryable error otherwise; QueueFull and
        NatsUnavailable are raised."""
        self._require_connection()
        timeout = max(0.1, min(PUBLISH_TIMEOUT, deadline - time.monotonic()))
        try:
            await self._store(subject, payload, timeout)
        except APIError as error:
            description = error.description or ""
            if error.err_code == _STORE_FAILED and _PER_SUBJECT_LIMIT in description:
                return None
            if error.err_code == _STORE_FAILED and _STREAM_FULL in description:
                raise QueueFull(subject.rsplit(".", 1)[0], description) from None
            return error
        except (NatsError, TimeoutError) as error:
            return error
        return None

    async def _store(self, subject: str, payload: bytes, wait: float) -> None:
        """`JetStreamContext.publish` without its PubAck object: the stream's answer read with
        orjson, an error raised as nats-py raises it (`APIError` and its kinds; no stream
        listening is `NoStreamResponseError`); `wait`: seconds for the answer."""
        try:
            reply = await self._nc.request(subject, payload, timeout=wait)
        except NoRespondersError:
            raise NoStreamResponseError from None
        try:
            answer = orjson.loads(reply.data)
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            APIError.from_error(answer["error"])  # raises
        if not isinstance(answer, dict) or "stream" not in answer:  # a PubAck names its stream
            raise APIError(description=f"unreadable publish acknowledgement {reply.data!r}")

    def _require_connection(self) -> None:
        if not self._nc.is_connected:
            raise NatsUnavailable(NOT_CONNECTED)

    async def withdraw(self, function_version_id: str, request_id: str) -> None:
        """Cancel a request nobody waits for any more (reference §10).

        Broadcasts the reqid on `nvcf.cancel.<fvid>` (a worker running it stops) and purges its
        subject from the stream (no worker picks it up later). Failures are logged, not raised;
        while the connection is down nothing is tried (see `WorkerExchange`, which waits).
        """
        extra = {"request_id": request_id, "function_version_id": function_version_id}
        if not self._nc.is_connected:
            _log.warning("request not withdrawn: NATS is not connected", extra=extra)
            return
        try:
            await self._nc.publish(cancel_subject(function_version_id), request_id.encode())
            await self._nc.flush(timeout=int(ADMIN_TIMEOUT))
        except (NatsError, TimeoutError) as error:
            _log.warning("cancel broadcast failed", extra={**extra, "error": repr(error)})
        stream = request_stream_name(self._region, function_version_id)
        subject = request_subject(self._region, function_version_id, request_id)
        try:
            await asyncio.wait_for(
                self._js.purge_stream(stream, subject=subject), timeout=ADMIN_TIMEOUT
            )
        except (NatsError, TimeoutError) as error:
            _log.warning("purge of the work item failed", extra={**extra, "error": repr(error)})
        else:
            _log.info("request withdrawn", extra=extra)
