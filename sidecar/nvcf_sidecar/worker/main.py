"""`nvcf-sidecar run`: wires the sidecar's parts together and runs them until SIGTERM or SIGINT.

Start-up: health server, ConnectOnce, NATS, container readiness, cancel subscription, consumer
binding, fetch loop. Shutdown reverses it after the in-flight requests finish (§5.2, §10).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from nvcf_sidecar.worker.api_client import CONNECT_RETRY_SECONDS, ApiError, WorkerApiClient
from nvcf_sidecar.worker.cancel import CancelListener
from nvcf_sidecar.worker.config import ConfigError, WorkerConfig, parse_duration
from nvcf_sidecar.worker.consumer import RequestConsumer, RequestHandler
from nvcf_sidecar.worker.health import ContainerHealth, ContainerNotReady, SidecarHealthServer
from nvcf_sidecar.worker.logs import configure_worker_logging, parse_log_level
from nvcf_sidecar.worker.metrics import WorkerMetrics
from nvcf_sidecar.worker.nats_connection import NatsConnection, NatsUnavailable

__all__ = [
    "TERMINATION_LOG",
    "HandlerFactory",
    "RunnerContext",
    "Sidecar",
    "StartupError",
    "add_arguments",
    "config_from_args",
    "open_request_runner",
    "run_command",
    "run_sidecar",
    "write_termination_log",
]

logger = logging.getLogger(__name__)

TERMINATION_LOG: Final = Path("/dev/termination-log")
_T = TypeVar("_T")


class StartupError(Exception):
    """The sidecar cannot run; `is_internal` is False when the function's owner must act."""

    def __init__(self, message: str, *, is_internal: bool = True) -> None:
        self.message = message
        self.is_internal = is_internal
        super().__init__(message)


class _StopRequested(Exception):
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


HandlerFactory = Callable[[RunnerContext], Awaitable[RequestHandler]]


async def open_request_runner(context: RunnerContext) -> RequestHandler:
    """The data path: `RequestRunner` over the sidecar's `HttpSessions`."""
    from nvcf_sidecar.worker.request import RequestRunner
    from nvcf_sidecar.worker.sessions import HttpSessions

    sessions = await context.stack.enter_async_context(HttpSessions(context.config))
    return RequestRunner(context.config, context.metrics, sessions)


class Sidecar:
    """One sidecar process's lifetime: `await Sidecar(config).run()`, `stop()` from a signal.

    `run()` returns after a graceful stop and raises StartupError when the sidecar cannot start
    or must give up (NATS gone for good, worker token lost).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        metrics: WorkerMetrics | None = None,
        handler_factory: HandlerFactory = open_request_runner,
        connect_retry_seconds: float = CONNECT_RETRY_SECONDS,
    ) -> None:
        self.config = config
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
                )
            )
            self._container = await stack.enter_async_context(
                ContainerHealth(config, self.metrics, on_change=self._container_changed)
            )
            await self._unless_stopped(self._container.wait_ready())
            handler = await self._handler_factory(
                RunnerContext(config, self.metrics, api, self._nats, stack)
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
            logger.info(
                "sidecar serving",
                extra={
                    "regions": list(consumer.regions),
                    "max_request_concurrency": config.max_request_concurrency,
                    "health_port": self.health_port,
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
    """Run a sidecar until SIGTERM or SIGINT (graceful); StartupError if it cannot run."""
    sidecar = Sidecar(config, handler_factory=handler_factory)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()
    for signum in signals:
        loop.add_signal_handler(signum, sidecar.stop)
    try:
        await sidecar.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def write_termination_log(
    error: StartupError,
    *,
    path: Path = TERMINATION_LOG,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Append `{message, isInternal}` to Kubernetes' termination log; only inside Kubernetes.

    Returns whether it was written.
    """
    env = os.environ if environ is None else environ
    if not env.get("KUBERNETES_SERVICE_HOST"):
        return False
    document = orjson.dumps({"message": error.message, "isInternal": error.is_internal})
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(descriptor, "wb") as file:
            file.write(document)
            file.flush()
            os.fsync(file.fileno())
    except OSError as write_error:
        logger.error("could not write the termination log", extra={"error": str(write_error)})
        return False
    return True


# --- command line ------------------------------------------------------------------------------

# flag dest -> NVIDIA's environment variable; the flag's text replaces the variable's before
# WorkerConfig.from_env parses it, so both get the same validation.
_ENV_FLAGS: Final = {
    "function_id": "FUNCTION_ID",
    "function_version_id": "FUNCTION_VERSION_ID",
    "function_name": "FUNCTION_NAME",
    "instance_id": "INSTANCE_ID",
    "nca_id": "NCA_ID",
    "grpc_url": "NVCF_FQDN_GRPC",
    "nats_url": "NVCF_FQDN_NATS",
    "inference_port": "INFERENCE_PORT",
    "inference_health_endpoint": "INFERENCE_HEALTH_ENDPOINT",
    "inference_health_port": "INFERENCE_HEALTH_PORT",
    "inference_health_protocol": "INFERENCE_HEALTH_PROTOCOL",
    "inference_health_timeout": "INFERENCE_HEALTH_TIMEOUT",
    "inference_ready_timeout": "INFERENCE_READY_TIMEOUT",
    "max_request_concurrency": "MAX_REQUEST_CONCURRENCY",
    "health_port": "HEALTH_PORT",
    "base_response_dir": "BASE_RESPONSE_DIR",
    "base_asset_dir": "BASE_ASSET_DIR",
    "shared_config_dir": "SHARED_CONFIG_DIR",
    "log_level": "LOG_LEVEL",
}


