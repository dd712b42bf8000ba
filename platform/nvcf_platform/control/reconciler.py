"""The reconcile loop: moves each deployment's instances toward what it asks for, and derives
the version's status from what it observes (reference §5).

Level-triggered and idempotent, as a Kubernetes controller: every tick (and every wake-up after
an API change) compares the stored deployments with the backend's instances, starts or stops
instances, and records the status. A restarted platform just reconciles again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol

from nats.errors import Error as NatsError

from nvcf_platform.control.autoscaler import Autoscaler
from nvcf_platform.control.loops import stop_loop
from nvcf_platform.control.plane import ControlPlane
from nvcf_platform.control.problems import ControlError
from nvcf_platform.control.records import FunctionStatus, VersionRecord, instant
from nvcf_platform.errors import NatsUnavailable, PlatformError

__all__ = ["InstanceBackend", "Reconciler", "next_status"]

_ZERO_UUID: Final = "00000000-0000-0000-0000-000000000000"
REPLACE_BACKOFF: Final = 2.0
"""Seconds before a failed instance is replaced; doubled after each further failure in a row."""
REPLACE_BACKOFF_CAP: Final = 30.0
_LIVE: Final = frozenset({"STARTING", "RUNNING"})
_log = logging.getLogger(__name__)


class InstanceBackend(Protocol):
    """Runs instances (`backends.local.LocalBackend`)."""

    name: str

    def check(self, plan: Any) -> None: ...

    async def start(self, plan: Any) -> Any: ...

    async def stop(self, instance_id: str, *, drain: bool = True) -> None: ...

    def instances(self, function_version_id: str | None = None) -> Sequence[Any]: ...


PlanFactory = Callable[[VersionRecord, dict[str, Any], str], Any]
"""(record, gpu specification, instance id) -> the backend's plan of one instance."""


def next_status(
    current: FunctionStatus,
    *,
    running: Sequence[int],
    live: Sequence[int],
    minimums: Sequence[int],
    failed: int,
    timed_out: bool,
) -> FunctionStatus:
    """The version's status from per-specification counts (§5's table).

    `running`/`live` (starting or running)/`minimums` are per specification; `failed` counts the
    instances that failed since the deployment began; `timed_out`: DEPLOYING for too long.
    """
    all_ready = all(r >= m for r, m in zip(running, minimums, strict=True))
    if current is FunctionStatus.DEPLOYING:
        if all_ready:
            return FunctionStatus.ACTIVE
        if (failed and failed >= sum(minimums) and not any(running)) or timed_out:
            return FunctionStatus.ERROR
        return FunctionStatus.DEPLOYING
    if current is FunctionStatus.ERROR or current is FunctionStatus.INACTIVE:
        return current
    if all_ready:
        return FunctionStatus.ACTIVE
    if not any(live) and not (current is FunctionStatus.ACTIVE and 0 in minimums):
        return FunctionStatus.DEGRADED
    return FunctionStatus.DEGRADING


