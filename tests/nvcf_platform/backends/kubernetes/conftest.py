"""Plans and settings of the Kubernetes backend's tests, and the validator of rendered objects."""

from __future__ import annotations

from typing import Any

import pytest

from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.backends.plan import InstancePlan

FUNCTION_ID = "8f3c3b0e-6d8e-4f0a-9c55-2f1e8b7a6d01"
VERSION_ID = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
KUBERNETES_VERSION = "1.37.0"


def make_settings(**overrides: Any) -> KubernetesSettings:
    data: dict[str, Any] = {
        "utilsImage": "registry.example/nvcf-worker-sidecar:0.1.0",
        "grpcUrl": "http://nvcf-platform.nvcf.svc.cluster.local:9090",
        "natsUrl": "nats://nvcf-nats.nvcf.svc.cluster.local:4222",
        **overrides,
    }
    return KubernetesSettings.from_mapping(data)


def make_plan(definition: dict[str, Any] | None = None, **fields: Any) -> InstancePlan:
    base: dict[str, Any] = {
        "instance_id": f"{VERSION_ID[:8]}-a1b2c3d4e5f6",
        "function_id": FUNCTION_ID,
        "function_version_id": VERSION_ID,
        "function_name": "echo",
        "nca_id": "nvcf-local",
        "deployment_id": "5d6e7f80-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
        "gpu_specification_id": "6e7f8091-2b3c-4d5e-8f90-1a2b3c4d5e6f",
        "gpu": "H100",
        "instance_type": "LOCAL.GPU.H100_2x",
        "max_request_concurrency": 4,
        "definition": {
            "name": "echo",
            "inferenceUrl": "/echo",
            "inferencePort": 9000,
            "containerImage": "nvcr.io/acme/echo:1.0",
            **(definition or {}),
        },
    }
    base.update(fields)
    return InstancePlan(**base)


@pytest.fixture
def validate() -> Any:
    """`validate(obj)`: the object is valid for Kubernetes (strict: no unknown fields)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")

    def check(obj: dict[str, Any]) -> None:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)

    return check
