"""`ControlPlane`: NVCF's function lifecycle (register, deploy, update, undeploy, delete).

It owns the version records (persisted by `ControlStore`), keeps the invocation registry in step
with them, decides which version an invocation may reach (reference §5: only ACTIVE and
DEGRADING), and hands deployments to the reconciler, which runs instances on a backend.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from nvcf_platform.control.catalog import Catalog
from nvcf_platform.control.problems import ControlError, bad_request, not_found
from nvcf_platform.control.records import (
    BUSY_STATUSES,
    INVOCABLE_STATUSES,
    Deployment,
    FunctionStatus,
    VersionRecord,
)
from nvcf_platform.control.registry import FunctionVersion, Registry, canonical_uuid
from nvcf_platform.control.store import ControlStore
from nvcf_platform.control.validation import function_definition, function_update, pinned_ids
from nvcf_platform.control.validation_deploy import (
    deployment_specifications,
    patch_specification,
    put_specifications,
)
from nvcf_platform.errors import FunctionNotFound, FunctionVersionNotFound

__all__ = ["ControlPlane", "DeploymentDriver"]

_log = logging.getLogger(__name__)


class DeploymentDriver(Protocol):
    """What runs deployments for the plane (the reconciler): checks them, is woken on a change,
    tears them down."""

    def wake(self) -> None: ...

    def tear_down(self, record: VersionRecord, *, drain_queue: bool, forget: bool) -> None: ...

    def check_definition(
        self, record: VersionRecord, specifications: list[dict[str, Any]]
    ) -> None: ...


class ControlPlane:
    """Function versions and their deployments, for the API routes and the invocation path.

    Every change is saved to the store before it is answered; the registry (what pexec, the
    worker gRPC API and status polls look versions up in) follows the records. Versions of the
    registry file are "configured": listed and invocable as before, never deployed here.
    """

    def __init__(
        self,
        registry: Registry,
        store: ControlStore,
        catalog: Catalog,
        *,
        nca_id: str,
        provision: Callable[[str], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._store = store
        self._catalog = catalog
        self._nca_id = nca_id
        self._provision = provision
        self._clock = clock
        self._records: dict[str, VersionRecord] = {}
        self._lock = asyncio.Lock()
        self._teardown: DeploymentDriver | None = None
        self.on_invocation: Callable[[str], None] | None = None
        """Called with the version id of every invocation routed to a registered version."""

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def nca_id(self) -> str:
        return self._nca_id

    def attach(self, teardown: DeploymentDriver) -> None:
        """Connect the reconciler (it needs the plane, the plane needs it)."""
        self._teardown = teardown

    async def load(self) -> list[VersionRecord]:
        """Read every stored record and register its version (at start-up)."""
        for record in await self._store.load():
            if (
                self._registry.contains(record.version_id)
                and record.version_id not in self._records
            ):
                _log.warning(
                    "stored version shadows a configured one; the stored one is kept",
                    extra={"function_version_id": record.version_id},
                )
            self._records[record.version_id] = record
            self._registry.add(_registry_version(record))
        return list(self._records.values())

    # -- reads ------------------------------------------------------------------------------------

    def records(self) -> list[VersionRecord]:
        return list(self._records.values())

    def managed(self, version_id: str) -> VersionRecord | None:
        """The record of a version registered through the API (None for configured ones)."""
        return self._records.get(version_id)

    def status_of(self, version_id: str) -> FunctionStatus | None:
        """The status of a registered version (None for the registry file's versions)."""
        record = self._records.get(version_id)
        return None if record is None else record.status

    def record(self, function_id: str, version_id: str) -> VersionRecord:
        """The record of `version_id` of `function_id`, or the NVCF 404."""
        key = canonical_uuid(version_id)
        record = None if key is None else self._records.get(key)
        if record is None or record.function_id != canonical_uuid(function_id):
            raise not_found(
                f"Function id '{function_id}', version '{version_id}': "
                f"Not found in account '{self._nca_id}'"
            )
        return record

    def by_deployment(self, deployment_id: str) -> VersionRecord:
        for record in self._records.values():
            if record.deployment is not None and record.deployment.deployment_id == deployment_id:
                return record
        raise not_found(f"Deployment id '{deployment_id}': Deployment not found")

    # -- invocation -------------------------------------------------------------------------------

    def resolve(self, function_id: str, version_id: str | None) -> FunctionVersion:
        """The version an invocation reaches (§5): a named version must be invocable; without one,
        a random invocable version. 404 for unknown or not deployed, 400 for DEGRADED only."""
        try:
            function = self._registry.function(function_id)
        except FunctionNotFound:
            raise ControlError(404, "function not found") from None
        if version_id is not None:
            try:
                version = self._registry.version(function_id, version_id)
            except FunctionVersionNotFound:
                raise ControlError(404, "function version not found") from None
            self._check_invocable(function.function_id, [version], version_id)
            return self._invoked(version)
        candidates = [v for v in function.versions if self._invocable(v)]
        if not candidates:
            self._check_invocable(function.function_id, list(function.versions), None)
        return self._invoked(candidates[0] if len(candidates) == 1 else random.choice(candidates))

    def _invoked(self, version: FunctionVersion) -> FunctionVersion:
        if self.on_invocation is not None and version.function_version_id in self._records:
            self.on_invocation(version.function_version_id)
        return version

    def _invocable(self, version: FunctionVersion) -> bool:
        record = self._records.get(version.function_version_id)
        return record is None or record.status in INVOCABLE_STATUSES

    def _check_invocable(
        self, function_id: str, versions: list[FunctionVersion], version_id: str | None
    ) -> None:
        if any(self._invocable(v) for v in versions):
            return
        statuses = {self._records[v.function_version_id].status for v in versions}
        if FunctionStatus.DEGRADED in statuses:
            raise ControlError(
                400, f"Function id '{function_id}': DEGRADED function cannot be invoked"
            )
        raise ControlError(
            404,
            f"Function id '{function_id}' version '{version_id or ''}': "
            f"Specified function in account '{self._nca_id}' is not found",
        )

    # -- functions and versions -------------------------------------------------------------------

    async def create(self, body: object, function_id: str | None = None) -> VersionRecord:
        """Register a function (new id) or a new version of `function_id`; status INACTIVE.

        An extension NVIDIA's API does not have: the body may name the ids to use (`id` for a
        new function, `versionId` for its new version), so that a setup can be registered
        again with the same ids (`nvcf-sidecar dev --config`); 409 when they are taken.
        """
        definition = function_definition(body)
        pinned_function, pinned_version = pinned_ids(body, new_function=function_id is None)
        async with self._lock:
            self._check_free(pinned_function, pinned_version)
            if function_id is not None:
                known = canonical_uuid(function_id)
                try:
                    if known is None:
                        raise FunctionNotFound(function_id)
                    self._registry.function(known)
                except FunctionNotFound:
                    raise not_found(
                        f"Function id '{function_id}': Not found in account '{self._nca_id}'"
                    ) from None
                function_id = known
            record = VersionRecord(
                function_id=function_id or pinned_function or str(uuid.uuid4()),
                version_id=pinned_version or str(uuid.uuid4()),
                nca_id=self._nca_id,
                definition=definition,
                created_at=self._clock(),
            )
            await self._save(record)
            self._registry.add(_registry_version(record))
        _log.info("function version registered", extra=_fields(record))
        return record

    def _check_free(self, function_id: str | None, version_id: str | None) -> None:
        """409 when a pinned id is already a function's or a version's."""
        if function_id is not None:
            try:
                self._registry.function(function_id)
            except FunctionNotFound:
                pass
            else:
                raise ControlError(
                    409, f"Function id '{function_id}': already exists in account '{self._nca_id}'"
                )
        if version_id is not None and (
            version_id in self._records or self._registry.contains(version_id)
        ):
            raise ControlError(
                409,
                f"Function version id '{version_id}': already exists in account '{self._nca_id}'",
            )

    async def update(self, function_id: str, version_id: str, body: object) -> VersionRecord:
        """PUT of a version's metadata (tags, rate limit): the rest is immutable."""
        changes = function_update(body)
        async with self._lock:
            record = self.record(function_id, version_id)
            definition = {**record.definition, **changes}
            record = record.evolve(
                definition={k: v for k, v in definition.items() if v is not None}
            )
            await self._save(record)
        return record

    async def delete(self, function_id: str, version_id: str) -> None:
        """Delete a version in any status; a deployed one is torn down (in-flight finish)."""
        async with self._lock:
            record = self.record(function_id, version_id)
            self._registry.remove(record.version_id)
            del self._records[record.version_id]
            await self._store.remove(record.version_id)
        _log.info("function version deleted", extra=_fields(record))
        if record.deployment is not None and self._teardown is not None:
            self._teardown.tear_down(record, drain_queue=False, forget=True)

    # -- deployments ------------------------------------------------------------------------------

    async def deploy(self, function_id: str, version_id: str, body: object) -> VersionRecord:
        """POST deployment (§4): only from INACTIVE without a deployment; DEPLOYING, or ACTIVE at
        once when every specification has minInstances 0."""
        record = self.record(function_id, version_id)
        prefix = f"Function id '{record.function_id}', version '{record.version_id}': "
        if record.status is FunctionStatus.ERROR:
            raise bad_request(prefix + "Function already has a deployment with errors")
        if record.status in BUSY_STATUSES:
            raise bad_request(
                prefix + f"Status {record.status}, use PATCH endpoint to update gpu-specification"
            )
        if record.deployment is not None:
            raise bad_request(
                prefix + "Function deployment found for INACTIVE function. Wait for current "
                "deployment to be gracefully completed and removed."
            )
        specifications = deployment_specifications(
            body,
            self._catalog,
            function_id=record.function_id,
            version_id=record.version_id,
            definition=record.definition,
        )
        if self._teardown is not None:
            self._teardown.check_definition(record, specifications)
        await self._provision(record.version_id)
        now = self._clock()
        scale_to_zero = all(spec["minInstances"] == 0 for spec in specifications)
        async with self._lock:
            current = self.record(function_id, version_id)
            if current.deployment is not None or current.status is not FunctionStatus.INACTIVE:
                raise bad_request(prefix + f"Status {current.status}, use PATCH endpoint")
            record = current.evolve(
                status=FunctionStatus.ACTIVE if scale_to_zero else FunctionStatus.DEPLOYING,
                deployment=Deployment(
                    deployment_id=str(uuid.uuid4()),
                    specifications=tuple(specifications),
                    created_at=now,
                    last_updated_at=now,
                    deploying_since=now,
                ),
            )
            await self._save(record)
        _log.info(
            "function version deployed", extra={**_fields(record), "status": str(record.status)}
        )
        self._wake()
        return record

    def deployment(self, function_id: str, version_id: str) -> VersionRecord:
        record = self.record(function_id, version_id)
        if record.deployment is None:
            raise not_found(f"Function version '{record.version_id}': Deployment not found")
        return record

    async def replace_specifications(
        self, function_id: str, version_id: str, body: object
    ) -> VersionRecord:
        """The deprecated PUT: new min/max/concurrency for the existing specifications."""
        async with self._lock:
            record = self.deployment(function_id, version_id)
            assert record.deployment is not None
            specifications = put_specifications(
                body,
                [dict(spec) for spec in record.deployment.specifications],
                function_id=record.function_id,
                version_id=record.version_id,
            )
            record = await self._update_specifications(record, specifications)
        self._wake()
        return record

    async def patch_specification(
        self, deployment_id: str, gpu_specification_id: str, body: object
    ) -> dict[str, Any]:
        """PATCH of one GPU specification's bounds; answers the updated specification."""
        async with self._lock:
            record = self.by_deployment(deployment_id)
            assert record.deployment is not None
            existing = record.deployment.specification(gpu_specification_id)
            if existing is None:
                raise not_found(
                    f"Invalid request: Unknown gpu-specification-id '{gpu_specification_id}'"
                )
            if record.status not in BUSY_STATUSES or record.deployment.removing:
                raise bad_request(
                    f"Function id '{record.function_id}', version '{record.version_id}': "
                    f"Invalid status '{record.status}'"
                )
            updated: dict[str, Any] = patch_specification(
                body,
                dict(existing),
                function_id=record.function_id,
                version_id=record.version_id,
            )
            specifications = [
                updated if spec["gpuSpecificationId"] == gpu_specification_id else spec
                for spec in record.deployment.specifications
            ]
            await self._update_specifications(record, specifications)
        self._wake()
        return updated

    async def undeploy(self, function_id: str, version_id: str) -> VersionRecord:
        """DELETE deployment: INACTIVE at once (new invocations refused); the instances serve
        what is queued and in flight, then stop, and the deployment is removed."""
        async with self._lock:
            record = self.deployment(function_id, version_id)
            assert record.deployment is not None
            if record.deployment.removing:
                return record
            record = record.evolve(
                status=FunctionStatus.INACTIVE,
                deployment=_evolve_deployment(record.deployment, self._clock(), removing=True),
            )
            await self._save(record)
        _log.info("function version undeployed", extra=_fields(record))
        if self._teardown is not None:
            self._teardown.tear_down(record, drain_queue=True, forget=False)
        return record

    # -- for the reconciler -------------------------------------------------------------------------

    async def set_status(
        self,
        version_id: str,
        status: FunctionStatus,
        *,
        health_info: tuple[dict[str, Any], ...] | None = None,
    ) -> VersionRecord | None:
        """Record a status the reconciler observed (no-op for a version gone or undeployed)."""
        async with self._lock:
            record = self._records.get(version_id)
            if record is None or record.deployment is None or record.deployment.removing:
                return None
            deployment = record.deployment
            if health_info is not None and health_info != deployment.health_info:
                deployment = _evolve_deployment(deployment, self._clock(), health_info=health_info)
            if record.status is status and deployment is record.deployment:
                return record
            previous = record.status
            record = record.evolve(status=status, deployment=deployment)
            await self._save(record)
        if previous is not status:
            level = logging.INFO if status is FunctionStatus.ACTIVE else logging.WARNING
            _log.log(
                level,
                "function version status changed",
                extra={**_fields(record), "status": str(status), "previous_status": str(previous)},
            )
        return record

    async def forget_deployment(self, version_id: str) -> None:
        """The teardown of an undeploy is done: the version may be deployed again."""
        async with self._lock:
            record = self._records.get(version_id)
            if record is None or record.deployment is None or not record.deployment.removing:
                return
            await self._save(record.evolve(deployment=None))

    # -- helpers -------------------------------------------------------------------------------------

    async def _update_specifications(
        self, record: VersionRecord, specifications: list[dict[str, Any]]
    ) -> VersionRecord:
        assert record.deployment is not None
        if self._teardown is not None:  # new bounds the backend cannot run are refused too
            self._teardown.check_definition(record, specifications)
        deployment = _evolve_deployment(
            record.deployment, self._clock(), specifications=tuple(specifications)
        )
        record = record.evolve(deployment=deployment)
        await self._save(record)
        return record

    async def _save(self, record: VersionRecord) -> None:
        await self._store.save(record)
        self._records[record.version_id] = record

    def _wake(self) -> None:
        if self._teardown is not None:
            self._teardown.wake()


def _evolve_deployment(deployment: Deployment, now: float, **changes: Any) -> Deployment:
    return replace(deployment, last_updated_at=now, **changes)


def _registry_version(record: VersionRecord) -> FunctionVersion:
    return FunctionVersion(
        function_id=record.function_id,
        function_version_id=record.version_id,
        function_name=record.name,
        invocation_path=str(record.definition.get("inferenceUrl", "")),
    )


def _fields(record: VersionRecord) -> dict[str, str]:
    return {"function_id": record.function_id, "function_version_id": record.version_id}