class Reconciler:
    """`async with Reconciler(...)`: the loop runs inside the block; leaving it stops every
    instance (drained) and waits for pending teardowns, bounded."""

    def __init__(
        self,
        plane: ControlPlane,
        backend: InstanceBackend,
        plan_factory: PlanFactory,
        *,
        remove_queue: Callable[[str], Any],
        queue_backlog: Callable[[str], Any],
        interval: float = 1.0,
        deploy_timeout: float = 900.0,
        drain_timeout: float = 60.0,
        region: str = "local",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._plane = plane
        self._backend = backend
        self._plan = plan_factory
        self._remove_queue = remove_queue
        self._queue_backlog = queue_backlog
        self._interval = interval
        self._deploy_timeout = deploy_timeout
        self._drain_timeout = drain_timeout
        self._region = region
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._teardowns: set[asyncio.Task[Any]] = set()
        self._removing: set[str] = set()
        self._failures: dict[str, list[str]] = {}
        """Per version: errors of the instances that failed since its deployment began."""
        self.autoscaler: Autoscaler | None = None
        """Set by the runtime: moves each version's desired instances within its bounds."""
        self._replace_after: dict[str, float] = {}
        """Per GPU specification: no replacement instance before this time (after failures)."""
        self._consecutive: dict[str, int] = {}
        self._ticks = 0
        self._tick_done = asyncio.Condition()

    # -- the plane's hooks ----------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def check_definition(self, record: VersionRecord, specifications: list[dict[str, Any]]) -> None:
        """Refuse (400) a deployment this backend cannot run (Helm chart, unknown image...)."""
        for spec in specifications:
            self._backend.check(self._plan(record, spec, "check"))

    def tear_down(self, record: VersionRecord, *, drain_queue: bool, forget: bool) -> None:
        """Stop the version's instances in the background: after its queue is served when
        `drain_queue`, in-flight requests always finish (the sidecars drain on SIGTERM)."""
        self._removing.add(record.version_id)
        task = asyncio.create_task(
            self._tear_down(record, drain_queue=drain_queue, forget=forget),
            name=f"nvcf-teardown-{record.version_id}",
        )
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def _tear_down(self, record: VersionRecord, *, drain_queue: bool, forget: bool) -> None:
        version_id = record.version_id
        fields = {"function_id": record.function_id, "function_version_id": version_id}
        try:
            if drain_queue:
                await self._wait_queue_served(version_id)
            instances = list(self._backend.instances(version_id))
            await asyncio.gather(
                *(self._backend.stop(i.instance_id, drain=True) for i in instances),
                return_exceptions=True,
            )
            with contextlib.suppress(NatsError, TimeoutError, NatsUnavailable):
                await self._remove_queue(version_id)
            if not forget:
                await self._plane.forget_deployment(version_id)
            self._failures.pop(version_id, None)
            if self.autoscaler is not None:
                self.autoscaler.forget(version_id)
            _log.info("deployment removed", extra={**fields, "instances": len(instances)})
        except Exception as error:
            _log.error("deployment teardown failed", extra={**fields, "error": repr(error)})
        finally:
            self._removing.discard(version_id)

    async def _wait_queue_served(self, version_id: str) -> None:
        deadline = self._clock() + self._drain_timeout
        while self._clock() < deadline:
            try:
                if await self._queue_backlog(version_id) == 0:
                    return
            except (NatsError, TimeoutError, PlatformError) as error:
                _log.warning("queue backlog unknown", extra={"error": repr(error)})
            await asyncio.sleep(0.2)
        _log.warning(
            "undeploy: queue not served within the drain timeout",
            extra={"function_version_id": version_id, "drain_timeout": self._drain_timeout},
        )

    # -- the loop -----------------------------------------------------------------------------

    async def wait_ticks(self, count: int = 1) -> None:
        async with self._tick_done:
            target = self._ticks + count
            await self._tick_done.wait_for(lambda: self._ticks >= target)

    async def tick(self) -> None:
        """One reconcile round over every deployed version."""
        for record in self._plane.records():
            deployment = record.deployment
            if deployment is None or deployment.removing or record.version_id in self._removing:
                continue
            try:
                await self._reconcile(record)
            except Exception as error:  # one version must not stop the others
                _log.error(
                    "reconcile failed",
                    extra={"function_version_id": record.version_id, "error": repr(error)},
                )
        async with self._tick_done:
            self._ticks += 1
            self._tick_done.notify_all()

    async def _reconcile(self, record: VersionRecord) -> None:
        deployment = record.deployment
        assert deployment is not None
        if record.status is FunctionStatus.ERROR:
            return
        instances = [
            i for i in self._backend.instances(record.version_id) if str(i.state) != "TERMINATED"
        ]
        failures = self._failures.setdefault(record.version_id, [])
        running, live, minimums = [], [], []
        for spec in deployment.specifications:
            spec_id = spec["gpuSpecificationId"]
            own = [i for i in instances if i.plan.gpu_specification_id == spec_id]
            for instance in own:
                if str(instance.state) == "FAILED":
                    failures.append(instance.error or "instance failed")
                    self._note_failure(spec_id)
                    await self._backend.stop(instance.instance_id, drain=False)
            alive = [i for i in own if str(i.state) in _LIVE]
            target = self.desired(record, spec)
            if len(alive) < target and self._clock() >= self._replace_after.get(spec_id, 0.0):
                for _ in range(target - len(alive)):
                    await self._start(record, spec)
            elif len(alive) > target:
                # Prefer stopping instances that are not serving yet.
                extra = sorted(alive, key=lambda i: (str(i.state) == "RUNNING", i.created_at))
                for instance in extra[: len(alive) - target]:
                    self._stop_later(instance.instance_id, drain=True)
            current = [
                i
                for i in self._backend.instances(record.version_id)
                if i.plan.gpu_specification_id == spec_id
            ]
            running.append(sum(1 for i in current if str(i.state) == "RUNNING"))
            live.append(sum(1 for i in current if str(i.state) in _LIVE))
            minimums.append(int(spec["minInstances"]))
        timed_out = (
            record.status is FunctionStatus.DEPLOYING
            and self._clock() - deployment.deploying_since > self._deploy_timeout
        )
        status = next_status(
            record.status,
            running=running,
            live=live,
            minimums=minimums,
            failed=len(failures),
            timed_out=timed_out,
        )
        health_info = None
        if status is FunctionStatus.ERROR:
            health_info = self._health_info(record, failures, timed_out)
            for instance in self._backend.instances(record.version_id):
                if str(instance.state) in _LIVE:
                    self._stop_later(instance.instance_id, drain=False)
        elif status is FunctionStatus.ACTIVE:
            health_info = ()
            failures.clear()
            for spec in deployment.specifications:
                self._consecutive.pop(spec["gpuSpecificationId"], None)
        await self._plane.set_status(record.version_id, status, health_info=health_info)

    def _note_failure(self, spec_id: str) -> None:
        """An instance of `spec_id` failed: its replacement waits, longer after each failure in
        a row (2, 4, 8 ... 30 s), so a crash-looping image does not spin."""
        count = self._consecutive.get(spec_id, 0) + 1
        self._consecutive[spec_id] = count
        delay = min(REPLACE_BACKOFF * 2 ** (count - 1), REPLACE_BACKOFF_CAP)
        self._replace_after[spec_id] = self._clock() + delay

    def _stop_later(self, instance_id: str, *, drain: bool) -> None:
        """Stop an instance in the background (a drained stop may take its in-flight requests'
        time; the reconcile round does not wait for it)."""
        task = asyncio.create_task(
            self._backend.stop(instance_id, drain=drain), name=f"nvcf-stop-{instance_id}"
        )
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    def desired(self, record: VersionRecord, spec: dict[str, Any]) -> int:
        """Instances a specification should have now: the autoscaler's count, else its minimum."""
        if self.autoscaler is None:
            return int(spec["minInstances"])
        return self.autoscaler.desired(record, spec)

    def live(self, record: VersionRecord, spec: dict[str, Any]) -> int:
        """Instances of `spec` starting or running."""
        return self._count(record, spec, _LIVE)

    def ready(self, record: VersionRecord, spec: dict[str, Any]) -> int:
        """Instances of `spec` running."""
        return self._count(record, spec, frozenset({"RUNNING"}))

    def _count(self, record: VersionRecord, spec: dict[str, Any], states: frozenset[str]) -> int:
        spec_id = spec["gpuSpecificationId"]
        return sum(
            1
            for i in self._backend.instances(record.version_id)
            if i.plan.gpu_specification_id == spec_id and str(i.state) in states
        )

    async def _start(self, record: VersionRecord, spec: dict[str, Any]) -> None:
        instance_id = f"{record.version_id[:8]}-{uuid.uuid4().hex[:12]}"
        plan = self._plan(record, spec, instance_id)
        try:
            await self._backend.start(plan)
        except ControlError as error:
            self._failures.setdefault(record.version_id, []).append(error.detail)
        _log.info(
            "instance started",
            extra={"function_version_id": record.version_id, "instance_id": instance_id},
        )

    def _health_info(
        self, record: VersionRecord, failures: list[str], timed_out: bool
    ) -> tuple[dict[str, Any], ...]:
        assert record.deployment is not None
        if timed_out:
            error = f"deployment not ready within {self._deploy_timeout:g} s"
            if failures:
                error += f"; last instance error: {failures[-1]}"
        else:
            error = (
                failures[-1]
                if failures
                else "Missing healthInfo or no errors in healthInfo.errorLog."
            )
        return tuple(
            {
                "icmsRequestId": _ZERO_UUID,
                "gpu": spec["gpu"],
                "backend": spec.get("backend", self._backend.name),
                "instanceType": spec["instanceType"],
                "error": error,
            }
            for spec in record.deployment.specifications
        )

    def instances_json(self, record: VersionRecord) -> list[dict[str, Any]]:
        """NVCF's `activeInstances` (InstanceDto) of a version: its starting and running ones."""
        return [
            {
                "instanceId": i.instance_id,
                "functionId": record.function_id,
                "functionVersionId": record.version_id,
                "instanceType": i.plan.instance_type,
                "instanceStatus": str(i.state),
                "ncaId": record.nca_id,
                "gpu": i.plan.gpu,
                "backend": self._backend.name,
                "location": self._region,
                "instanceCreatedAt": instant(i.created_at),
                "instanceUpdatedAt": instant(i.updated_at),
            }
            for i in self._backend.instances(record.version_id)
            if str(i.state) in _LIVE
        ]

    def counts(self, record: VersionRecord, spec: dict[str, Any]) -> dict[str, int]:
        """Desired, ready (running) and starting instances of one specification."""
        return {
            "desired": 0
            if record.status is FunctionStatus.INACTIVE
            else self.desired(record, spec),
            "ready": self.ready(record, spec),
            "starting": self._count(record, spec, frozenset({"STARTING"})),
        }

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()

    async def __aenter__(self) -> Reconciler:
        for record in self._plane.records():
            if record.deployment is not None and record.deployment.removing:
                self.tear_down(record, drain_queue=True, forget=False)  # interrupted undeploy
        self._task = asyncio.create_task(self._run(), name="nvcf-reconciler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_loop(task, self._stopping, self._wake)
        if self._teardowns:
            await asyncio.wait(set(self._teardowns), timeout=self._drain_timeout + 30)
