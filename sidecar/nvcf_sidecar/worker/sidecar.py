"""The sidecar's lifetime: start its parts in order, serve until stopped, drain, close (§5.2, §10).

Start-up: health server, ConnectOnce, NATS, container readiness, cancel subscription, consumer
binding, fetch loop. Shutdown reverses it after the in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from nvcf_sidecar.eventloop import loop_name
from nvcf_sidecar.heap import tune_gc_for_serving
from nvcf_sidecar.worker.api_client import CONNECT_RETRY_SECONDS, ApiError, WorkerApiClient
from nvcf_sidecar.worker.cancel import CancelListener
from nvcf_sidecar.worker.config import ConfigError, WorkerConfig
from nvcf_sidecar.worker.consumer import RequestConsumer
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.health import ContainerHealth, ContainerNotReady, SidecarHealthServer
from nvcf_sidecar.worker.inflight import RequestHandler
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.nats_connection import NatsConnection, NatsUnavailable

__all__ = [
    "HandlerFactory",
    "RunnerContext",
    "Sidecar",
    "StartupError",
    "open_request_runner",
    "run_sidecar",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class StartupError(WorkerError):
    """The sidecar cannot run; `is_internal` is False when the function's owner must act."""

    def __init__(self, message: str, *, is_internal: bool = True) -> None:
        self.message = message
        self.is_internal = is_internal
        super().__init__(message)


class _StopRequested(WorkerError):
    """A stop signal arrived while the sidecar was still starting."""


@dataclass(frozen=True)
class RunnerContext:
    """What the request runner may use; everything here lives until the sidecar stops."""

    config: WorkerConfig
    metrics: WorkerMetrics
    api: WorkerApiClient
    nats: NatsConnection
    stack: AsyncExitStack
    """Enter the runner's own resources (HTTP sessions, watchers) here; they close after the
    consumer has finished every request."""
    container: ContainerHealth | None = None
    """The container's health: a refused call reports to it and waits for it."""


HandlerFactory = Callable[[RunnerContext], Awaitable[RequestHandler]]


async def open_request_runner(context: RunnerContext) -> RequestHandler:
    """The data path: `RequestRunner` over the sidecar's `HttpSessions`, with compatibility mode
    (one progress monitor for all requests, NATS for status polls, the large-response shipper)."""
    from nvcf_sidecar.worker.compat import CompatibilityServices
    from nvcf_sidecar.worker.large import LargeResponseShipper
    from nvcf_sidecar.worker.progress import ProgressMonitor
    from nvcf_sidecar.worker.request import RequestRunner
    from nvcf_sidecar.worker.sessions import HttpSessions
    from nvcf_sidecar.worker.stateful import StatefulSessions

    config, metrics = context.config, context.metrics
    sessions = await context.stack.enter_async_context(HttpSessions(config))
    progress = await context.stack.enter_async_context(
        ProgressMonitor(config.base_response_dir, metrics)
    )
    shipper = LargeResponseShipper(sessions.transfer, context.api, metrics)
    compat = CompatibilityServices(progress, context.nats.client, shipper)
    api = context.api

    def region() -> str:  # the region whose queue delivered the session (the primary one)
        connection = api.connection
        return connection.region if connection is not None else "default"

    stateful = StatefulSessions(config, context.nats.client, region)
    return RequestRunner(
        config, metrics, sessions, compat, watch=context.container, stateful=stateful
    )