def _seconds(text: str) -> float:
    try:
        return parse_duration("value", text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` flags; each one overrides the environment variable named in its help."""
    identity = parser.add_argument_group("function and platform (override NVIDIA's env vars)")
    for flag, dest, metavar in (
        ("--function-id", "function_id", "UUID"),
        ("--function-version-id", "function_version_id", "UUID"),
        ("--function-name", "function_name", "NAME"),
        ("--instance-id", "instance_id", "ID"),
        ("--nca-id", "nca_id", "ID"),
        ("--grpc-url", "grpc_url", "URL"),
        ("--nats-url", "nats_url", "URL"),
    ):
        identity.add_argument(flag, dest=dest, metavar=metavar, help=f"env {_ENV_FLAGS[dest]}")
    container = parser.add_argument_group("inference container")
    for flag, dest, metavar in (
        ("--inference-port", "inference_port", "PORT"),
        ("--inference-health-endpoint", "inference_health_endpoint", "PATH"),
        ("--inference-health-port", "inference_health_port", "PORT"),
        ("--inference-health-protocol", "inference_health_protocol", "http|grpc"),
        ("--inference-health-timeout", "inference_health_timeout", "DURATION"),
        ("--inference-ready-timeout", "inference_ready_timeout", "DURATION"),
        ("--max-request-concurrency", "max_request_concurrency", "N"),
        ("--base-response-dir", "base_response_dir", "DIR"),
        ("--base-asset-dir", "base_asset_dir", "DIR"),
    ):
        container.add_argument(flag, dest=dest, metavar=metavar, help=f"env {_ENV_FLAGS[dest]}")
    sidecar = parser.add_argument_group("the sidecar process")
    sidecar.add_argument(
        "--health-port", dest="health_port", metavar="PORT", help="env HEALTH_PORT (8080)"
    )
    sidecar.add_argument(
        "--health-host",
        dest="health_host",
        metavar="HOST",
        help="address of the health and metrics server (default 0.0.0.0)",
    )
    sidecar.add_argument(
        "--shared-config-dir", dest="shared_config_dir", metavar="DIR", help="env SHARED_CONFIG_DIR"
    )
    sidecar.add_argument(
        "--log-level", dest="log_level", metavar="LEVEL", help="env LOG_LEVEL (info)"
    )
    tuning = parser.add_argument_group(
        "timing (NVIDIA's constants by default; DURATION: 10s, 500ms)"
    )
    tuning.add_argument(
        "--keepalive-interval", type=_seconds, metavar="DURATION", help="+WPI period (10s)"
    )
    tuning.add_argument(
        "--health-check-interval",
        type=_seconds,
        metavar="DURATION",
        help="container re-check period once serving (10s)",
    )
    tuning.add_argument(
        "--fetch-max-wait", type=_seconds, metavar="DURATION", help="long-poll of a pull (5m)"
    )
    tuning.add_argument(
        "--fetch-heartbeat", type=_seconds, metavar="DURATION", help="pull heartbeat (5s)"
    )
    tuning.add_argument(
        "--shutdown-grace",
        type=_seconds,
        metavar="DURATION",
        help="on SIGTERM, how long in-flight requests may run before they are cancelled "
        "(default: no limit, like NVIDIA's worker)",
    )


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> WorkerConfig:
    """WorkerConfig from the environment with the flags given on top; ConfigError if invalid."""
    env = dict(os.environ if environ is None else environ)
    for dest, name in _ENV_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            env[name] = str(value)
    config = WorkerConfig.from_env(env)
    overrides: dict[str, Any] = {}
    for dest, field_name in (
        ("health_host", "sidecar_health_host"),
        ("keepalive_interval", "keepalive_interval"),
        ("health_check_interval", "health_check_interval"),
        ("fetch_max_wait", "fetch_max_wait"),
        ("fetch_heartbeat", "fetch_heartbeat"),
        ("shutdown_grace", "shutdown_grace"),
    ):
        value = getattr(args, dest, None)
        if value is not None:
            overrides[field_name] = value
    return dataclasses.replace(config, **overrides) if overrides else config


def _log_level(config: WorkerConfig, explicit: bool) -> int:
    try:
        return parse_log_level(config.log_level)
    except ValueError:
        if explicit:
            raise ConfigError(f"--log-level={config.log_level!r}: unknown level") from None
        return logging.INFO  # NVIDIA falls back to info for an unknown LOG_LEVEL


def run_command(args: argparse.Namespace) -> int:
    """Entry of `nvcf-sidecar run`: 0 after a graceful stop, 1 when the sidecar cannot run."""
    configure_worker_logging(logging.INFO)
    try:
        config = config_from_args(args)
        configure_worker_logging(_log_level(config, explicit=args.log_level is not None))
    except ConfigError as error:
        failure = StartupError(f"invalid configuration: {error}", is_internal=False)
        logger.error(failure.message)
        write_termination_log(failure)
        return 1
    try:
        asyncio.run(run_sidecar(config))
    except StartupError as error:
        logger.error(
            "sidecar failed", extra={"error": error.message, "internal": error.is_internal}
        )
        write_termination_log(error)
        return 1
    logger.info("sidecar stopped")
    return 0


if __name__ == "__main__":
    from nvcf_sidecar.cli import main as cli_main

    sys.exit(cli_main(["run", *sys.argv[1:]]))
