"""The worker pod of an instance (reference §7.2): valid for Kubernetes, and built as NVCA builds
it from the function definition and the placement."""

from __future__ import annotations

import base64
import json
from typing import Any

from nvcf_platform.backends.kubernetes.pod import (
    instance_pod,
    plan_of_pod,
    secrets_object,
)

from .conftest import FUNCTION_ID, VERSION_ID, make_plan, make_settings


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def env(part: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in part["env"]}


def mounts(part: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {m["mountPath"]: (m["name"], m.get("readOnly", False)) for m in part["volumeMounts"]}


def test_a_container_function_on_two_gpus_is_a_valid_pod_built_as_nvca_builds_it(
    validate: Any,
) -> None:
    plan = make_plan(
        {
            "containerArgs": "--model small --threads 2",
            "containerEnvironment": [
                {"key": "MODEL", "value": "small"},
                {"key": "NVCF_REGION", "value": "spoofed"},
            ],
            "health": {"protocol": "HTTP", "uri": "/ready", "port": 9001, "timeout": "PT5S"},
        }
    )
    pod = instance_pod(plan, make_settings(), region="us-east-1")
    validate(pod)

    assert pod["metadata"]["name"] == plan.instance_id
    assert pod["metadata"]["namespace"] == "nvcf-backend"
    labels = pod["metadata"]["labels"]
    assert labels["function-id"] == FUNCTION_ID
    assert labels["function-version-id"] == VERSION_ID
    assert labels["app.kubernetes.io/managed-by"] == "nvcf-platform"
    assert labels["nca-id"] == "nca-nvcf-local-nca"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Always"
    assert spec["terminationGracePeriodSeconds"] == 120
    assert spec["automountServiceAccountToken"] is False
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert [c["name"] for c in spec["containers"]] == ["inference", "utils"]

    inference = container(pod, "inference")
    assert inference["image"] == "nvcr.io/acme/echo:1.0"
    assert inference["args"] == ["--model", "small", "--threads", "2"]
    assert inference["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert inference["resources"]["requests"] == {"nvidia.com/gpu": "2"}
    assert "ports" not in inference  # NVCA declares none, and no probe
    assert "readinessProbe" not in inference
    inference_env = env(inference)
    assert inference_env["MODEL"] == "small"
    assert inference_env["NVCF_REGION"] == "us-east-1"  # the platform's variables win
    assert inference_env["NVCF_FUNCTION_VERSION_ID"] == VERSION_ID
    assert inference_env["NVCF_BACKEND"] == "kubernetes"
    assert inference["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_BIND_SERVICE"],
    }
    assert mounts(inference) == {
        "/config/models": ("model-data", False),
        "/config/resources": ("model-data", False),
        "/var/inf": ("inference-data", False),
        "/var/run/nvcf/info": ("instance-data", True),
        "/dev/shm": ("dshm", False),
        "/var/secrets": ("secret-data", True),
    }

    utils = container(pod, "utils")
    assert utils["image"] == "registry.example/nvcf-worker-sidecar:0.1.0"
    utils_env = env(utils)
    assert utils_env["NVCF_FQDN_GRPC"] == "http://nvcf-platform.nvcf.svc.cluster.local:9090"
    assert utils_env["NVCF_FQDN_NATS"] == "nats://nvcf-nats.nvcf.svc.cluster.local:4222"
    assert utils_env["FUNCTION_ID"] == FUNCTION_ID
    assert utils_env["INSTANCE_ID"] == plan.instance_id
    assert utils_env["INFERENCE_PORT"] == "9000"
    assert utils_env["INFERENCE_HEALTH_ENDPOINT"] == "/ready"
    assert utils_env["INFERENCE_HEALTH_PORT"] == "9001"
    assert utils_env["INFERENCE_HEALTH_TIMEOUT"] == "PT5S"
    assert utils_env["INFERENCE_URL"] == "/echo"
    assert utils_env["MAX_REQUEST_CONCURRENCY"] == "4"
    assert utils_env["ATTACHED_GPU_COUNT"] == "2"
    assert utils_env["BASE_RESPONSE_DIR"] == "/var/inf/response"
    assert utils_env["HEALTH_PORT"] == "8080"
    assert utils["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": 8080}
    assert utils["readinessProbe"]["periodSeconds"] == 10
    assert utils["startupProbe"]["failureThreshold"] == 60
    assert utils["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert utils["securityContext"]["runAsNonRoot"] is True
    assert utils["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounts(utils)["/config/shared"] == ("config-data", False)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert volumes["secret-data"] == {"name": "secret-data", "emptyDir": {}}  # no secrets


def test_a_cpu_function_asks_for_no_gpu_and_tolerates_no_gpu_taint(validate: Any) -> None:
    plan = make_plan(gpu="CPU", instance_type="LOCAL.CPU")
    pod = instance_pod(plan, make_settings(), region="local")
    validate(pod)
    assert "resources" not in container(pod, "inference")
    assert "tolerations" not in pod["spec"]
    assert env(container(pod, "utils"))["ATTACHED_GPU_COUNT"] == "0"


def test_the_settings_place_and_shape_every_pod(validate: Any) -> None:
    settings = make_settings(
        namespace="gpu-workers",
        imagePullPolicy="Always",
        imagePullSecrets=["regcred"],
        nodeSelector={"pool": "gpu"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "nvcf"}],
        serviceAccountName="nvcf-worker",
        terminationGracePeriodSeconds=300,
        utilsResources={"requests": {"cpu": "250m", "memory": "256Mi"}},
        labels={"team": "ml"},
        instanceTypeNodeLabel="nvca.nvcf.nvidia.io/instance-type",
        gpus=[{"name": "H100", "instanceTypes": [{"name": "gpu.h100.x8", "gpuCount": 8}]}],
    )
    pod = instance_pod(make_plan(instance_type="gpu.h100.x8"), settings, region="local")
    validate(pod)
    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "gpu-workers"
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["serviceAccountName"] == "nvcf-worker"
    assert spec["terminationGracePeriodSeconds"] == 300
    assert len(spec["tolerations"]) == 2  # the settings' and the GPU taint's
    term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvca.nvcf.nvidia.io/instance-type", "operator": "In", "values": ["gpu.h100.x8"]}
    ]
    # The instance type's gpuCount of the settings' catalogue, not a guess from its name.
    assert container(pod, "inference")["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert container(pod, "utils")["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}}
    assert {c["imagePullPolicy"] for c in spec["containers"]} == {"Always"}


