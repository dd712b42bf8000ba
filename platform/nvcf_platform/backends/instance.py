"""One supervised instance: its inference server and its utils sidecar, restarted with backoff
when they exit, RUNNING while the sidecar is ready, FAILED once its restart budget is spent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import time
from dataclasses import dataclass
from typing import Final

import aiohttp

from nvcf_platform.backends.plan import InstancePlan
from nvcf_platform.backends.process import ChildProcess

__all__ = ["Instance", "InstanceState", "InstanceStatus", "SupervisionPolicy"]

_log = logging.getLogger(__name__)

POLL_INTERVAL: Final = 0.25
UNREADY_PROBES: Final = 3
"""Failed readiness probes in a row before a RUNNING instance counts as not ready."""
"""Seconds between two readiness probes of an instance (4 a second)."""
_PROBE_TIMEOUT: Final = aiohttp.ClientTimeout(total=1.0)
_CRASH_WINDOW: Final = 60.0
_LOG_LINES: Final = 10
_NOTE_EVERY: Final = 4
"""Rounds between two looks for the server's helpers (once a second)."""
_STOP_MARGIN: Final = 15.0
"""Beyond a stop's timeout: SIGKILL waits and the server's own grace."""


class InstanceState(enum.StrEnum):
    """An instance's life: ICMS's `starting` and `running`, then its end."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    STOPPING = "STOPPING"
    TERMINATED = "TERMINATED"


@dataclass
class InstanceStatus:
    """What a backend reports about one instance (a copy: it does not change under you)."""

    instance_id: str
    plan: InstancePlan
    state: InstanceState
    error: str | None = None
    """Why it FAILED: the process, its exit status and its log's last lines (NVCF healthInfo)."""
    created_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)
    restarts: int = 0


@dataclass(frozen=True)
class SupervisionPolicy:
    """How an instance is restarted and when it is given up."""

    restart_budget: int = 3
    """Restarts allowed before FAILED: consecutive failures to become ready, or crashes
    within 60 s (a crash loop that becomes ready in between)."""
    ready_timeout: float = 120.0
    """Seconds a (re)started instance may take to become ready, or a RUNNING one may stay
    unready, before its server is restarted (counted as a failure)."""
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    server_grace: float = 10.0
    """Seconds the server has after SIGTERM (after the sidecar drained) before SIGKILL."""


@dataclass(frozen=True)
class Probes:
    """Where readiness is read: the sidecar's `/v1/health/ready`, and the server's health URL
    (None: not HTTP) with the status it must answer."""

    sidecar_ready_url: str
    server_health_url: str | None
    server_expected_status: int = 200


