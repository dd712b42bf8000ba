"""The worker pod of one instance, as NVCA builds it (reference §7.2): the function's container
(`inference`) beside the utils sidecar (`utils`), sharing emptyDir volumes, one pod per instance.

Differences from NVCA, on purpose: no `init`/ESS containers (the function's secrets are a
Secret owned by the pod, mounted where ESS writes them), and no models download (the backend
refuses functions with `models[]`). Manifests are plain dicts, as the API takes them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.backends.plan import InstancePlan
from nvcf_platform.backends.variables import platform_variables, utils_variables

__all__ = [
    "BACKEND_NAME",
    "INSTANCE_LABEL",
    "MANAGED_BY",
    "MANAGED_SELECTOR",
    "gpu_count",
    "instance_pod",
    "plan_of_pod",
    "secrets_object",
]

BACKEND_NAME: Final = "kubernetes"
MANAGED_BY: Final = "nvcf-platform"
MANAGED_SELECTOR: Final = f"app.kubernetes.io/managed-by={MANAGED_BY}"
"""The label selector of every pod this backend made."""
INSTANCE_LABEL: Final = "nvcf.nvidia.io/instance-id"
UTILS_HEALTH_PORT: Final = 8080
"""NVCA probes the utils container here (reserved in the function's pod)."""
SECRETS_DIR: Final = "/var/secrets"
_DEFAULT_INFERENCE_PORT: Final = 8000
_LABEL_VALUE: Final = re.compile(r"[^A-Za-z0-9_.-]")
_GPU_SUFFIX: Final = re.compile(r"_(\d+)x$")
_CPU_TYPES: Final = frozenset({"CPU", "LOCAL.CPU"})
# (volume, mount path, read only) per container; NVCA's layout.
_INFERENCE_MOUNTS: Final = (
    ("model-data", "/config/models", False),
    ("model-data", "/config/resources", False),
    ("inference-data", "/var/inf", False),
    ("instance-data", "/var/run/nvcf/info", True),
    ("dshm", "/dev/shm", False),
    ("secret-data", SECRETS_DIR, True),
)
_UTILS_MOUNTS: Final = (
    ("config-data", "/config/shared", False),
    ("inference-data", "/var/inf", False),
    ("instance-data", "/var/run/nvcf/info", False),
    ("secret-data", SECRETS_DIR, True),
)


def gpu_count(plan: InstancePlan) -> int:
    """GPUs of the instance when the settings' `gpus` do not list its instance type: none for
    the CPU entry (or no placement), n for a type named `<...>_<n>x`, else one."""
    if plan.gpu.upper() == "CPU" or plan.instance_type.upper() in _CPU_TYPES:
        return 0
    if not plan.gpu and not plan.instance_type:
        return 0
    found = _GPU_SUFFIX.search(plan.instance_type)
    return int(found.group(1)) if found else 1


def secret_name(instance_id: str) -> str:
    return f"{instance_id}-secrets"


def instance_pod(
    plan: InstancePlan, settings: KubernetesSettings, *, region: str
) -> dict[str, Any]:
    """The Pod manifest of `plan`'s instance (name = instance id) in `settings.namespace`."""
    image = plan.container_image
    port = _inference_port(plan.definition)
    listed = settings.gpu_count(plan.gpu, plan.instance_type)
    gpus = gpu_count(plan) if listed is None else listed
    inference_env = {
        **plan.container_environment,
        **platform_variables(plan, region=region, backend=BACKEND_NAME, environment="kubernetes"),
    }
    inference: dict[str, Any] = {
        "name": "inference",
        "image": image or settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": _env(inference_env),
        "volumeMounts": _mounts(_INFERENCE_MOUNTS),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        },
    }
    args = plan.container_args
    if args:
        inference["args"] = args
    if gpus:
        inference["resources"] = {
            "limits": {"nvidia.com/gpu": str(gpus)},
            "requests": {"nvidia.com/gpu": str(gpus)},
        }
    utils: dict[str, Any] = {
        "name": "utils",
        "image": settings.utils_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": _env(_utils_environment(plan, settings, image=image, port=port, gpus=gpus)),
        "ports": [{"name": "health", "containerPort": UTILS_HEALTH_PORT, "protocol": "TCP"}],
        "startupProbe": _probe("/v1/health/live", period=1, failures=60),
        "readinessProbe": _probe("/v1/health/ready", period=10, failures=2, timeout=6),
        "livenessProbe": _probe("/v1/health/live", period=10, failures=2),
        "volumeMounts": _mounts(_UTILS_MOUNTS),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if settings.utils_resources:
        utils["resources"] = dict(settings.utils_resources)
    tolerations = [dict(t) for t in settings.tolerations]
    if gpus and not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    spec: dict[str, Any] = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "automountServiceAccountToken": False,
        "containers": [inference, utils],
        "volumes": _volumes(plan.instance_id, has_secrets=bool(plan.secrets)),
    }
    if settings.service_account_name:
        spec["serviceAccountName"] = settings.service_account_name
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if tolerations:
        spec["tolerations"] = tolerations
    if settings.instance_type_node_label and plan.instance_type:
        spec["affinity"] = _instance_type_affinity(
            settings.instance_type_node_label, plan.instance_type
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": plan.instance_id,
            "namespace": settings.namespace,
            "labels": _labels(plan, settings),
            "annotations": _annotations(plan, region),
        },
        "spec": spec,
    }


