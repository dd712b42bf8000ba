"""What the control plane stores per function version, and the NVCF answers built from it.

One `VersionRecord` per version holds its definition (the validated create body), its status
and its deployment, so that every change is one write to the KV bucket (`store.py`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "BUSY_STATUSES",
    "INVOCABLE_STATUSES",
    "Deployment",
    "FunctionStatus",
    "VersionRecord",
    "instant",
]


class FunctionStatus(enum.StrEnum):
    """NVCF's function-version statuses (reference §5)."""

    ACTIVE = "ACTIVE"
    DEPLOYING = "DEPLOYING"
    DEGRADING = "DEGRADING"
    DEGRADED = "DEGRADED"
    ERROR = "ERROR"
    INACTIVE = "INACTIVE"


BUSY_STATUSES: Final = frozenset(
    {
        FunctionStatus.ACTIVE,
        FunctionStatus.DEPLOYING,
        FunctionStatus.DEGRADING,
        FunctionStatus.DEGRADED,
    }
)
"""Statuses of a version with a live deployment (a new POST deploy is refused: use PATCH)."""
INVOCABLE_STATUSES: Final = frozenset({FunctionStatus.ACTIVE, FunctionStatus.DEGRADING})


def instant(unix_time: float) -> str:
    """A Unix time as Java's Instant prints it (UTC, `Z`, milliseconds)."""
    moment = datetime.fromtimestamp(unix_time, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Deployment:
    """A version's deployment: NVCF's FunctionDeploymentDto less what the record already has."""

    deployment_id: str
    specifications: tuple[dict[str, Any], ...]
    """Validated GpuSpecificationDto objects, each with its `gpuSpecificationId`."""
    created_at: float
    last_updated_at: float
    deploying_since: float
    """When the version last entered DEPLOYING (the deploy timeout counts from here)."""
    health_info: tuple[dict[str, Any], ...] = ()
    """NVCF's `healthInfo`: one entry per specification whose instances all failed."""
    removing: bool = False
    """Undeployed: the version is INACTIVE and the deployment goes once its queue is drained."""

    def specification(self, gpu_specification_id: str) -> dict[str, Any] | None:
        for spec in self.specifications:
            if spec["gpuSpecificationId"] == gpu_specification_id:
                return spec
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "deploymentId": self.deployment_id,
            "specifications": list(self.specifications),
            "createdAt": self.created_at,
            "lastUpdatedAt": self.last_updated_at,
            "deployingSince": self.deploying_since,
            "healthInfo": list(self.health_info),
            "removing": self.removing,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        return cls(
            deployment_id=data["deploymentId"],
            specifications=tuple(data["specifications"]),
            created_at=float(data["createdAt"]),
            last_updated_at=float(data["lastUpdatedAt"]),
            deploying_since=float(data.get("deployingSince", data["createdAt"])),
            health_info=tuple(data.get("healthInfo") or ()),
            removing=bool(data.get("removing", False)),
        )


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One function version as the control plane keeps it (immutable; changes make a copy)."""

    function_id: str
    version_id: str
    nca_id: str
    definition: dict[str, Any]
    """The validated create body (`validation.function_definition`), secrets' values included."""
    status: FunctionStatus = FunctionStatus.INACTIVE
    created_at: float = field(default_factory=time.time)
    deployment: Deployment | None = None

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    def evolve(self, **changes: Any) -> VersionRecord:
        return replace(self, **changes)

    def function_json(self, *, instances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """NVCF's FunctionDto: nulls omitted, secrets by name only."""
        body: dict[str, Any] = {
            "id": self.function_id,
            "ncaId": self.nca_id,
            "versionId": self.version_id,
            "status": str(self.status),
            "createdAt": instant(self.created_at),
        }
        for key, value in self.definition.items():
            if key == "secrets":
                value = [{"name": secret["name"]} for secret in value]
            body[key] = value
        if instances:
            body["activeInstances"] = instances
        return body

    def deployment_json(self, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """NVCF's FunctionDeploymentDto (the version must have a deployment)."""
        deployment = self.deployment
        if deployment is None:
            raise ValueError(f"version {self.version_id} has no deployment")
        body: dict[str, Any] = {
            "functionId": self.function_id,
            "functionVersionId": self.version_id,
            "deploymentId": deployment.deployment_id,
            "functionName": self.name,
            "ncaId": self.nca_id,
            "functionStatus": str(self.status),
            "deploymentSpecifications": list(deployment.specifications),
            "createdAt": instant(deployment.created_at),
            "lastUpdatedAt": instant(deployment.last_updated_at),
        }
        if deployment.health_info:
            body["healthInfo"] = list(deployment.health_info)
        if extra:
            body.update(extra)
        return body

    def to_json(self) -> dict[str, Any]:
        return {
            "functionId": self.function_id,
            "versionId": self.version_id,
            "ncaId": self.nca_id,
            "definition": self.definition,
            "status": str(self.status),
            "createdAt": self.created_at,
            "deployment": None if self.deployment is None else self.deployment.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VersionRecord:
        deployment = data.get("deployment")
        return cls(
            function_id=data["functionId"],
            version_id=data["versionId"],
            nca_id=data["ncaId"],
            definition=dict(data["definition"]),
            status=FunctionStatus(data["status"]),
            created_at=float(data["createdAt"]),
            deployment=None if deployment is None else Deployment.from_json(deployment),
        )