class Instance:
    """The server and sidecar of one instance; `supervise()` is its life (the backend runs it
    as a task), `stop()` ends it."""

    def __init__(
        self,
        plan: InstancePlan,
        server: ChildProcess,
        sidecar: ChildProcess,
        probes: Probes,
        *,
        session: aiohttp.ClientSession,
        policy: SupervisionPolicy,
    ) -> None:
        self.plan = plan
        self.server = server
        self.sidecar = sidecar
        self.probes = probes
        self._session = session
        self._policy = policy
        self._status = InstanceStatus(plan.instance_id, plan, InstanceState.STARTING)
        self._fields = {
            "instance_id": plan.instance_id,
            "function_id": plan.function_id,
            "function_version_id": plan.function_version_id,
        }
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._drain = True
        self._stop_grace = 30.0
        self._last_answer = "does not answer yet"
        self.started_at = time.monotonic()
        self.running_after: float | None = None
        """Seconds from spawn to the first RUNNING (None: not yet)."""

    @property
    def status(self) -> InstanceStatus:
        return dataclasses.replace(self._status)

    @property
    def state(self) -> InstanceState:
        return self._status.state

    @property
    def finished(self) -> bool:
        """Whether supervision has ended (FAILED or TERMINATED: no process of it is left)."""
        return self._finished.is_set()

    async def stop(self, *, drain: bool, grace: float) -> None:
        """Stop restarting and stop both processes (drain: the sidecar first, which finishes
        its in-flight requests, then the server); returns when both are gone."""
        if not self._stop_requested.is_set():
            self._drain, self._stop_grace = drain, grace
            self._stop_requested.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), grace + _STOP_MARGIN)
        if self.state is InstanceState.FAILED:
            self._set(InstanceState.TERMINATED, self._status.error)

    async def supervise(self) -> None:
        """Run the instance until it is stopped or FAILED; never raises but on cancellation,
        which kills both process groups at once."""
        try:
            await self._run()
            if self._stop_requested.is_set():
                await self._shutdown()
        except Exception as error:
            _log.exception("instance supervision failed", extra=self._fields)
            self._set(InstanceState.FAILED, f"supervision failed: {error!r}")
            await self._shutdown()
        finally:
            if not self._finished.is_set():  # cancelled
                self.sidecar.kill_now()
                self.server.kill_now()
            self._finished.set()

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        policy = self._policy
        await self.server.start()
        await self.sidecar.start()
        failures = 0  # since the last RUNNING
        unready = 0  # readiness probes failed in a row
        crashes: collections.deque[float] = collections.deque()
        ready_deadline = time.monotonic() + policy.ready_timeout
        rounds = 0
        while not self._stop_requested.is_set():
            rounds += 1
            if rounds % _NOTE_EVERY == 1:
                self.server.note_descendants()
            failed = next((p for p in (self.server, self.sidecar) if p.exited), None)
            reason: str | None = None
            if failed is not None:
                reason = failed.describe_exit()
            elif await self._ready():
                if self.running_after is None:
                    self.running_after = time.monotonic() - self.started_at
                self._set(InstanceState.RUNNING)
                failures = 0
                unready = 0
                ready_deadline = time.monotonic() + policy.ready_timeout
            elif time.monotonic() >= ready_deadline:
                failed = self.server
                reason = (
                    f"not ready within {policy.ready_timeout:g} s "
                    f"(sidecar {self.probes.sidecar_ready_url}: {self._last_answer})"
                )
                await self.server.stop(policy.server_grace)
            else:
                unready += 1
                # A RUNNING instance stays so through a probe or two that time out under load
                # (Kubernetes' readiness failureThreshold); then it is STARTING again.
                if self.state is not InstanceState.RUNNING or unready >= UNREADY_PROBES:
                    self._set(InstanceState.STARTING)
            if failed is not None and reason is not None:
                now = time.monotonic()
                failures += 1
                crashes.append(now)
                while crashes and crashes[0] < now - _CRASH_WINDOW:
                    crashes.popleft()
                description = self._describe(failed, reason)
                if failures > policy.restart_budget or len(crashes) > policy.restart_budget:
                    self._set(InstanceState.FAILED, description)
                    _log.warning("instance failed", extra={**self._fields, "error": description})
                    await self._stop_processes(drain=False, grace=5.0)
                    return
                self._set(InstanceState.STARTING)
                self._status.restarts += 1
                delay = min(policy.backoff_max, policy.backoff_initial * 2 ** (len(crashes) - 1))
                _log.warning(
                    "instance process exited; restarting",
                    extra={**self._fields, "error": reason, "restart_in": delay},
                )
                if await self._stop_or_timeout(delay):
                    return
                # What is left of it first: its group, and helpers of its own (a PyTriton
                # server's tritonserver keeps the ports the next start needs).
                await failed.stop(policy.server_grace)
                await failed.start()
                ready_deadline = time.monotonic() + policy.ready_timeout
                continue
            await self._stop_or_timeout(POLL_INTERVAL)

    async def _stop_or_timeout(self, seconds: float) -> bool:
        """Wait `seconds` or until a stop is requested; whether one was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        return self._stop_requested.is_set()

    async def _ready(self) -> bool:
        """The sidecar's readiness and, until the instance is RUNNING, for an HTTP health check,
        the server's: the sidecar re-checks the server only every 10 s once serving, so a
        restarted server not listening yet would otherwise count as ready. A RUNNING instance
        is the sidecar's word alone (its own checks of the server, NVIDIA's cadence): probing
        the server 4 times a second would fill its access log."""
        probes = self.probes
        checks = [self._answers(probes.sidecar_ready_url, 200)]
        running = self.state is InstanceState.RUNNING
        if probes.server_health_url is not None and not running:
            checks.append(self._answers(probes.server_health_url, probes.server_expected_status))
        sidecar, *server = await asyncio.gather(*checks)
        return sidecar and all(server)

    async def _answers(self, url: str, expected: int) -> bool:
        try:
            async with self._session.get(url, timeout=_PROBE_TIMEOUT) as response:
                await response.read()
                if url == self.probes.sidecar_ready_url:
                    self._last_answer = f"answers {response.status}"
                return response.status == expected
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _describe(self, failed: ChildProcess, reason: str) -> str:
        tail = failed.log_tail(_LOG_LINES)
        return f"{reason}; {failed.log_path.name} ends with:\n{tail}" if tail else reason

    # -- the end -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self.state is not InstanceState.FAILED:
            self._set(InstanceState.STOPPING)
        await self._stop_processes(drain=self._drain, grace=self._stop_grace)
        if self.state is InstanceState.STOPPING:
            self._set(InstanceState.TERMINATED)

    async def _stop_processes(self, *, drain: bool, grace: float) -> None:
        deadline = time.monotonic() + grace
        if drain:
            await self.sidecar.stop(grace)
            remaining = max(deadline - time.monotonic(), 0.0)
            await self.server.stop(min(max(remaining, 1.0), self._policy.server_grace))
        else:
            await asyncio.gather(self.sidecar.stop(grace), self.server.stop(grace))
        for process in (self.sidecar, self.server):
            left = process.survivors()
            if left:
                _log.error(
                    "instance processes survived SIGKILL",
                    extra={**self._fields, "child": process.name, "pids": left},
                )

    def _set(self, state: InstanceState, error: str | None = None) -> None:
        status = self._status
        if status.state is state and status.error == error:
            return
        status.state, status.error, status.updated_at = state, error, time.time()
        _log.info("instance state", extra={**self._fields, "state": str(state)})