def secrets_object(
    plan: InstancePlan, settings: KubernetesSettings, *, pod_uid: str
) -> dict[str, Any] | None:
    """The Secret holding `secrets.json` (`{"NAME": "value"}`, as ESS writes it), owned by the
    instance's pod so that deleting the pod deletes it; None when the function has none."""
    secrets = plan.secrets
    if not secrets:
        return None
    document = json.dumps(secrets, sort_keys=True).encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(plan.instance_id),
            "namespace": settings.namespace,
            "labels": _labels(plan, settings),
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": plan.instance_id,
                    "uid": pod_uid,
                }
            ],
        },
        "data": {"secrets.json": base64.b64encode(document).decode()},
    }


def plan_of_pod(pod: Mapping[str, Any]) -> InstancePlan:
    """The identifying part of the plan a pod was made from (a pod found after a restart):
    ids and placement, read back from its labels and annotations; no definition."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    notes = metadata.get("annotations") or {}
    concurrency = notes.get("nvcf.nvidia.io/max-request-concurrency", "1")
    return InstancePlan(
        instance_id=str(metadata.get("name", "")),
        function_id=str(labels.get("function-id", "")),
        function_version_id=str(labels.get("function-version-id", "")),
        function_name=str(notes.get("function-name", "")),
        nca_id=str(notes.get("nca-id", "")),
        deployment_id=str(labels.get("nvcf.nvidia.io/deployment-id", "")),
        gpu_specification_id=str(labels.get("nvcf.nvidia.io/gpu-specification-id", "")),
        gpu=str(notes.get("nvcf.nvidia.io/gpu", "")),
        instance_type=str(notes.get("nvcf.nvidia.io/instance-type-name", "")),
        max_request_concurrency=int(concurrency) if concurrency.isdigit() else 1,
    )


# -- parts ----------------------------------------------------------------------------------------


def _utils_environment(
    plan: InstancePlan, settings: KubernetesSettings, *, image: str | None, port: int, gpus: int
) -> dict[str, str]:
    health = plan.health
    env = {
        "NVCF_WORKER_TOKEN": settings.worker_token,
        "NVCF_FQDN_GRPC": settings.grpc_url,
        "NVCF_FQDN_NATS": settings.nats_url,
        "FUNCTION_ID": plan.function_id,
        "FUNCTION_VERSION_ID": plan.function_version_id,
        "FUNCTION_NAME": plan.function_name,
        "INSTANCE_ID": plan.instance_id,
        "INFERENCE_PORT": str(port),
        "INFERENCE_HEALTH_ENDPOINT": health.uri,
        "MAX_REQUEST_CONCURRENCY": str(max(1, plan.max_request_concurrency)),
        "HEALTH_PORT": str(UTILS_HEALTH_PORT),
        "BASE_RESPONSE_DIR": "/var/inf/response",
        "BASE_ASSET_DIR": "/var/inf/inputAssets",
        "SHARED_CONFIG_DIR": "/config/shared",
        "ATTACHED_GPU_COUNT": str(gpus),
        **utils_variables(plan, image),
    }
    if health.port is not None:
        env["INFERENCE_HEALTH_PORT"] = str(health.port)
    return env


def _inference_port(definition: Mapping[str, Any]) -> int:
    value = definition.get("inferencePort", _DEFAULT_INFERENCE_PORT)
    return value if isinstance(value, int) and not isinstance(value, bool) else 8000


def _env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in values.items()]


def _mounts(layout: tuple[tuple[str, str, bool], ...]) -> list[dict[str, Any]]:
    return [
        {"name": volume, "mountPath": path, **({"readOnly": True} if read_only else {})}
        for volume, path, read_only in layout
    ]


def _volumes(instance_id: str, *, has_secrets: bool) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": name, "emptyDir": {}}
        for name in ("model-data", "config-data", "inference-data", "instance-data")
    ]
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    if has_secrets:
        secret = {"secretName": secret_name(instance_id), "defaultMode": 0o440}
        volumes.append({"name": "secret-data", "secret": secret})
    else:
        volumes.append({"name": "secret-data", "emptyDir": {}})
    return volumes


def _probe(path: str, *, period: int, failures: int, timeout: int = 1) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": UTILS_HEALTH_PORT},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _label_value(value: str) -> str:
    cleaned = _LABEL_VALUE.sub("-", value)[:63].strip("-_.")
    return cleaned


def _labels(plan: InstancePlan, settings: KubernetesSettings) -> dict[str, str]:
    labels = {
        **settings.labels,
        "app.kubernetes.io/name": "nvcf-worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "function-id": plan.function_id,
        "function-version-id": plan.function_version_id,
        "nca-id": _label_value(f"nca-{plan.nca_id}-nca"),
        INSTANCE_LABEL: plan.instance_id,
        "nvcf.nvidia.io/deployment-id": _label_value(plan.deployment_id),
        "nvcf.nvidia.io/gpu-specification-id": _label_value(plan.gpu_specification_id),
    }
    return {key: value for key, value in labels.items() if value}


def _annotations(plan: InstancePlan, region: str) -> dict[str, str]:
    return {
        "nca-id": plan.nca_id,
        "function-name": plan.function_name,
        "nvcf.nvidia.io/region": region,
        "nvcf.nvidia.io/backend": BACKEND_NAME,
        "nvcf.nvidia.io/gpu": plan.gpu,
        "nvcf.nvidia.io/instance-type-name": plan.instance_type,
        "nvcf.nvidia.io/max-request-concurrency": str(plan.max_request_concurrency),
    }


def _instance_type_affinity(label: str, instance_type: str) -> dict[str, Any]:
    term = {"matchExpressions": [{"key": label, "operator": "In", "values": [instance_type]}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }
