"""The Helm chart of deploy/helm/nvcf, rendered offline by Helm's own library (helm-python-sdk,
no cluster, no `helm` binary): every object valid for the Kubernetes API (kubernetes-validate,
strict), the platform's pod and flags, the worker pods' settings file, RBAC, the optional
objects, the values schema, and helm lint.

The NATS chart (a dependency) cannot be downloaded here. Helm renders a chart whose dependency
is declared but missing from charts/ (lint warns about it), so these tests render the chart
directory itself: they cover its own templates, with nats.enabled true (the NATS URL follows the
subchart's naming) and false (externalNats.url).
"""

from __future__ import annotations

import argparse
import base64
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.invocation.app import HEALTH_PATH
from nvcf_platform.main import add_arguments, settings_from_args

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (dev extra)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (dev extra)"
)
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "nvcf"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
RELEASE = "demo"
NAMESPACE = "nvcf"
FULLNAME = "demo-nvcf"
CONFIG_FILE = "/etc/nvcf/kubernetes.json"

EXTERNAL_NATS = {
    "nats": {"enabled": False},
    "externalNats": {"url": "nats://nats-0.messaging:4222,nats://nats-1.messaging:4222"},
    "jetstreamReplicas": 1,
}
# Every optional value set, none at its default.
EVERYTHING = {
    "fullnameOverride": "platform",
    "image": {
        "repository": "registry.example.com/platform",
        "tag": "1.2.3",
        "pullPolicy": "Always",
    },
    "imagePullSecrets": ["registry-creds"],
    "service": {
        "type": "NodePort",
        "httpPort": 80,
        "grpcPort": 50051,
        "attachPort": 9443,
        "annotations": {"a": "b"},
    },
    "clusterDomain": "k8s.example",
    "platform": {
        "region": "us-east-1",
        "streamStorage": "file",
        "logLevel": "DEBUG",
        "publicUrl": "https://nvcf.example.com",
        "extraArgs": ["--deploy-timeout=1800"],
        "extraEnv": [{"name": "NVCF_PLATFORM_NCA_ID", "value": "my-nca"}],
    },
    "jetstreamReplicas": 5,
    "apiKeys": {"existingSecret": "caller-keys", "secretKey": "tokens"},
    "serviceAccount": {"create": False, "name": "nvcf-platform"},
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    "podAnnotations": {"prometheus.io/scrape": "true"},
    "podLabels": {"team": "inference"},
    "terminationGracePeriodSeconds": 60,
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "control-plane", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}
                ]
            }
        }
    },
    "workers": {
        "namespace": "gpu-workers",
        "createNamespace": True,
        "utilsImage": {"repository": "registry.example.com/sidecar", "tag": "1.2.3"},
        "tritonImage": {"repository": "registry.example.com/tritonserver", "tag": "25.01-py3"},
        "imagePullPolicy": "Always",
        "imagePullSecrets": ["registry-creds"],
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}],
        "serviceAccountName": "worker",
        "terminationGracePeriodSeconds": 300,
        "utilsResources": {"requests": {"cpu": "200m"}},
        "labels": {"team": "inference"},
        "gpus": [
            {
                "name": "H100",
                "instanceTypes": [{"name": "DGX-H100_1x", "value": "h100-1x", "gpuCount": 1}],
            }
        ],
        "clusterGroup": "lab",
        "instanceTypeNodeLabel": "nvca.nvcf.nvidia.io/instance-type",
    },
    "nats": {"enabled": False},
    "externalNats": {"url": "tls://nats.example.com:4222"},
}
VALUE_SETS = {"defaults": {}, "external-nats": EXTERNAL_NATS, "everything-set": EVERYTHING}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(
    chart: Any, values: dict[str, Any], *, name: str = RELEASE, subcharts: bool = False
) -> list[dict[str, Any]]:
    """The release's objects, in template order: the chart's own, and with `subcharts` the NATS
    chart's too when charts/ holds it (after `helm dependency update`)."""
    manifests = chart.render(values, name=name, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    for path in sorted(manifests):
        own = path.startswith(f"{chart.name}/templates/")
        if path.endswith(".yaml") and (own or subcharts):
            objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return objects


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(obj["kind"] for obj in objects)


def platform_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["platform"]
    container: dict[str, Any] = containers[0]
    return container


def worker_settings(objects: list[dict[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(only(objects, "ConfigMap")["data"]["kubernetes.json"])
    return document


# -- every object --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_is_valid_for_kubernetes(chart: Any, values: dict[str, Any]) -> None:
    for obj in render(chart, values, subcharts=True):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    objects = render(chart, values)
    assert objects
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "nvcf"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_the_default_release_has_the_platform_rbac_and_the_workers_namespace(chart: Any) -> None:
    objects = render(chart, {})
    assert kinds(objects) == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    namespaces = {"Namespace": None, "Role": "nvcf-backend", "RoleBinding": "nvcf-backend"}
    for obj in objects:
        assert obj["metadata"].get("namespace") == namespaces.get(obj["kind"], NAMESPACE)


def test_the_chart_version_is_the_projects(chart: Any) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart.metadata["appVersion"] == project["version"]
    image = platform_container(render(chart, {}))["image"]
    assert image == f"nvcf-worker-platform:{project['version']}"


# -- the platform --------------------------------------------------------------------------------


def test_the_platform_runs_as_non_root_with_probes_and_mounts(chart: Any) -> None:
    objects = render(chart, {})
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two platforms at once
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' user
    container = platform_container(objects)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    http = {port["name"]: port["containerPort"] for port in container["ports"]}["http"]
    assert f"--port={http}" in container["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": HEALTH_PATH, "port": "http"}, probe

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    config = mounts[str(Path(CONFIG_FILE).parent)]
    assert config["readOnly"] is True
    assert (
        volumes[config["name"]]["configMap"]["name"]
        == only(objects, "ConfigMap")["metadata"]["name"]
    )
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {}  # the root filesystem is read-only

    assert pod["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]
    (api_keys,) = (env for env in container["env"] if env["name"] == "NVCF_PLATFORM_API_KEYS")
    secret = only(objects, "Secret")
    reference = api_keys["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["data"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_platform_flags_are_valid_platform_settings(chart: Any, values: dict[str, Any]) -> None:
    objects = render(chart, values)
    container = platform_container(objects)
    assert container["command"] == ["nvcf-sidecar", "platform"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = settings_from_args(parser.parse_args(container["args"]), environ={})

    service = only(objects, "Service")
    ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    host = f"{service['metadata']['name']}.{NAMESPACE}.svc"
    assert settings.host == "0.0.0.0"
    assert (settings.port, settings.grpc_port) == (ports["http"], ports["grpc"])
    assert settings.kubernetes_path == Path(CONFIG_FILE)
    assert settings.nats_url == worker_settings(objects)["natsUrl"]
    merged = chart.merge_values(values)
    assert settings.replicas == merged["jetstreamReplicas"]
    assert settings.region == merged["platform"]["region"]
    assert settings.stream_storage == merged["platform"]["streamStorage"]
    public_url = merged["platform"]["publicUrl"]
    assert settings.public_url == (public_url or f"http://{host}.cluster.local:{ports['http']}")
    assert settings.attach_port == ports["attach"] == platform_ports(container)["attach"]
    public_attach_url = merged["platform"]["publicAttachUrl"]
    assert settings.public_attach_url == (
        public_attach_url or f"http://{host}.{merged['clusterDomain']}:{ports['attach']}"
    )


def test_attach_port_0_runs_no_attach_listener(chart: Any) -> None:
    objects = render(chart, {"service": {"attachPort": 0}})
    container = platform_container(objects)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = settings_from_args(parser.parse_args(container["args"]), environ={})
    assert settings.attach_port is None
    assert "attach" not in platform_ports(container)
    service_ports = {port["name"] for port in only(objects, "Service")["spec"]["ports"]}
    assert service_ports == {"http", "grpc"}


def platform_ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def test_extra_flags_and_environment_reach_the_platform(chart: Any) -> None:
    container = platform_container(render(chart, EVERYTHING))
    assert container["args"][-1] == "--deploy-timeout=1800"
    assert {"name": "NVCF_PLATFORM_NCA_ID", "value": "my-nca"} in container["env"]


# -- the worker pods' settings -------------------------------------------------------------------


def test_kubernetes_json_carries_the_worker_settings(chart: Any) -> None:
    objects = render(chart, {})
    document = worker_settings(objects)
    service = only(objects, "Service")
    grpc = {port["name"]: port["port"] for port in service["spec"]["ports"]}["grpc"]
    assert document == {
        "namespace": "nvcf-backend",
        "utilsImage": f"nvcf-worker-sidecar:{chart.metadata['appVersion']}",
        "tritonImage": "nvcr.io/nvidia/tritonserver:24.08-py3",
        "grpcUrl": f"http://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{grpc}",
        # The NATS chart's client Service: <release>-nats.
        "natsUrl": f"nats://{RELEASE}-nats.{NAMESPACE}.svc.cluster.local:4222",
        "imagePullPolicy": "IfNotPresent",
        "imagePullSecrets": [],
        "nodeSelector": {},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 120,
        "utilsResources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "1Gi"},
        },
        "labels": {},
    }
    settings = KubernetesSettings.from_mapping(document)  # the platform accepts it
    assert settings.service_account_name is None


def test_kubernetes_json_carries_every_worker_value(chart: Any) -> None:
    document = worker_settings(render(chart, EVERYTHING))
    workers = chart.merge_values(EVERYTHING)["workers"]  # maps merge with the defaults
    settings = KubernetesSettings.from_mapping(document)
    assert settings.namespace == "gpu-workers"
    assert settings.utils_image == "registry.example.com/sidecar:1.2.3"
    assert settings.triton_image == "registry.example.com/tritonserver:25.01-py3"
    assert settings.grpc_url == "http://platform.nvcf.svc.k8s.example:50051"
    assert settings.nats_url == "tls://nats.example.com:4222"
    assert settings.image_pull_policy == "Always"
    assert settings.image_pull_secrets == ("registry-creds",)
    assert settings.node_selector == workers["nodeSelector"]
    assert list(settings.tolerations) == workers["tolerations"]
    assert settings.service_account_name == "worker"
    assert settings.termination_grace_period_seconds == 300
    assert settings.utils_resources == workers["utilsResources"]
    assert settings.labels == workers["labels"]
    assert list(settings.gpus) == workers["gpus"]
    assert settings.cluster_group == "lab"
    assert settings.instance_type_node_label == "nvca.nvcf.nvidia.io/instance-type"


@pytest.mark.parametrize(
    ("release", "nats", "url"),
    [
        ("demo", {}, "nats://demo-nats.nvcf.svc.cluster.local:4222"),
        # The NATS chart names its objects after a release whose name holds "nats".
        ("nats-prod", {}, "nats://nats-prod.nvcf.svc.cluster.local:4222"),
        ("demo", {"fullnameOverride": "queue"}, "nats://queue.nvcf.svc.cluster.local:4222"),
        (
            "demo",
            {"service": {"name": "nats-client"}},
            "nats://nats-client.nvcf.svc.cluster.local:4222",
        ),
        ("demo", {"namespaceOverride": "mq"}, "nats://demo-nats.mq.svc.cluster.local:4222"),
        (
            "demo",
            {"config": {"nats": {"port": 4333}}},
            "nats://demo-nats.nvcf.svc.cluster.local:4333",
        ),
    ],
)
def test_the_nats_url_is_the_nats_charts_service(
    chart: Any, release: str, nats: dict[str, Any], url: str
) -> None:
    objects = render(chart, {"nats": {"enabled": True, **nats}}, name=release)
    assert worker_settings(objects)["natsUrl"] == url
    assert f"--nats={url}" in platform_container(objects)["args"]


# -- RBAC and the optional objects ---------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_role_grants_exactly_the_worker_verbs(chart: Any, values: dict[str, Any]) -> None:
    objects = render(chart, values)
    workers_namespace = worker_settings(objects)["namespace"]
    role = only(objects, "Role")
    assert role["metadata"]["namespace"] == workers_namespace
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert all(set(rule) == {"apiGroups", "resources", "verbs"} for rule in role["rules"])
    pods = {("", "pods", verb) for verb in ("get", "list", "watch", "create", "delete", "patch")}
    assert grants == pods | {("", "secrets", "create")}

    binding = only(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == workers_namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]


def test_the_service_account_is_only_created_when_asked(chart: Any) -> None:
    objects = render(chart, EVERYTHING)
    assert "ServiceAccount" not in kinds(objects)
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nvcf-platform"


def test_no_namespace_unless_the_chart_creates_it(chart: Any) -> None:
    assert only(render(chart, {}), "Namespace")["metadata"]["name"] == "nvcf-backend"
    off = render(chart, {"workers": {"createNamespace": False}})
    assert "Namespace" not in kinds(off)
    # The release's own namespace exists before the release.
    own = render(chart, {"workers": {"namespace": NAMESPACE, "createNamespace": True}})
    assert "Namespace" not in kinds(own)
    assert only(own, "Role")["metadata"]["namespace"] == NAMESPACE


def test_an_existing_api_key_secret_renders_no_secret(chart: Any) -> None:
    objects = render(chart, {"apiKeys": {"existingSecret": "caller-keys", "secretKey": "tokens"}})
    assert "Secret" not in kinds(objects)
    (api_keys,) = (
        env for env in platform_container(objects)["env"] if env["name"] == "NVCF_PLATFORM_API_KEYS"
    )
    assert api_keys["valueFrom"]["secretKeyRef"] == {"name": "caller-keys", "key": "tokens"}


def test_the_charts_secret_holds_the_given_or_a_generated_key(chart: Any) -> None:
    given = only(render(chart, {"apiKeys": {"keys": ["key-a", "key-b"]}}), "Secret")
    assert base64.b64decode(given["data"]["api-keys"]).decode() == "key-a,key-b"
    generated = base64.b64decode(only(render(chart, {}), "Secret")["data"]["api-keys"]).decode()
    assert len(generated) >= 32
    assert generated.isalnum()


# -- values schema and lint ----------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_schema_accepts_the_value_sets(chart: Any, values: dict[str, Any]) -> None:
    chart.validate_schema(values)


def test_the_schema_leaves_the_nats_values_to_the_nats_chart(chart: Any) -> None:
    chart.validate_schema({"nats": {"enabled": True, "natsBox": {"enabled": False}}})


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"service": {"httpPort": 0}}, "/service/httpPort"),
        ({"service": {"grpcPort": 65536}}, "/service/grpcPort"),
        ({"unknown": True}, "'unknown'"),
        ({"workers": {"unknownKey": 1}}, "'unknownKey'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"workers": {"imagePullPolicy": "Sometimes"}}, "/workers/imagePullPolicy"),
        ({"platform": {"streamStorage": "disk"}}, "/platform/streamStorage"),
        ({"jetstreamReplicas": 0}, "/jetstreamReplicas"),
        ({"replicaCount": 2}, "/replicaCount"),
        ({"workers": {"namespace": "Not_A_Label"}}, "/workers/namespace"),
        ({"nats": {"enabled": False}}, "/externalNats/url"),
        ({"externalNats": {"url": "http://nats:4222"}}, "/externalNats/url"),
    ],
)
def test_the_schema_refuses_bad_values(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(values)


def test_rendering_checks_the_schema(chart: Any) -> None:
    with pytest.raises(helm.HelmValuesError, match="/service/httpPort"):
        chart.render({"service": {"httpPort": 0}}, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_finds_no_errors(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    # The one warning allowed: charts/ lacks the NATS chart (`helm dependency update` fetches it).
    assert set(problems) <= {"chart directory is missing these dependencies: nats"}
