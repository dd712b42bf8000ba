"""The work-queue consumer: bind, fetch never more than the free slots, keepalive, ack (§2.2, §2.3, §9).

`RequestConsumer` binds (never creates) `rq_<region>_<fvid>_workers` in each region, pulls with its
own long-polling pull requests, runs each request in a task of its TaskGroup and acks at the end.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Protocol

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from nvcf_sidecar.protocol import (
    MalformedMessage,
    WorkerInvokeFunctionRequest,
    consumer_name,
    decode_invoke_request,
    request_stream_name,
)
from nvcf_sidecar.worker.api_client import ExponentialBackoff
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.logs import bind_log_fields
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics

__all__ = [
    "BIND_RETRY_SECONDS",
    "MAX_KEEPALIVE_FAILURES",
    "BindFailed",
    "ConsumerError",
    "Provisioner",
    "PullFailed",
    "RequestConsumer",
    "RequestHandler",
    "RequestSlots",
    "bind_consumer",
    "parse_max_request_batch",
]

logger = logging.getLogger(__name__)

BIND_RETRY_SECONDS: Final = 5.0
"""How long a region's consumer lookup (with provisioning) is retried."""
MAX_KEEPALIVE_FAILURES: Final = 10
"""Consecutive `+WPI` failures after which a request is cancelled (the platform lost it)."""
_REBIND_AFTER_FAILURES: Final = 10
_DRAIN_TIMEOUT: Final = 5.0
_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_MAX_REQUEST_BATCH = re.compile(r"(?:nats: )?Exceeded MaxRequestBatch of (\d+)")


class ConsumerError(Exception):
    """Base class of the consumer's errors."""


class BindFailed(ConsumerError):
    """The durable consumer of a region could not be found, even after provisioning."""

    def __init__(self, region: str, stream: str, consumer: str, reason: str) -> None:
        self.region = region
        self.stream = stream
        self.consumer = consumer
        self.reason = reason
        super().__init__(
            f"cannot bind consumer {consumer!r} on stream {stream!r} (region {region!r}): {reason}"
        )


class PullFailed(ConsumerError):
    """A pull request ended with an error status or went silent (missed heartbeats)."""

    def __init__(self, region: str, reason: str) -> None:
        self.region = region
        self.reason = reason
        super().__init__(f"pull request in region {region!r} failed: {reason}")


class RequestHandler(Protocol):
    """Runs one invocation to its end (the data path's `RequestRunner`)."""

    async def run(self, request: WorkerInvokeFunctionRequest) -> Outcome:
        """Never raises except asyncio.CancelledError (then it has cleaned up)."""
        ...


Provisioner = Callable[[str], Awaitable[None]]
"""Asks the NVCF API to create a region's stream and consumer (ProvisionRegionalWorker)."""


def parse_max_request_batch(description: str) -> int | None:
    """N from the server's "Exceeded MaxRequestBatch of N" (with or without Go's "nats: ")."""
    match = _MAX_REQUEST_BATCH.fullmatch(description.strip())
    if match is None:
        return None
    value = int(match.group(1))
    return value if value > 0 else None


async def bind_consumer(
    nc: NATS,
    region: str,
    function_version_id: str,
    provision: Provisioner,
    *,
    max_elapsed: float = BIND_RETRY_SECONDS,
) -> ConsumerInfo:
    """Look up `rq_<region>_<fvid>_workers`; if it or its stream is missing, provision and retry.

    Only `$JS.API.CONSUMER.INFO` is used: the worker's NATS permissions forbid creating streams
    and consumers, so this never creates one. Raises BindFailed after `max_elapsed` seconds.
    """
    stream = request_stream_name(region, function_version_id)
    consumer = consumer_name(region, function_version_id)
    js = nc.jetstream()
    backoff = ExponentialBackoff(max_elapsed=max_elapsed)
    while True:
        try:
            try:
                info: ConsumerInfo = await js.consumer_info(stream, consumer)
                return info
            except NotFoundError as missing:
                logger.info(
                    "work-queue consumer missing; provisioning",
                    extra={"region": region, "stream": stream, "error": missing.description},
                )
                await provision(region)
                info = await js.consumer_info(stream, consumer)
                return info
        except asyncio.CancelledError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
        delay = backoff.next_delay()
        if delay is None:
            raise BindFailed(region, stream, consumer, reason)
        logger.debug("binding failed; retrying", extra={"region": region, "error": reason})
        await asyncio.sleep(delay)


