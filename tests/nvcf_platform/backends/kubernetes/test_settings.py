"""The Kubernetes backend's settings file: defaults, and a clear error naming each bad key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.errors import ConfigError

from .conftest import make_settings

REQUIRED = {
    "utilsImage": "registry.example/nvcf-worker-sidecar:0.1.0",
    "grpcUrl": "http://platform:9090",
    "natsUrl": "nats://nats:4222",
}


def test_a_file_with_the_required_keys_gets_nvcas_defaults(tmp_path: Path) -> None:
    path = tmp_path / "kubernetes.json"
    path.write_text(json.dumps(REQUIRED))
    settings = KubernetesSettings.from_file(path)
    assert settings.namespace == "nvcf-backend"
    assert settings.termination_grace_period_seconds == 120
    assert settings.image_pull_policy == "IfNotPresent"
    assert settings.gpus == ()
    assert settings.gpu_count("H100", "x") is None


def test_the_gpu_catalogue_gives_each_instance_types_gpu_count() -> None:
    settings = make_settings(
        gpus=[
            {
                "name": "H100",
                "instanceTypes": [
                    {"name": "h100.x1", "gpuCount": 1},
                    {"name": "h100.x8", "value": "DGX-H100", "gpuCount": 8},
                ],
            }
        ]
    )
    assert settings.gpu_count("h100", "h100.x1") == 1
    assert settings.gpu_count("H100", "DGX-H100") == 8
    assert settings.gpu_count("A100", "h100.x1") is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"utilsImage": None}, "utilsImage is required"),
        ({"natsUrl": ""}, "natsUrl must be a non-empty string"),
        ({"namespace": "Not_A_Label"}, "namespace 'Not_A_Label' is not a DNS label"),
        ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy 'Sometimes'"),
        ({"terminationGracePeriodSeconds": -1}, "terminationGracePeriodSeconds"),
        ({"imagePullSecrets": "regcred"}, "imagePullSecrets must be a list of names"),
        ({"nodeSelector": {"pool": 1}}, "nodeSelector must map names to strings"),
        ({"tolerations": ["x"]}, "tolerations must be a list of objects"),
        ({"gpus": [{"name": "H100"}]}, "gpus[0] needs a name and instanceTypes[]"),
        (
            {"gpus": [{"name": "H100", "instanceTypes": [{"name": "a", "gpuCount": -1}]}]},
            "gpuCount",
        ),
        ({"replicas": 3}, "unknown keys ['replicas']"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_key(
    change: dict[str, object], words: str
) -> None:
    data = {**REQUIRED, **change}
    data = {key: value for key, value in data.items() if value is not None}
    with pytest.raises(ConfigError) as error:
        KubernetesSettings.from_mapping(data)
    assert words in str(error.value)


def test_an_unreadable_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read Kubernetes settings"):
        KubernetesSettings.from_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        KubernetesSettings.from_file(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        KubernetesSettings.from_file(listed)