class Sidecar:
    """One sidecar process's lifetime: `await Sidecar(config).run()`, `stop()` from a signal.

    `run()` returns after a graceful stop and raises StartupError when the sidecar cannot start
    or must give up (NATS gone for good, worker token lost). `tune_gc`: once it serves, freeze
    what start-up made out of the garbage collector's walks and collect in larger batches
    (`heap.py`; for a process of its own, never a test's).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        metrics: WorkerMetrics | None = None,
        handler_factory: HandlerFactory = open_request_runner,
        connect_retry_seconds: float = CONNECT_RETRY_SECONDS,
        tune_gc: bool = False,
    ) -> None:
        self.config = config
        self._tune_gc = tune_gc
        self._connect_retry_seconds = connect_retry_seconds
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self._handler_factory = handler_factory
        self._stop = asyncio.Event()
        self._stop_requests = 0
        self._fatal: StartupError | None = None
        self._nats: NatsConnection | None = None
        self._container: ContainerHealth | None = None
        self._consumer: RequestConsumer | None = None
        self._health_server: SidecarHealthServer | None = None
        self._serving = False

    @property
    def health_port(self) -> int:
        """The port of the sidecar's health server once it is listening."""
        if self._health_server is None:
            raise RuntimeError("the health server is not running")
        return self._health_server.port

    @property
    def consumer(self) -> RequestConsumer | None:
        """The work-queue consumer once created."""
        return self._consumer

    def stop(self) -> None:
        """Graceful stop: no more fetching, in-flight requests finish. A second call cancels them."""
        self._stop_requests += 1
        if self._stop_requests == 1:
            logger.info("stop requested; draining")
        elif self._consumer is not None:
            logger.warning("second stop request; cancelling in-flight requests")
            self._consumer.cancel_all("sidecar stopped twice")
        self._stop.set()

    def _fail(self, error: StartupError) -> None:
        if self._fatal is None:
            self._fatal = error
        logger.error("fatal error; stopping", extra={"error": error.message})
        self._stop.set()

    def readiness(self) -> list[str]:
        """Why the sidecar should not get traffic now; empty when ready."""
        reasons = []
        if self._stop.is_set():
            reasons.append("shutting down")
        if self._nats is None or not self._nats.connected:
            reasons.append("NATS not connected")
        if self._consumer is None or not self._consumer.bound:
            reasons.append("work-queue consumer not bound")
        if self._container is None or not self._container.healthy:
            reason = self._container.reason if self._container is not None else "not checked"
            reasons.append(f"inference container not healthy: {reason}")
        return reasons

    def _nats_reconnected(self) -> None:
        if self._consumer is not None:
            self._consumer.nats_reconnected()

    def _container_changed(self, healthy: bool) -> None:
        if self._consumer is not None:
            self._consumer.health_changed(healthy)

    async def _unless_stopped(self, awaitable: Coroutine[Any, Any, _T]) -> _T:
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, stopped):
                if not task.done():
                    task.cancel()
            await asyncio.gather(work, stopped, return_exceptions=True)
        if work.cancelled() or not work.done():
            raise _StopRequested
        return work.result()

    async def _guard(self, awaitable: Awaitable[None], what: str) -> None:
        try:
            await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._fail(StartupError(f"{what} failed: {error}"))

    async def run(self) -> None:
        """Start, serve until `stop()`, drain and close; StartupError if it cannot go on."""
        try:
            await self._run()
        except _StopRequested:
            logger.info("stopped during start-up")
        except StartupError as error:
            self._fatal = self._fatal or error
        except ContainerNotReady as error:
            self._fatal = StartupError(str(error), is_internal=False)
        except (ApiError, ConfigError, NatsUnavailable, OSError) as error:
            self._fatal = StartupError(str(error))
        except Exception as error:  # the process edge: every failure becomes a clear message
            logger.exception("unexpected start-up failure")
            self._fatal = StartupError(f"{type(error).__name__}: {error}")
        if self._fatal is not None:
            raise self._fatal

    async def _run(self) -> None:
        config = self.config
        _make_base_directories(config)
        async with AsyncExitStack() as stack:
            self._health_server = await stack.enter_async_context(
                SidecarHealthServer(config, self.metrics, self.readiness)
            )
            api = await stack.enter_async_context(WorkerApiClient(config))
            connection = await self._unless_stopped(
                api.connect(max_elapsed=self._connect_retry_seconds)
            )
            self._nats = await stack.enter_async_context(
                NatsConnection(
                    config,
                    lambda: api.token,
                    on_closed=lambda: self._fail(StartupError("NATS connection lost for good")),
                    on_reconnected=self._nats_reconnected,
                )
            )
            self._container = await stack.enter_async_context(
                ContainerHealth(config, self.metrics, on_change=self._container_changed)
            )
            await self._unless_stopped(self._container.wait_ready())
            handler = await self._handler_factory(
                RunnerContext(config, self.metrics, api, self._nats, stack, self._container)
            )
            container = self._container
            consumer = RequestConsumer(
                self._nats.client,
                config,
                self.metrics,
                handler,
                api.provision_regional_worker,
                is_healthy=lambda: container.healthy,
            )
            await stack.enter_async_context(
                CancelListener(
                    self._nats.client,
                    config.function_version_id,
                    consumer.cancel_request,
                    self.metrics,
                )
            )
            self._consumer = await stack.enter_async_context(consumer)
            await self._unless_stopped(consumer.bind(connection.regions))
            frozen = tune_gc_for_serving() if self._tune_gc else None
            logger.info(
                "sidecar serving",
                extra={
                    "regions": list(consumer.regions),
                    "max_request_concurrency": config.max_request_concurrency,
                    "health_port": self.health_port,
                    "event_loop": loop_name(asyncio.get_running_loop()),
                    "container_client": "lean" if config.lean_container else "aiohttp",
                    "attach_client": "lean" if config.lean_attach else "aiohttp",
                    "gc_frozen_objects": frozen,
                },
            )
            async with asyncio.TaskGroup() as background:
                fetching = background.create_task(self._guard(consumer.fetch(), "fetching"))
                monitor = background.create_task(
                    self._guard(container.monitor(), "container health monitor")
                )
                refresher = background.create_task(
                    self._guard(
                        api.keep_connected(lambda update: consumer.update_regions(update.regions)),
                        "worker token refresh",
                    )
                )
                await self._stop.wait()
                consumer.stop_fetching()
                await fetching
                await consumer.drain(config.shutdown_grace)
                monitor.cancel()
                refresher.cancel()
            logger.info("in-flight requests finished; closing")


def _make_base_directories(config: WorkerConfig) -> None:
    # Like NVIDIA's worker: world-writable, so the container's user can write its outputs.
    for directory in (config.base_response_dir, config.base_asset_dir):
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)


async def run_sidecar(
    config: WorkerConfig,
    *,
    handler_factory: HandlerFactory = open_request_runner,
    install_signal_handlers: bool = True,
) -> None:
    """Run a sidecar until SIGTERM or SIGINT (graceful); StartupError if it cannot run.

    The process's own sidecar: its garbage collector is tuned for serving once it serves
    (`heap.py`)."""
    sidecar = Sidecar(config, handler_factory=handler_factory, tune_gc=True)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
    for signum in signals:
        loop.add_signal_handler(signum, sidecar.stop)
    try:
        await sidecar.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
