"""The work-queue consumer: fetch never more than the free slots, run, keep alive, ack (§2.3, §9).

`RequestConsumer` binds `rq_<region>_<fvid>_workers` in each region, pulls with its own pull
requests, runs each request in a task of its TaskGroup, sends `+WPI` while it runs and acks it at
the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from nvcf_sidecar.protocol import (
    MalformedMessage,
    WorkerInvokeFunctionRequest,
    consumer_name,
    decode_invoke_request,
)
from nvcf_sidecar.worker.api_client import ExponentialBackoff
from nvcf_sidecar.worker.binding import (
    BindFailed,
    Provisioner,
    bind_consumer,
    keepalive_interval_for,
)
from nvcf_sidecar.worker.cancel import RecentCancels
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.inflight import InFlightRequest, RequestHandler
from nvcf_sidecar.worker.logs import bind_log_fields
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.pull import PullFailed, PullRequest
from nvcf_sidecar.worker.reconnect import ReconnectMemory
from nvcf_sidecar.worker.slots import RequestSlots, StateSignal

__all__ = ["RequestConsumer"]

logger = logging.getLogger(__name__)

_REBIND_AFTER_FAILURES: Final = 10


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
        self._changed = StateSignal()
        self.slots = RequestSlots(config.max_request_concurrency, metrics, self._changed)
        self._max_batch = config.max_request_concurrency
        self._requests: asyncio.TaskGroup | None = None
        self._in_flight: dict[str, list[InFlightRequest]] = {}
        self._regions: tuple[str, ...] = ()
        self._wanted_regions: tuple[str, ...] | None = None
        self._generation = 0
        self._reconnects = 0
        self._stopping = False
        self._pulls: set[PullRequest] = set()
        self._ack_waits: dict[str, float | None] = {}
        self._cancelled = RecentCancels()
        self._reconnect_memory = ReconnectMemory()
        self._keepalive_intervals: dict[str, float] = {}

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

    def keepalive_interval(self, region: str) -> float:
        """The `+WPI` period for requests from `region` (the configured one until it is bound)."""
        return self._keepalive_intervals.get(region, self._config.keepalive_interval)

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

    def nats_reconnected(self) -> None:
        """NATS is back: waiting pulls are replaced, and pulls that failed while it was away are
        retried now, not after their backoff (which may have grown to 30 s during a long
        outage); in-flight items get a `+WPI` and the recent acks are sent again
        (`reconnect.py`) (acking twice is harmless), so nothing finished or still running is
        redelivered for a lost ack."""
        self._reconnects += 1
        replies = self._reconnect_memory.reconnected()
        # A restarted server forgot the pulls left waiting: its heartbeats would stop, noticed
        # only after two intervals. Replaced now (what they delivered before is handed back).
        self._abandon_pulls()
        if self._requests is not None:
            self._requests.create_task(self._resend_after_reconnect(replies), name="resend acks")

    async def _resend_after_reconnect(self, replies: list[str]) -> None:
        running = [entry.msg for entries in self._in_flight.values() for entry in entries]
        try:
            for reply in replies:
                await self._nc.publish(reply, b"")
            for msg in running:
                await msg.in_progress()
        except Exception as error:
            logger.warning("could not resend acks after a reconnect", extra={"error": str(error)})
            return
        if replies or running:
            logger.info(
                "acks and keepalives sent again after a reconnect",
                extra={"acks": len(replies), "in_flight": len(running)},
            )

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
        for pull in self._pulls:
            pull.abandon()
        self._changed.notify()

    async def drain(self, grace: float | None) -> None:
        """Wait for in-flight requests; after `grace` seconds (None: no limit) cancel the rest.

        Cancelled requests count as CANCELLED and are acked, like NVIDIA's abandoned work.
        """
        self.stop_fetching()
        if self.slots.busy:
            logger.info(
                "waiting for in-flight requests",
                extra={"in_flight": self.slots.busy, "grace_seconds": grace},
            )
        try:
            async with asyncio.timeout(grace):
                await self._changed.wait_for(lambda: self.slots.busy == 0)
        except TimeoutError:
            logger.warning(
                "shutdown grace period over; cancelling in-flight requests",
                extra={"in_flight": self.slots.busy},
            )
            self.cancel_all("shutdown grace period over")
            await self._changed.wait_for(lambda: self.slots.busy == 0)

    def cancel_all(self, reason: str) -> int:
        """Cancel every in-flight request; returns how many were cancelled."""
        return sum(
            entry.cancel(reason) for entries in list(self._in_flight.values()) for entry in entries
        )

    # --- binding ---------------------------------------------------------------------------------

    async def bind(self, regions: Sequence[str]) -> None:
        """Bind the primary region (BindFailed if impossible) and each other region if possible.

        Each region's keepalive period comes from its consumer's ack wait (see
        `keepalive_interval_for`); it is logged here, once per binding.
        """
        if not regions:
            raise ValueError("bind needs at least the primary region")
        primary, *others = regions
        fvid = self._config.function_version_id
        self._adopt(primary, await bind_consumer(self._nc, primary, fvid, self._provision))
        bound = [primary]
        for region in others:
            try:
                info = await bind_consumer(self._nc, region, fvid, self._provision)
            except BindFailed as error:
                logger.error("secondary region not served", extra={"error": str(error)})
            else:
                self._adopt(region, info)
                bound.append(region)
        self._regions = tuple(bound)
        logger.info(
            "bound work-queue consumers",
            extra={
                "regions": bound,
                "consumer": consumer_name(primary, fvid),
                "ack_wait_seconds": {region: self._ack_waits[region] for region in bound},
                "keepalive_seconds": {region: self.keepalive_interval(region) for region in bound},
            },
        )

    def _adopt(self, region: str, info: ConsumerInfo) -> None:
        """Take the keepalive period of a freshly looked-up consumer."""
        self._ack_waits[region] = info.config.ack_wait
        self._keepalive_intervals[region] = keepalive_interval_for(
            self._config.keepalive_interval, info.config.ack_wait
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
                reconnects = self._reconnects
                await self._sleep_unless_finished(delay, generation, reconnects)
                if self._reconnects != reconnects:
                    logger.info("NATS reconnected; pulling again", extra={"region": region})
                    backoff.reset()
                elif failures % _REBIND_AFTER_FAILURES == 0 and not self._finished(generation):
                    await self._rebind_quietly(region)
            else:
                failures = 0
                backoff.reset()

    async def _sleep_unless_finished(self, delay: float, generation: int, reconnects: int) -> None:
        """Sleep `delay` s, less if fetching ends or NATS reconnects meanwhile."""
        try:
            async with asyncio.timeout(delay):
                await self._changed.wait_for(
                    lambda: self._finished(generation) or self._reconnects != reconnects
                )
        except TimeoutError:
            pass

    async def _rebind_quietly(self, region: str) -> None:
        try:
            info = await bind_consumer(
                self._nc, region, self._config.function_version_id, self._provision
            )
        except BindFailed as error:
            logger.error("consumer lookup failed", extra={"error": str(error)})
        else:
            self._adopt(region, info)

    async def _pull(self, region: str, batch: int, generation: int) -> None:
        """One pull request of `batch` messages, each started as it arrives, until the pull is
        complete, expires, fails or is abandoned (what it delivers after that is NAK'ed)."""
        async with PullRequest(
            self._nc, region, self._config.function_version_id, on_abandoned=self._nak_stopped
        ) as pull:
            # Registered before the last check, so an abandon from here on reaches the pull.
            self._pulls.add(pull)
            try:
                if self._finished(generation) or not self._is_healthy():
                    return
                result = await pull.run(
                    batch,
                    expires=self._config.fetch_max_wait,
                    heartbeat=self._config.fetch_heartbeat,
                    deliver=lambda msg: self.handle_delivery(msg, region),
                )
            finally:
                self._pulls.discard(pull)
        if result.max_batch is not None:
            logger.info(
                "server limits the pull batch; lowering it",
                extra={"region": region, "max_batch": result.max_batch},
            )
            self._max_batch = result.max_batch

    async def _nak_stopped(self, msg: Msg) -> None:
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
        request_id = request.requestId
        if request_id in self._cancelled:
            logger.warning(
                "work item cancelled before it arrived; acked without running",
                extra={"request_id": request_id, "region": region},
            )
            self._metrics.expired.labels("cancelled").inc()
            self._metrics.count(Outcome.EXPIRED)
            try:
                await msg.ack()
            except Exception as error:
                logger.warning("could not ack a work item", extra={"error": str(error)})
            return
        if self._requests is None or not self.slots.try_acquire():
            await self._nak(msg, "capacity")
            return
        entry = InFlightRequest(
            request_id, msg, redelivered=self._reconnect_memory.maybe_delivered_before(request, msg)
        )
        self._in_flight.setdefault(request_id, []).append(entry)
        try:
            self._requests.create_task(
                self._serve(request, region, entry), name=f"request {request_id}"
            )
        except BaseException:
            self._forget(entry)
            self.slots.release()
            raise

    def _forget(self, entry: InFlightRequest) -> None:
        entries = self._in_flight.get(entry.request_id)
        if entries is not None:
            entries.remove(entry)
            if not entries:
                del self._in_flight[entry.request_id]

    # --- one request -----------------------------------------------------------------------------

    def cancel_request(self, request_id: str, reason: str = "upstream cancel via NATS") -> bool:
        """Cancel the in-flight request `request_id`; False if this instance does not run it
        (then the cancel is remembered, see `handle_delivery`)."""
        cancelled = False
        for entry in self._in_flight.get(request_id, ()):
            cancelled = entry.cancel(reason) or cancelled
        if not cancelled:
            self._cancelled.remember(request_id)
        return cancelled

    async def _serve(
        self, request: WorkerInvokeFunctionRequest, region: str, entry: InFlightRequest
    ) -> None:
        outcome = Outcome.CANCELLED
        parked = False

        def container_done() -> None:
            # The container is free while the answer waits for a poll: so is the slot. A call
            # after the request ended (a done-callback of its container call, run late) must
            # not park a slot this request no longer holds.
            nonlocal parked
            if not parked and not entry.finished:
                parked = self.slots.park()

        with bind_log_fields(
            request_id=entry.request_id,
            function_version_id=self._config.function_version_id,
            region=region,
        ):
            try:
                outcome = await entry.run(
                    self._handler,
                    request,
                    keepalive_interval=self.keepalive_interval(region),
                    metrics=self._metrics,
                    container_done=container_done,
                )
            finally:
                # Always acked, also after failures, cancels and the shutdown deadline (§9):
                # the platform never hands abandoned work to another worker.
                self._forget(entry)
                self._metrics.count(outcome)
                try:
                    await entry.msg.ack()
                    if entry.msg.reply:
                        self._reconnect_memory.acked(entry.msg.reply)
                except Exception as error:
                    logger.error("could not ack a work item", extra={"error": str(error)})
                finally:
                    if parked:
                        self.slots.unpark()
                    else:
                        self.slots.release()
                logger.debug("request finished", extra={"outcome": outcome.value})
