"""Health, both ways: the function container's readiness, and the sidecar's own endpoints.

`ContainerHealth` measures the container like NVIDIA's worker (start-up wait every 500 ms, then
every 10 s; the fetch loop waits while it is unhealthy), and faster than it once the container is
down: a refused call marks it unhealthy at once and it is re-checked every 250 ms until it is back. `SidecarHealthServer` serves
`/v1/health/live`, `/v1/health/ready` and `/metrics` on `HEALTH_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import aiohttp
import grpc
import grpc.aio
import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.get_server import GetServer, Reply
from nvcf_sidecar.worker.metrics import WorkerMetrics

__all__ = [
    "HEALTH_LIVE_PATH",
    "HEALTH_READY_PATH",
    "METRICS_PATH",
    "READY_POLL_SECONDS",
    "RECOVERY_POLL_SECONDS",
    "ContainerHealth",
    "ContainerNotReady",
    "HealthError",
    "Probe",
    "SidecarHealthServer",
]

logger = logging.getLogger(__name__)

HEALTH_LIVE_PATH: Final = "/v1/health/live"
HEALTH_READY_PATH: Final = "/v1/health/ready"
METRICS_PATH: Final = "/metrics"
READY_POLL_SECONDS: Final = 0.5
"""Cadence of the start-up readiness wait."""
RECOVERY_POLL_SECONDS: Final = 0.25
"""Cadence of the checks while a container that was up is down (restarting)."""
NOT_FOUND_RETRY_SECONDS: Final = 30.0
"""A 404 means "up, but not serving the health path yet": retried this long within one check."""
_NOT_FOUND_RETRY_INTERVAL: Final = 2.0
_GRPC_HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
_GRPC_SERVING: Final = 1


class HealthError(WorkerError):
    """Base class of the health module's errors."""


class ContainerNotReady(HealthError):
    """The container did not pass its health check within `INFERENCE_READY_TIMEOUT`."""

    def __init__(self, timeout: float, reason: str) -> None:
        self.timeout = timeout
        self.reason = reason
        super().__init__(
            f"the inference container was not ready within {timeout:g} s (last check: {reason})"
        )


@dataclass(frozen=True)
class Probe:
    """The result of one health request to the container."""

    ok: bool
    reason: str
    not_found: bool = False


def _grpc_health_status(data: bytes) -> int:
    """The `status` (field 1, varint) of an encoded grpc.health.v1 HealthCheckResponse."""
    status, index = 0, 0
    while index < len(data):
        tag = data[index]
        index += 1
        if tag != 0x08:  # anything but field 1 as varint: the response has nothing else
            break
        value, shift = 0, 0
        while index < len(data):
            byte = data[index]
            index += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        status = value
    return status


