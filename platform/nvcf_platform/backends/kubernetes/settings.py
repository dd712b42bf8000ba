"""The Kubernetes backend's settings: a JSON file (`nvcf-sidecar platform --kubernetes FILE`),
rendered by the Helm chart (deploy/helm/nvcf) into a ConfigMap.

    {"namespace": "nvcf-backend", "utilsImage": "registry/nvcf-worker-sidecar:0.1.0",
     "grpcUrl": "http://nvcf-platform.nvcf.svc.cluster.local:9090",
     "natsUrl": "nats://nvcf-nats.nvcf.svc.cluster.local:4222"}

The keys are camelCase as in Kubernetes objects; `utilsImage`, `grpcUrl` and `natsUrl` are
required, the rest have defaults (docs/scale.md lists them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nvcf_platform.errors import ConfigError

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_TRITON_IMAGE", "KubernetesSettings"]

DEFAULT_NAMESPACE: Final = "nvcf-backend"
"""NVCA's namespace of worker pods."""
DEFAULT_TRITON_IMAGE: Final = "nvcr.io/nvidia/tritonserver:24.08-py3"
_PULL_POLICIES: Final = frozenset({"Always", "IfNotPresent", "Never"})
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_KEYS: Final = frozenset(
    {
        "namespace",
        "utilsImage",
        "tritonImage",
        "grpcUrl",
        "natsUrl",
        "workerToken",
        "imagePullPolicy",
        "imagePullSecrets",
        "nodeSelector",
        "tolerations",
        "serviceAccountName",
        "terminationGracePeriodSeconds",
        "utilsResources",
        "labels",
        "instanceTypeNodeLabel",
        "kubeconfig",
        "gpus",
        "clusterGroup",
    }
)


@dataclass(frozen=True)
class KubernetesSettings:
    """Where worker pods run and how they are built beyond what the function defines."""

    utils_image: str
    """The utils sidecar's image (docker/sidecar.Dockerfile)."""
    grpc_url: str
    """The platform's `nvcf.Worker` gRPC address as pods reach it (`NVCF_FQDN_GRPC`)."""
    nats_url: str
    """NATS as pods reach it, several URLs comma-separated (`NVCF_FQDN_NATS`)."""
    namespace: str = DEFAULT_NAMESPACE
    triton_image: str = DEFAULT_TRITON_IMAGE
    worker_token: str = "nvcf-worker-token"
    """`NVCF_WORKER_TOKEN` of the pods (the platform accepts any token)."""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    service_account_name: str | None = None
    termination_grace_period_seconds: int = 120
    """NVCA's 120 s: the utils sidecar finishes its requests after SIGTERM."""
    utils_resources: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    instance_type_node_label: str | None = None
    """When set, a pod requires a node whose label of this name is its instance type (NVCA:
    `nvca.nvcf.nvidia.io/instance-type`)."""
    kubeconfig: Path | None = None
    """A kubeconfig file; None: the pod's service account, else the default kubeconfig."""
    gpus: tuple[Mapping[str, Any], ...] = ()
    """The cluster's GPUs and instance types, as NVCA's GPU config lists them
    (`[{"name": "H100", "instanceTypes": [{"name": ..., "value": ..., "gpuCount": 8}]}]`):
    the catalogue deployments are checked against. Empty: the platform's own machine's."""
    cluster_group: str = "kubernetes"

    def gpu_count(self, gpu: str, instance_type: str) -> int | None:
        """`gpuCount` of that instance type of that GPU in `gpus`, None when not listed."""
        for entry in self.gpus:
            if str(entry.get("name", "")).casefold() != gpu.casefold():
                continue
            for kind in entry.get("instanceTypes", ()):
                if instance_type in (kind.get("name"), kind.get("value")):
                    return int(kind.get("gpuCount", 1))
        return None

    @classmethod
    def from_file(cls, path: str | Path) -> KubernetesSettings:
        """Read and check a settings file; every problem raises ConfigError naming the key."""
        source = Path(path)
        try:
            data = json.loads(source.read_text())
        except OSError as error:
            raise ConfigError(f"cannot read Kubernetes settings {source}: {error}") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON: {error}") from None
        return cls.from_mapping(data, source=str(source))

    @classmethod
    def from_mapping(
        cls, data: object, *, source: str = "Kubernetes settings"
    ) -> KubernetesSettings:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: must be a JSON object")
        unknown = set(data) - _KEYS
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        reader = _Reader(data, source)
        namespace = reader.text("namespace", DEFAULT_NAMESPACE)
        if not _DNS_LABEL.fullmatch(namespace):
            raise ConfigError(f"{source}: namespace {namespace!r} is not a DNS label")
        policy = reader.text("imagePullPolicy", "IfNotPresent")
        if policy not in _PULL_POLICIES:
            raise ConfigError(
                f"{source}: imagePullPolicy {policy!r}: one of {sorted(_PULL_POLICIES)}"
            )
        grace = data.get("terminationGracePeriodSeconds", 120)
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
            raise ConfigError(f"{source}: terminationGracePeriodSeconds must be an integer >= 0")
        kubeconfig = reader.optional_text("kubeconfig")
        gpus = reader.objects("gpus")
        for index, entry in enumerate(gpus):
            types = entry.get("instanceTypes")
            if not isinstance(entry.get("name"), str) or not isinstance(types, list):
                raise ConfigError(f"{source}: gpus[{index}] needs a name and instanceTypes[]")
            for kind in types:
                count = kind.get("gpuCount", 1) if isinstance(kind, dict) else None
                if not isinstance(kind, dict) or not isinstance(kind.get("name"), str):
                    raise ConfigError(f"{source}: gpus[{index}].instanceTypes: each needs a name")
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise ConfigError(f"{source}: gpus[{index}]: gpuCount must be an integer >= 0")
        return cls(
            utils_image=reader.text("utilsImage"),
            grpc_url=reader.text("grpcUrl"),
            nats_url=reader.text("natsUrl"),
            namespace=namespace,
            triton_image=reader.text("tritonImage", DEFAULT_TRITON_IMAGE),
            worker_token=reader.text("workerToken", "nvcf-worker-token"),
            image_pull_policy=policy,
            image_pull_secrets=tuple(reader.texts("imagePullSecrets")),
            node_selector=reader.labels("nodeSelector"),
            tolerations=tuple(reader.objects("tolerations")),
            service_account_name=reader.optional_text("serviceAccountName"),
            termination_grace_period_seconds=grace,
            utils_resources=reader.object("utilsResources"),
            labels=reader.labels("labels"),
            instance_type_node_label=reader.optional_text("instanceTypeNodeLabel"),
            kubeconfig=None if kubeconfig is None else Path(kubeconfig),
            gpus=tuple(gpus),
            cluster_group=reader.text("clusterGroup", "kubernetes"),
        )


@dataclass(frozen=True)
class _Reader:
    data: Mapping[str, Any]
    source: str

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise ConfigError(f"{self.source}: {key} is required")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.source}: {key} must be a non-empty string")
        return value.strip()

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.data.get(key) is not None else None

    def texts(self, key: str) -> list[str]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.source}: {key} must be a list of names")
        return value

    def object(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: {key} must be an object")
        return value

    def objects(self, key: str) -> list[dict[str, Any]]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{self.source}: {key} must be a list of objects")
        return value

    def labels(self, key: str) -> dict[str, str]:
        value = self.object(key)
        if not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{self.source}: {key} must map names to strings")
        return value
