"""What `dev` makes of a config's version for the NVCF API: its image in the catalog, its
function's create body, its deployment (pure functions; the calls themselves run in
test_dev_command.py against a real platform)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvcf_platform.backends.images import ImageCatalog, ImageEntry
from nvcf_platform.devstack.dev_register import (
    DevDeployError,
    catalog_beside,
    deployment_body,
    dev_image,
    function_body,
)
from nvcf_platform.devstack.stack_spec import FunctionSpec

FUNCTION = "6a1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a01"
VERSION = "6b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e01"


def spec(**changes: object) -> FunctionSpec:
    fields: dict[str, object] = {
        "command": ["python", "server.py", "--port", "8001"],
        "inference_port": 8001,
        "function_id": FUNCTION,
        "version_id": VERSION,
        "name": "Echo",
        "default_invocation_path": "/echo",
        "health_endpoint": "/ready",
        "container_env": {"MODEL": "small"},
        "sidecar_env": {"NVCF_LOG_LEVEL": "debug"},
        "sidecar_args": ("--health-check-interval", "1s"),
        "cwd": Path("/srv"),
        **changes,
    }
    return FunctionSpec(**fields)  # type: ignore[arg-type]


def test_a_version_becomes_an_image_on_its_port_or_on_a_port_per_instance() -> None:
    fixed = dev_image(spec())
    assert fixed == ImageEntry(
        image=f"dev.local/echo:{VERSION}",
        command=("python", "server.py", "--port", "8001"),
        cwd=Path("/srv"),
        env={"MODEL": "small"},
        port=8001,
        sidecar_env={"NVCF_LOG_LEVEL": "debug"},
        sidecar_args=("--health-check-interval", "1s"),
    )
    free = dev_image(spec(command=["python", "server.py", "--port={port}"]))
    assert free.port is None  # each instance gets its own, as {port}
    assert ImageCatalog([fixed]).image(fixed.image) == fixed  # a valid reference


def test_its_function_carries_the_config_ids_and_secrets_as_nvcf_takes_them() -> None:
    secrets = {"HF_TOKEN": "hf_x", "site": {"region": "us", "port": 443}}
    first = function_body(spec(secrets=secrets), "dev.local/echo:1", first=True)
    assert first == {
        "name": "Echo",
        "inferenceUrl": "/echo",
        "inferencePort": 8001,
        "healthUri": "/ready",
        "containerImage": "dev.local/echo:1",
        "versionId": VERSION,
        "id": FUNCTION,
        "secrets": [
            {"name": "HF_TOKEN", "value": "hf_x"},
            {"name": "site", "value": {"region": "us", "port": 443}},
        ],
    }
    later = function_body(spec(), "dev.local/echo:1", first=False)
    assert "id" not in later  # a next version: its function's id is in the path
    assert "secrets" not in later


def test_secrets_from_a_file_and_values_nvcf_refuses(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"TOKEN": "t"}))
    body = function_body(spec(secrets=path), "i:1", first=True)
    assert body["secrets"] == [{"name": "TOKEN", "value": "t"}]
    with pytest.raises(DevDeployError, match="secret 'N' must be a string or an object"):
        function_body(spec(secrets={"N": 7}), "i:1", first=True)


@pytest.mark.parametrize(
    ("sidecars", "min_instances", "bounds"),
    [(1, 1, (1, 1)), (2, 2, (2, 2)), (3, 1, (1, 3)), (0, 0, (0, 1)), (1, 2, (2, 2))],
)
def test_its_deployment_keeps_min_instances_and_scales_up_to_sidecars(
    sidecars: int, min_instances: int, bounds: tuple[int, int]
) -> None:
    body = deployment_body(
        spec(sidecars=sidecars, min_instances=min_instances, max_request_concurrency=4),
        "CPU",
        "LOCAL.CPU",
    )
    (specification,) = body["deploymentSpecifications"]
    assert (specification["minInstances"], specification["maxInstances"]) == bounds
    assert specification["maxRequestConcurrency"] == 4
    assert (specification["gpu"], specification["instanceType"]) == ("CPU", "LOCAL.CPU")


def test_the_catalog_shown_for_the_api_leaves_the_configs_own_images_out() -> None:
    own = dev_image(spec())
    other = ImageEntry("nvcr.io/acme/hello:1.0", ("python", "hello.py"))
    shown = catalog_beside(ImageCatalog([own, other]), [spec()])
    assert shown is not None
    assert shown.images == (other,)
    assert catalog_beside(ImageCatalog([own]), [spec()]) is None
    assert catalog_beside(None, [spec()]) is None