def test_secrets_are_a_secret_owned_by_the_pod_mounted_where_ess_writes_them(
    validate: Any,
) -> None:
    plan = make_plan(
        {
            "secrets": [
                {"name": "API_TOKEN", "value": "s3cret"},
                {"name": "N", "value": 7},
                {"name": "testing.site.com", "value": {"AWS_REGION": "us-west-2", "PORT": 443}},
            ]
        }
    )
    pod = instance_pod(plan, make_settings(), region="local")
    validate(pod)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["secret-data"]["secret"]["secretName"] == f"{plan.instance_id}-secrets"
    secret = secrets_object(plan, make_settings(), pod_uid="0b1c2d3e-4f50-4617-8a9b-0c1d2e3f4a5b")
    assert secret is not None
    validate(secret)
    assert json.loads(base64.b64decode(secret["data"]["secrets.json"])) == {
        "API_TOKEN": "s3cret",
        "N": "7",
        "testing.site.com": {"AWS_REGION": "us-west-2", "PORT": 443},  # an object stays one
    }
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Pod", plan.instance_id)
    assert secrets_object(make_plan(), make_settings(), pod_uid="x") is None


def test_a_pod_found_after_a_restart_gives_back_its_plan_ids_and_placement() -> None:
    plan = make_plan()
    found = plan_of_pod(instance_pod(plan, make_settings(), region="local"))
    for field in (
        "instance_id",
        "function_id",
        "function_version_id",
        "function_name",
        "nca_id",
        "deployment_id",
        "gpu_specification_id",
        "gpu",
        "instance_type",
        "max_request_concurrency",
    ):
        assert getattr(found, field) == getattr(plan, field), field