class ContainerHealth:
    """The function container's health as NVIDIA's worker measures it; open with `async with`.

    `healthy` is False until a check passes. `on_change(healthy)` is called whenever the state
    flips (the consumer uses it to stop and resume fetching).
    """

    def __init__(
        self,
        config: WorkerConfig,
        metrics: WorkerMetrics,
        *,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._on_change = on_change
        self._healthy = False
        self._healthy_event = asyncio.Event()
        self._recheck = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._failed_after_drop = False
        self._confirming: asyncio.Task[None] | None = None
        self._reason = "not checked yet"
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None
        metrics.container_healthy.set(0)

    @property
    def healthy(self) -> bool:
        """Whether the last check passed."""
        return self._healthy

    @property
    def reason(self) -> str:
        """Why the last check failed (or "ok")."""
        return self._reason

    async def __aenter__(self) -> ContainerHealth:
        if self._config.health_protocol == "grpc":
            target = f"{self._config.inference_host}:{self._config.health_port}"
            self._channel = grpc.aio.insecure_channel(target)
        else:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._config.health_timeout),
                trust_env=False,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._confirming is not None:
            self._confirming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._confirming
            self._confirming = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def probe(self) -> Probe:
        """One request to the container's health endpoint; never raises (but CancelledError)."""
        if self._channel is not None:
            return await self._probe_grpc(self._channel)
        if self._session is None:
            raise RuntimeError("ContainerHealth is not open; use `async with`")
        url = self._config.health_url
        try:
            async with self._session.get(url, allow_redirects=True) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            return Probe(False, f"GET {url}: no answer within {self._config.health_timeout:g} s")
        except aiohttp.ClientError as error:
            return Probe(False, f"GET {url}: {type(error).__name__}: {error}")
        if status == self._config.health_expected_status:
            return Probe(True, "ok")
        return Probe(
            False,
            f"GET {url}: status {status}, expected {self._config.health_expected_status}",
            not_found=status == 404,
        )

    async def _probe_grpc(self, channel: grpc.aio.Channel) -> Probe:
        check: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            _GRPC_HEALTH_CHECK
        )
        target = f"{self._config.inference_host}:{self._config.health_port}"
        try:
            answer = await check(b"", timeout=self._config.health_timeout)
        except grpc.aio.AioRpcError as error:
            return Probe(False, f"gRPC health {target}: {error.code().name}: {error.details()}")
        status = _grpc_health_status(answer if isinstance(answer, bytes) else b"")
        if status == _GRPC_SERVING:
            return Probe(True, "ok")
        return Probe(False, f"gRPC health {target}: status {status}, expected SERVING")

    async def check(self) -> bool:
        """One health measurement as the periodic monitor does it; updates `healthy`.

        A 404 is retried for up to 30 s before it counts as unhealthy.
        """
        probe = await self.probe()
        deadline = time.monotonic() + NOT_FOUND_RETRY_SECONDS
        while probe.not_found and time.monotonic() + _NOT_FOUND_RETRY_INTERVAL < deadline:
            await asyncio.sleep(_NOT_FOUND_RETRY_INTERVAL)
            probe = await self.probe()
        self._record(probe)
        return probe.ok

    def _record(self, probe: Probe) -> None:
        self._metrics.health_checks.labels("success" if probe.ok else "failure").inc()
        self._reason = probe.reason
        if probe.ok:
            self._failed_after_drop = False
        if probe.ok == self._healthy:
            return
        self._healthy = probe.ok
        self._metrics.container_healthy.set(1 if probe.ok else 0)
        if probe.ok:
            self._healthy_event.set()
            logger.info("inference container is healthy")
        else:
            self._healthy_event.clear()
            logger.warning("inference container is unhealthy", extra={"reason": probe.reason})
        if self._on_change is not None:
            self._on_change(probe.ok)

    async def wait_ready(self, limit: float | None = None) -> None:
        """Check every 500 ms until the container is healthy; ContainerNotReady after `limit`
        seconds (default `INFERENCE_READY_TIMEOUT`)."""
        seconds = self._config.ready_timeout if limit is None else limit
        deadline = time.monotonic() + seconds
        logger.info("waiting for the inference container", extra={"timeout_seconds": seconds})
        while True:
            started = time.monotonic()
            probe = await self.probe()
            self._record(probe)
            if probe.ok:
                return
            if time.monotonic() >= deadline:
                raise ContainerNotReady(seconds, probe.reason)
            pause = READY_POLL_SECONDS - (time.monotonic() - started)
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    async def wait_healthy(self) -> None:
        """Return once the container is healthy (immediately if it is)."""
        await self._healthy_event.wait()

    def report_refused(self, reason: str) -> None:
        """A call found the container refusing connections: unhealthy now, re-checked soon.

        The consumer stops fetching at once instead of after the next periodic check, and the
        monitor switches to `RECOVERY_POLL_SECONDS` until a check passes.
        """
        self._record(Probe(False, reason))
        self._recheck.set()

    @property
    def suspect(self) -> bool:
        """Whether a call lost its connection and no check has passed since: the probe that
        follows has not answered yet, or it failed (calls then wait until a check passes)."""
        return not self._settled.is_set() or self._failed_after_drop

    def report_dropped(self, reason: str) -> None:
        """A call lost its connection after it reached the container: probe the container now.

        A container that is dying (a SIGKILLed server's sockets close over a few milliseconds)
        would take and drop the next calls too; `wait_settled` lets them wait for this probe,
        and a failed probe marks the container unhealthy, so they are held as refused calls are.
        A healthy container (one handler that closed its connection) costs them one probe.
        """
        if not self._healthy or not self._settled.is_set():
            return  # already unhealthy (the monitor re-checks it) or already being probed
        self._settled.clear()
        self._confirming = asyncio.create_task(self._confirm(reason))

    async def _confirm(self, reason: str) -> None:
        try:
            probe = await self.probe()
            if probe.ok:
                self._record(probe)
            else:
                self._failed_after_drop = True
                self._record(Probe(False, f"{probe.reason} (after {reason})"))
                self._recheck.set()
        finally:
            self._settled.set()

    async def wait_settled(self) -> bool:
        """Wait for the probe `report_dropped` started (if any); whether the container is healthy."""
        await self._settled.wait()
        return self._healthy

    async def monitor(self) -> None:
        """Re-check every `health_check_interval` seconds while healthy, every
        `RECOVERY_POLL_SECONDS` while not, forever (cancel to stop)."""
        while True:
            interval = (
                self._config.health_check_interval if self._healthy else RECOVERY_POLL_SECONDS
            )
            self._recheck.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._recheck.wait()
            if self._recheck.is_set():
                # A refusal was just recorded: give the container a moment before probing.
                await asyncio.sleep(RECOVERY_POLL_SECONDS)
            await self.check()


ReadinessCheck = Callable[[], Sequence[str]]
"""Returns why the sidecar is not ready; an empty sequence means ready."""


class SidecarHealthServer:
    """The sidecar's own HTTP endpoints on `HEALTH_PORT`; open with `async with`.

    `/v1/health/live` answers 200 while the process runs; `/v1/health/ready` answers 200 when
    `readiness()` reports nothing, else 503 with the reasons; `/metrics` is Prometheus text.
    Served by `get_server.GetServer` (GET and HEAD; no aiohttp web server in the sidecar).
    """

    def __init__(
        self,
        config: WorkerConfig,
        metrics: WorkerMetrics,
        readiness: ReadinessCheck,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._host = config.sidecar_health_host if host is None else host
        self._port = config.sidecar_health_port if port is None else port
        self._server: GetServer | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on (useful when it was started on port 0)."""
        if self._bound_port is None:
            raise RuntimeError("the health server is not running")
        return self._bound_port

    async def __aenter__(self) -> SidecarHealthServer:
        server = GetServer(
            {
                HEALTH_LIVE_PATH: self._live,
                HEALTH_READY_PATH: self._ready,
                METRICS_PATH: self._render_metrics,
            },
            self._host,
            self._port,
        )
        self._bound_port = await server.start()
        self._server = server
        logger.info("health server listening", extra={"host": self._host, "port": self._bound_port})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    def _live(self) -> Reply:
        return _json(200, {"status": "live"})

    def _ready(self) -> Reply:
        reasons = list(self._readiness())
        if reasons:
            return _json(503, {"status": "not ready", "reasons": reasons})
        return _json(200, {"status": "ready"})

    def _render_metrics(self) -> Reply:
        return Reply(200, CONTENT_TYPE_LATEST, self._metrics.render())


def _json(status: int, document: dict[str, object]) -> Reply:
    return Reply(status, "application/json", orjson.dumps(document))