class _Signal:
    """Wakes every waiter whose condition may have changed (single event loop, no lock)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._event.clear()
            await self._event.wait()


class RequestSlots:
    """`MAX_REQUEST_CONCURRENCY` slots: a request holds one from receipt to ack.

    Never more than `limit` are held; `metrics.in_flight` follows the held count.
    """

    def __init__(self, limit: int, metrics: WorkerMetrics, changed: _Signal) -> None:
        self.limit = limit
        self._held = 0
        self._metrics = metrics
        self._changed = changed

    @property
    def held(self) -> int:
        """Slots taken by requests now."""
        return self._held

    @property
    def free(self) -> int:
        """Slots a fetch may ask for now."""
        return self.limit - self._held

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        if self._held >= self.limit:
            return False
        self._held += 1
        self._metrics.in_flight.set(self._held)
        return True

    def release(self) -> None:
        """Give a slot back and wake the fetch loops."""
        if self._held <= 0:
            raise RuntimeError("released a request slot that was not held")
        self._held -= 1
        self._metrics.in_flight.set(self._held)
        self._changed.notify()


@dataclass
class _InFlight:
    request_id: str
    task: asyncio.Task[object] | None = None
    cancel_reason: str | None = None
    keepalives: int = field(default=0)

    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    def cancel(self, reason: str) -> bool:
        """Cancel the request; one not started yet will not start. False if already over."""
        if self.cancel_reason is not None or (self.task is not None and self.task.done()):
            return False
        self.cancel_reason = reason
        if self.task is not None:
            self.task.cancel()
        return True


# A pull's queue receives messages, or None when the pull must be abandoned.
_PullQueue = asyncio.Queue[Msg | None]


class RequestConsumer:
    """Serves the work queue of one function version; open it with `async with`.

    `bind(regions)` binds the primary region (required) and the others (best effort);
    `fetch()` pulls until `stop_fetching()`; `drain(grace)` waits for in-flight requests.
    Leaving the block waits for (or, if it is left by an error, cancels) every request task.
    """

    def __init__(
        self,
        nc: NATS,
        config: WorkerConfig,
        metrics: WorkerMetrics,
        handler: RequestHandler,
        provision: Provisioner,
        *,
        is_healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._nc = nc
        self._config = config
        self._metrics = metrics
        self._handler = handler
        self._provision = provision
        self._is_healthy = is_healthy
        self._changed = _Signal()
        self.slots = RequestSlots(config.max_request_concurrency, metrics, self._changed)
        self._max_batch = config.max_request_concurrency
        self._requests: asyncio.TaskGroup | None = None
        self._in_flight: dict[str, list[_InFlight]] = {}
        self._regions: tuple[str, ...] = ()
        self._wanted_regions: tuple[str, ...] | None = None
        self._generation = 0
        self._stopping = False
        self._pulls: set[_PullQueue] = set()

    # --- state -----------------------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        """True once the primary region's consumer is bound, until fetching stops."""
        return bool(self._regions) and not self._stopping

    @property
    def regions(self) -> tuple[str, ...]:
        """The bound regions, primary first."""
        return self._regions

    @property
    def max_batch(self) -> int:
        """The largest pull batch; lowered when the server reports its MaxRequestBatch."""
        return self._max_batch

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self.slots.held

    # --- lifetime --------------------------------------------------------------------------------

    async def __aenter__(self) -> RequestConsumer:
        self._requests = asyncio.TaskGroup()
        await self._requests.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_fetching()
        requests, self._requests = self._requests, None
        if requests is not None:
            await requests.__aexit__(exc_type, exc, tb)

    def stop_fetching(self) -> None:
        """Stop pulling: pending pulls are abandoned and what they still deliver is NAK'ed."""
        if not self._stopping:
            self._stopping = True
            self._abandon_pulls()

    def health_changed(self, healthy: bool) -> None:
        """Pause pulling while the container is unhealthy (in-flight requests go on)."""
        if not healthy:
            self._abandon_pulls()
        self._changed.notify()

    def update_regions(self, regions: Sequence[str]) -> None:
        """Rebind when ConnectOnce reports another region list (primary first)."""
        wanted = tuple(dict.fromkeys(region for region in regions if region))
        if not wanted or (self._regions[:1] == wanted[:1] and set(wanted) == set(self._regions)):
            return
        logger.info(
            "region list changed; rebinding",
            extra={"regions": list(wanted), "previous": list(self._regions)},
        )
        self._wanted_regions = wanted
        self._generation += 1
        self._abandon_pulls()

    def _abandon_pulls(self) -> None:
        for queue in self._pulls:
            queue.put_nowait(None)
        self._changed.notify()

    async def drain(self, grace: float | None) -> None:
        """Wait for in-flight requests; after `grace` seconds (None: no limit) cancel the rest.

        Cancelled requests count as CANCELLED and are acked, like NVIDIA's abandoned work.
        """
        self.stop_fetching()
        if self.slots.held:
            logger.info(
                "waiting for in-flight requests",
                extra={"in_flight": self.slots.held, "grace_seconds": grace},
            )
        try:
            async with asyncio.timeout(grace):
                await self._changed.wait_for(lambda: self.slots.held == 0)
        except TimeoutError:
            logger.warning(
                "shutdown grace period over; cancelling in-flight requests",
                extra={"in_flight": self.slots.held},
            )
            self.cancel_all("shutdown grace period over")
            await self._changed.wait_for(lambda: self.slots.held == 0)

    def cancel_all(self, reason: str) -> int:
        """Cancel every in-flight request; returns how many were cancelled."""
        return sum(
            entry.cancel(reason) for entries in list(self._in_flight.values()) for entry in entries
        )

    # --- binding ---------------------------------------------------------------------------------

    async def bind(self, regions: Sequence[str]) -> None:
        """Bind the primary region (BindFailed if impossible) and each other region if possible."""
        if not regions:
            raise ValueError("bind needs at least the primary region")
        primary, *others = regions
        fvid = self._config.function_version_id
        await bind_consumer(self._nc, primary, fvid, self._provision)
        bound = [primary]
        for region in others:
            try:
                await bind_consumer(self._nc, region, fvid, self._provision)
            except BindFailed as error:
                logger.error("secondary region not served", extra={"error": str(error)})
            else:
                bound.append(region)
        self._regions = tuple(bound)
        logger.info(
            "bound work-queue consumers",
            extra={"regions": bound, "consumer": consumer_name(primary, fvid)},
        )

    # --- fetching --------------------------------------------------------------------------------

    async def fetch(self) -> None:
        """Pull work from every bound region until `stop_fetching()`.

        Rebinds when the region list changes; raises BindFailed if the new primary cannot be
        bound.
        """
        if not self._regions:
            raise RuntimeError("bind() the consumer before fetch()")
        while not self._is_stopping():
            if self._wanted_regions is not None:
                wanted, self._wanted_regions = self._wanted_regions, None
                await self.bind(wanted)
            generation = self._generation
            async with asyncio.TaskGroup() as fetchers:
                for region in self._regions:
                    fetchers.create_task(
                        self._fetch_region(region, generation), name=f"fetch {region}"
                    )

    def _is_stopping(self) -> bool:
        return self._stopping

    def _finished(self, generation: int) -> bool:
        return self._stopping or generation != self._generation

    async def _fetch_region(self, region: str, generation: int) -> None:
        backoff = ExponentialBackoff(max_interval=30.0)
        failures = 0
        while True:
            await self._changed.wait_for(
                lambda: self._finished(generation) or (self._is_healthy() and self.slots.free > 0)
            )
            if self._finished(generation):
                return
            batch = min(self.slots.free, self._max_batch)
            try:
                await self._pull(region, batch, generation)
            except (PullFailed, nats.errors.Error, OSError) as error:
                failures += 1
                self._metrics.fetch_errors.labels(region).inc()
                delay = backoff.next_delay() or 1.0
                logger.warning(
                    "pull failed; retrying",
                    extra={
                        "region": region,
                        "error": error.reason if isinstance(error, PullFailed) else repr(error),
                        "failures": failures,
                        "retry_in_seconds": round(delay, 3),
                    },
                )
                await self._sleep_unless_finished(delay, generation)
                if failures % _REBIND_AFTER_FAILURES == 0 and not self._finished(generation):
                    await self._rebind_quietly(region)
            else:
                failures = 0
                backoff.reset()

    async def _sleep_unless_finished(self, delay: float, generation: int) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._changed.wait_for(lambda: self._finished(generation))
        except TimeoutError:
            pass

    async def _rebind_quietly(self, region: str) -> None:
        try:
            await bind_consumer(self._nc, region, self._config.function_version_id, self._provision)
        except BindFailed as error:
            logger.error("consumer lookup failed", extra={"error": str(error)})

    async def _pull(self, region: str, batch: int, generation: int) -> None:
        """One pull request of `batch` messages, handled as they arrive, until it is complete,
        expires, fails or is abandoned.

        nats-py's `fetch()` is not used: it returns only when the whole batch arrived or the
        request expired (delaying the first request by up to the long-poll time), and it hides
        the server's 409 "Exceeded MaxRequestBatch" as a timeout.
        """
        fvid = self._config.function_version_id
        stream = request_stream_name(region, fvid)
        consumer = consumer_name(region, fvid)
        heartbeat = self._config.fetch_heartbeat
        queue: _PullQueue = asyncio.Queue()

        async def deliver(msg: Msg) -> None:
            queue.put_nowait(msg)

        inbox = self._nc.new_inbox()
        subscription = await self._nc.subscribe(inbox, cb=deliver)
        self._pulls.add(queue)
        abandoned = False
        try:
            if self._finished(generation) or not self._is_healthy():
                abandoned = True
                return
            pull = {
                "batch": batch,
                "expires": int(self._config.fetch_max_wait * 1e9),
                "idle_heartbeat": int(heartbeat * 1e9),
            }
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                orjson.dumps(pull),
                reply=inbox,
            )
            delivered = 0
            while delivered < batch:
                try:
                    async with asyncio.timeout(2 * heartbeat):
                        msg = await queue.get()
                except TimeoutError:
                    raise PullFailed(region, "no message nor heartbeat for two intervals") from None
                if msg is None:
                    abandoned = True
                    return
                status = msg.headers.get(_STATUS) if msg.headers else None
                if not status:
                    delivered += 1
                    await self.handle_delivery(msg, region)
                    continue
                if status == "100":  # idle heartbeat
                    continue
                if status in ("404", "408"):  # no messages / request expired
                    return
                description = (msg.headers or {}).get(_DESCRIPTION, "")
                limit = parse_max_request_batch(description)
                if status == "409" and limit is not None:
                    logger.info(
                        "server limits the pull batch; lowering it",
                        extra={"region": region, "max_batch": limit},
                    )
                    self._max_batch = limit
                    return
                raise PullFailed(region, f"{status} {description}".strip())
        finally:
            self._pulls.discard(queue)
            if abandoned:
                await self._drain_abandoned(subscription, queue)
            else:
                await _unsubscribe(subscription)

    async def _drain_abandoned(self, subscription: Subscription, queue: _PullQueue) -> None:
        # Without interest the server drops the waiting pull; whatever it sent before that is
        # handed back for immediate redelivery (NVIDIA's worker does the same on cancellation).
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                await subscription.drain()  # type: ignore[no-untyped-call]
        except Exception as error:
            logger.debug("pull inbox drain failed", extra={"error": str(error)})
            await _unsubscribe(subscription)
        while not queue.empty():
            msg = queue.get_nowait()
            if msg is not None and not (msg.headers and msg.headers.get(_STATUS)):
                await self._nak(msg, "stopped")

    async def _nak(self, msg: Msg, reason: str) -> None:
        self._metrics.naks.labels(reason).inc()
        try:
            await msg.nak()
        except Exception as error:
            logger.warning("could not NAK a message", extra={"error": str(error)})

    async def handle_delivery(self, msg: Msg, region: str) -> None:
        """Start one delivered message in a free slot; terminate it if it cannot be decoded, NAK
        it (immediate redelivery) if no slot is free."""
        try:
            request = decode_invoke_request(msg.data)
            if not request.requestId:
                raise MalformedMessage("WorkerInvokeFunctionRequest", len(msg.data), "no requestId")
        except MalformedMessage as error:
            # NVIDIA's worker leaves such a message unacked: redelivered every ack wait, forever.
            logger.error(
                "malformed work item terminated",
                extra={"subject": msg.subject, "region": region, "error": str(error)},
            )
            self._metrics.count(Outcome.MALFORMED)
            try:
                await msg.term()
            except Exception as term_error:
                logger.warning("could not terminate a message", extra={"error": str(term_error)})
            return
        if self._requests is None or not self.slots.try_acquire():
            await self._nak(msg, "capacity")
            return
        request_id = request.requestId
        entry = _InFlight(request_id)
        self._in_flight.setdefault(request_id, []).append(entry)
        try:
            self._requests.create_task(
                self._serve(msg, request, region, entry), name=f"request {request_id}"
            )
        except BaseException:
            self._forget(entry)
            self.slots.release()
            raise

    def _forget(self, entry: _InFlight) -> None:
        entries = self._in_flight.get(entry.request_id)
        if entries is not None:
            entries.remove(entry)
            if not entries:
                del self._in_flight[entry.request_id]

    # --- one request -----------------------------------------------------------------------------

    def cancel_request(self, request_id: str, reason: str = "upstream cancel via NATS") -> bool:
        """Cancel the in-flight request `request_id`; False if this instance does not run it."""
        cancelled = False
        for entry in self._in_flight.get(request_id, ()):
            cancelled = entry.cancel(reason) or cancelled
        return cancelled

    async def _serve(
        self, msg: Msg, request: WorkerInvokeFunctionRequest, region: str, entry: _InFlight
    ) -> None:
        outcome = Outcome.CANCELLED
        with bind_log_fields(
            request_id=entry.request_id,
            function_version_id=self._config.function_version_id,
            region=region,
        ):
            try:
                async with asyncio.TaskGroup() as request_tasks:
                    run = request_tasks.create_task(self._run(request, entry))
                    keepalive = request_tasks.create_task(self._keep_alive(msg, entry))
                    try:
                        outcome = await run
                    finally:
                        keepalive.cancel()
            finally:
                # Always acked, also after failures, cancels and the shutdown deadline (§9):
                # the platform never hands abandoned work to another worker.
                self._forget(entry)
                self._metrics.count(outcome)
                try:
                    await msg.ack()
                except Exception as error:
                    logger.error("could not ack a work item", extra={"error": str(error)})
                finally:
                    self.slots.release()
                logger.debug("request finished", extra={"outcome": outcome.value})

    async def _run(self, request: WorkerInvokeFunctionRequest, entry: _InFlight) -> Outcome:
        # Cancellable only from here on: a cancel that came earlier is seen by the check below.
        task = entry.task = asyncio.current_task()
        if entry.cancel_reason is not None:
            logger.info(
                "request cancelled before it started", extra={"reason": entry.cancel_reason}
            )
            return Outcome.CANCELLED
        try:
            return await self._handler.run(request)
        except asyncio.CancelledError:
            if not entry.cancelled():
                raise
            if task is not None:
                task.uncancel()
            logger.info("request cancelled", extra={"reason": entry.cancel_reason})
            return Outcome.CANCELLED
        except Exception:
            logger.exception("request handler raised; counted as a worker error")
            return Outcome.WORKER_ERROR

    async def _keep_alive(self, msg: Msg, entry: _InFlight) -> None:
        """`+WPI` every keepalive interval; cancels the request after 10 failures in a row."""
        failures = 0
        while True:
            await asyncio.sleep(self._config.keepalive_interval)
            try:
                await msg.in_progress()
            except Exception as error:
                failures += 1
                self._metrics.keepalive_failures.inc()
                logger.warning(
                    "keepalive failed", extra={"error": str(error), "failures": failures}
                )
                if failures >= MAX_KEEPALIVE_FAILURES:
                    entry.cancel(f"keepalive failed {failures} times: {error}")
                    return
            else:
                failures = 0
                entry.keepalives += 1


async def _unsubscribe(subscription: Subscription) -> None:
    try:
        await subscription.unsubscribe()
    except Exception as error:
        logger.debug("pull inbox unsubscribe failed", extra={"error": str(error)})
