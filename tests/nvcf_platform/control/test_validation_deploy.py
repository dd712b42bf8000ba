"""Deployment bodies (reference §4.1, §4.3, §6.3): create against the catalogue, PUT and PATCH."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from nvcf_platform.control.catalog import Catalog
from nvcf_platform.control.problems import ControlError
from nvcf_platform.control.validation_deploy import (
    deployment_specifications,
    patch_specification,
    put_specifications,
)

FID, FVID = "f-1", "v-1"
PREFIX = "Function id 'f-1', version 'v-1': "
CONTAINER = {"name": "echo", "containerImage": "img"}
HELM = {"name": "chart", "helmChart": "oci://r/c-1.tgz", "helmChartServiceName": "svc"}
CATALOG = Catalog.from_mapping(
    [
        {
            "name": "H100",
            "instanceTypes": [
                {
                    "name": "LOCAL.GPU.H100_1x",
                    "default": True,
                    "systemMemory": "128G",
                    "gpuMemory": "80G",
                },
                {"name": "LOCAL.GPU.H100_2x", "gpuCount": 2},
            ],
        }
    ]
)
SPEC = {"gpu": "H100", "instanceType": "LOCAL.GPU.H100_1x", "minInstances": 0, "maxInstances": 2}


def deploy(
    *specs: dict[str, Any], definition: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    return deployment_specifications(
        {"deploymentSpecifications": list(specs)},
        CATALOG,
        function_id=FID,
        version_id=FVID,
        definition=definition or CONTAINER,
    )


def refused(*specs: dict[str, Any], definition: dict[str, Any] | None = None) -> str:
    with pytest.raises(ControlError) as error:
        deploy(*specs, definition=definition)
    assert error.value.status == 400
    return error.value.detail


def bean(field: str, rejected: str, message: str) -> str:
    return (
        f"Validation failed: [object=functionDeploymentRequest, "
        f"field=deploymentSpecifications[0].{field}, rejected={rejected}, message={message}]"
    )


def test_a_minimal_spec_gets_an_id_the_defaults_and_the_instance_details() -> None:
    (spec,) = deploy(SPEC)
    uuid.UUID(spec.pop("gpuSpecificationId"), version=4)
    assert spec == {
        "gpu": "H100",
        "instanceType": "LOCAL.GPU.H100_1x",
        "backend": "local",
        "minInstances": 0,
        "maxInstances": 2,
        "maxRequestConcurrency": 1,
        "preferredOrder": 1,
        "systemMemory": "128G",
        "gpuMemory": "80G",
    }


def test_each_spec_gets_a_fresh_id() -> None:
    first, second = deploy(SPEC, {**SPEC, "instanceType": "LOCAL.GPU.H100_2x"})
    assert first["gpuSpecificationId"] != second["gpuSpecificationId"]
    assert deploy(SPEC)[0]["gpuSpecificationId"] != deploy(SPEC)[0]["gpuSpecificationId"]


def test_names_are_case_insensitive_and_take_the_catalogue_spelling() -> None:
    (spec,) = deploy(
        {**SPEC, "gpu": "h100", "instanceType": "local.gpu.h100_2X", "backend": "LOCAL"}
    )
    assert (spec["gpu"], spec["instanceType"], spec["backend"]) == (
        "H100",
        "LOCAL.GPU.H100_2x",
        "local",
    )


def test_output_only_fields_on_input_are_ignored() -> None:
    (spec,) = deploy({**SPEC, "gpuSpecificationId": "mine", "cpuArch": "x", "gpuMemory": "1G"})
    assert spec["gpuSpecificationId"] != "mine"
    assert "cpuArch" not in spec
    assert spec["gpuMemory"] == "80G"


def test_body_must_hold_a_non_empty_list() -> None:
    message = "Invalid request: Empty or null gpu specs in the request payload"
    assert refused() == message
    with pytest.raises(ControlError, match="Empty or null gpu specs"):
        deployment_specifications(
            {}, CATALOG, function_id=FID, version_id=FVID, definition=CONTAINER
        )
    with pytest.raises(ControlError, match="must be a JSON array"):
        deployment_specifications(
            {"deploymentSpecifications": {"a": 1}},
            CATALOG,
            function_id=FID,
            version_id=FVID,
            definition=CONTAINER,
        )
    with pytest.raises(ControlError, match="must be a JSON object"):
        deploy("H100")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "rejected", "message"),
    [
        ("gpu", None, "null", "must not be null"),
        ("gpu", " ", " ", "must not be blank"),
        ("instanceType", None, "null", "must not be null"),
        ("instanceType", "", "", "must not be blank"),
        ("minInstances", None, "null", "must not be null"),
        ("minInstances", -1, "-1", "must be greater than or equal to 0"),
        ("minInstances", True, "true", "must be an integer"),
        ("maxInstances", None, "null", "must not be null"),
        ("maxInstances", 0, "0", "must be greater than 0"),
        ("maxInstances", 1.5, "1.5", "must be an integer"),
        ("maxRequestConcurrency", 0, "0", "must be greater than or equal to 1"),
        ("maxRequestConcurrency", 16385, "16385", "must be less than or equal to 16384"),
        ("preferredOrder", 0, "0", "must be greater than or equal to 1"),
        ("preferredOrder", 100, "100", "must be less than or equal to 99"),
        ("configuration", "x", "x", "must be a JSON object"),
        ("clusters", "c", "c", "must be a JSON array"),
        ("regions", [1], "1", "must be a string"),
        ("availabilityZones", [None], "null", "must be a string"),
        ("autoscalingConfiguration", [], "[]", "must be a JSON object"),
    ],
)
def test_spec_field_rules(field: str, value: object, rejected: str, message: str) -> None:
    detail = refused({**SPEC, field: value}, definition=HELM)
    if field in ("regions", "availabilityZones"):
        field += "[]"
    assert detail == bean(field, rejected, message)


def test_range_bounds_are_accepted() -> None:
    (spec,) = deploy({**SPEC, "maxRequestConcurrency": 16384, "preferredOrder": 99})
    assert (spec["maxRequestConcurrency"], spec["preferredOrder"]) == (16384, 99)
    assert deploy({**SPEC, "minInstances": 2, "maxInstances": 2})[0]["minInstances"] == 2


def test_min_above_max_is_refused() -> None:
    assert (
        refused({**SPEC, "minInstances": 3, "maxInstances": 2})
        == "Invalid request: 'minInstances' must be lesser than or equal to 'maxInstances'"
    )


def test_unknown_catalogue_names_are_refused_with_nvcf_messages() -> None:
    assert refused({**SPEC, "gpu": "A100"}) == PREFIX + "Invalid GPU 'A100' specified"
    assert (
        refused({**SPEC, "instanceType": "LOCAL.GPU.H100_8x"})
        == PREFIX + "Invalid InstanceType 'LOCAL.GPU.H100_8x' specified"
    )
    assert refused({**SPEC, "backend": "GFN"}) == PREFIX + "Invalid Backend 'GFN' specified"


def test_backend_and_clusters_exclude_each_other() -> None:
    assert refused({**SPEC, "backend": "local", "clusters": ["a", "b"]}) == (
        PREFIX
        + "Backend:['local'] and Clusters:['[a, b]'] could not be specified at the same time."
    )
    (spec,) = deploy({**SPEC, "backend": " ", "clusters": ["a"]})
    assert spec["clusters"] == ["a"]


def test_placement_sets_drop_blanks_and_duplicates() -> None:
    (spec,) = deploy(
        {
            **SPEC,
            "clusters": ["a", "", "a", "b"],
            "regions": ["us", " "],
            "attributes": [],
            "availabilityZones": ["z1", "z1"],
        }
    )
    assert spec["clusters"] == ["a", "b"]
    assert spec["regions"] == ["us"]
    assert "attributes" not in spec
    assert spec["availabilityZones"] == ["z1", "z1"]


def test_configuration_and_helm_policy_are_for_helm_functions_only() -> None:
    assert refused({**SPEC, "configuration": {"a": 1}}) == (
        PREFIX + "The configuration field in Gpu specification should be empty for container "
        "based functions."
    )
    assert refused({**SPEC, "helmValidationPolicy": {"name": "Default"}}) == (
        PREFIX + "The helmValidationPolicy field in Gpu specification should be empty for "
        "container based functions."
    )
    model_only = {"name": "m", "models": [{"name": "m"}]}
    assert "configuration field" in refused({**SPEC, "configuration": {}}, definition=model_only)
    kinds = [{"group": "apps", "version": "v1", "kind": "Deployment"}]
    (spec,) = deploy(
        {
            **SPEC,
            "configuration": {"replicas": 2},
            "helmValidationPolicy": {"name": "unrestricted", "extraKubernetesTypes": kinds},
        },
        definition=HELM,
    )
    assert spec["configuration"] == {"replicas": 2}
    assert spec["helmValidationPolicy"] == {"name": "Unrestricted", "extraKubernetesTypes": kinds}


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ({}, "helmValidationPolicy.name, rejected=null"),
        ({"name": "Strict"}, "must be one of [Default, Unrestricted]"),
        ({"name": "Default", "extraKubernetesTypes": []}, "size must be between 1"),
        (
            {"name": "Default", "extraKubernetesTypes": [{"group": "g", "version": "v1"}]},
            "extraKubernetesTypes[0].kind",
        ),
    ],
)
def test_helm_validation_policy_rules(policy: dict[str, Any], fragment: str) -> None:
    assert fragment in refused({**SPEC, "helmValidationPolicy": policy}, definition=HELM)


AUTOSCALING = {
    "scaleUpDetails": {
        "metric": "m",
        "factor": 1.5,
        "threshold": 70,
        "stickiness": {"size": "PT30M", "threshold": "PT5M"},
    },
    "scaleDownDetails": {"factor": 0.5, "threshold": 30},
}


def test_autoscaling_configuration_is_kept_as_given() -> None:
    assert (
        deploy({**SPEC, "autoscalingConfiguration": AUTOSCALING})[0]["autoscalingConfiguration"]
        == AUTOSCALING
    )
    assert deploy({**SPEC, "autoscalingConfiguration": {}})[0]["autoscalingConfiguration"] == {}


@pytest.mark.parametrize(
    "config",
    [
        {"scaleUpDetails": {"factor": 1.0, "threshold": 70}},
        {"scaleUpDetails": {"factor": 2, "threshold": -1}},
        {"scaleUpDetails": {"threshold": 70}},
        {"scaleUpDetails": {"factor": 2, "threshold": 70.5}},
        {"scaleUpDetails": {"factor": True, "threshold": 70}},
        {"scaleDownDetails": {"factor": 1.0, "threshold": 30}},
        {"scaleDownDetails": {"factor": 0, "threshold": 30}},
        {"scaleDownDetails": "fast"},
        {"scaleUpDetails": {"factor": 2, "threshold": 1, "metric": 5}},
        {
            "scaleUpDetails": {
                "factor": 2,
                "threshold": 1,
                "stickiness": {"size": "PT2H", "threshold": "PT1M"},
            }
        },
        {
            "scaleUpDetails": {
                "factor": 2,
                "threshold": 1,
                "stickiness": {"size": "PT5M", "threshold": "PT5M"},
            }
        },
        {"scaleUpDetails": {"factor": 2, "threshold": 1, "stickiness": {"size": "PT5M"}}},
        {
            "scaleUpDetails": {
                "factor": 2,
                "threshold": 1,
                "stickiness": {"size": "5m", "threshold": "PT1M"},
            }
        },
        {"scaleUpDetails": {"factor": 2, "threshold": 1, "stickiness": []}},
    ],
)
def test_invalid_autoscaling_configuration(config: dict[str, Any]) -> None:
    assert (
        refused({**SPEC, "autoscalingConfiguration": config})
        == "Invalid request: Autoscaling configuration is invalid"
    )


# -- PUT (deprecated) ---------------------------------------------------------------------------


def existing(*specs: dict[str, Any]) -> list[dict[str, Any]]:
    return deploy(*(specs or (SPEC,)))


def put(body: object, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return put_specifications(body, current, function_id=FID, version_id=FVID)


def put_refused(body: object, current: list[dict[str, Any]]) -> str:
    with pytest.raises(ControlError) as error:
        put(body, current)
    assert error.value.status == 400
    return error.value.detail


def test_put_with_one_spec_may_omit_the_id() -> None:
    current = existing()
    update = {"minInstances": 1, "maxInstances": 3, "maxRequestConcurrency": 4, "gpu": "ignored"}
    (spec,) = put({"deploymentSpecifications": [update]}, current)
    assert (spec["minInstances"], spec["maxInstances"], spec["maxRequestConcurrency"]) == (1, 3, 4)
    assert spec["gpu"] == "H100"
    assert current[0]["minInstances"] == 0  # the input list is not changed


def test_put_matches_by_id_and_keeps_concurrency_when_absent() -> None:
    current = existing(
        SPEC, {**SPEC, "instanceType": "LOCAL.GPU.H100_2x", "maxRequestConcurrency": 8}
    )
    ids = [spec["gpuSpecificationId"] for spec in current]
    body = {
        "deploymentSpecifications": [
            {"gpuSpecificationId": ids[1], "minInstances": 2, "maxInstances": 2},
            {"gpuSpecificationId": ids[0], "minInstances": 1, "maxInstances": 1},
        ]
    }
    first, second = put(body, current)
    assert (first["minInstances"], second["minInstances"]) == (1, 2)
    assert second["maxRequestConcurrency"] == 8


def test_put_rules() -> None:
    mismatch = "Function id 'f-1', version ='v-1': GPU / InstanceType specs must match the ones in the original deployment"
    current = existing()
    one = {"minInstances": 0, "maxInstances": 1}
    assert put_refused({"deploymentSpecifications": [one, one]}, current) == mismatch
    assert (
        put_refused({"deploymentSpecifications": [{**one, "gpuSpecificationId": "x"}]}, current)
        == mismatch
    )
    two = existing(SPEC, SPEC)
    assert put_refused({"deploymentSpecifications": [one, one]}, two) == (
        "Function id 'f-1', version ='v-1': Deployment has multiple GPU specifications. "
        "To update deployment use PATCH endpoint."
    )
    assert put_refused(
        {"deploymentSpecifications": [{"minInstances": 2, "maxInstances": 1}]}, current
    ) == ("Invalid request: 'minInstances' must be lesser than or equal to 'maxInstances'")
    assert "field=deploymentSpecifications[0].maxInstances" in put_refused(
        {"deploymentSpecifications": [{"minInstances": 0}]}, current
    )
    assert put_refused({"deploymentSpecifications": []}, current) == (
        "Invalid request: Empty or null gpu specs in the request payload"
    )


def test_put_backend_and_clusters_must_match_the_original() -> None:
    current = existing({**SPEC, "clusters": ["a", "b"]})
    ok = {"minInstances": 0, "maxInstances": 1, "clusters": ["b", "a"]}
    assert put({"deploymentSpecifications": [ok]}, current)[0]["maxInstances"] == 1
    assert put({"deploymentSpecifications": [{**ok, "backend": "local"}]}, current)
    assert put_refused({"deploymentSpecifications": [{**ok, "backend": "GFN"}]}, current) == (
        PREFIX + "Backend 'GFN' field does not match original deployment spec: 'local'."
    )
    assert put_refused({"deploymentSpecifications": [{**ok, "clusters": ["a"]}]}, current) == (
        PREFIX + "Provided clusters: '[a]' does not match clusters from original spec: '[a, b]'"
    )


# -- PATCH --------------------------------------------------------------------------------------


def patch(body: object, spec: dict[str, Any]) -> dict[str, Any]:
    return patch_specification(body, spec, function_id=FID, version_id=FVID)


def patch_refused(body: object, spec: dict[str, Any]) -> str:
    with pytest.raises(ControlError) as error:
        patch(body, spec)
    assert error.value.status == 400
    return error.value.detail


def test_patch_updates_min_and_max() -> None:
    (spec,) = existing()
    assert patch({"minInstances": 2}, spec)["minInstances"] == 2
    assert patch({"maxInstances": 5}, spec)["maxInstances"] == 5
    assert spec["minInstances"] == 0  # the input spec is not changed


def test_patch_with_no_field_is_refused() -> None:
    (spec,) = existing()
    for body in ({}, {"minInstances": None, "gpu": "H100"}):
        assert patch_refused(body, spec) == (
            PREFIX
            + "Empty update gpu specification request. At least one field should be provided."
        )


def test_patch_checks_the_effective_min_and_max() -> None:
    (spec,) = existing()
    assert patch_refused({"minInstances": 3}, spec) == (
        "Invalid request: minInstances '3' must be lesser than or equal to maxInstances '2'"
    )
    assert patch({"minInstances": 3, "maxInstances": 3}, spec)["maxInstances"] == 3
    assert "field=maxInstances, rejected=0, message=must be greater than 0" in patch_refused(
        {"maxInstances": 0}, spec
    )
    assert "object=updateGpuSpecificationRequest" in patch_refused({"minInstances": -1}, spec)


def test_patch_autoscaling_policies() -> None:
    (spec,) = existing({**SPEC, "autoscalingConfiguration": AUTOSCALING})
    assert "autoscalingConfiguration" not in patch(
        {"autoscalingConfigurationPolicy": "platform_configuration"}, spec
    )
    new = {"scaleDownDetails": {"factor": 0.8, "threshold": 10}}
    assert patch({"autoscalingConfiguration": new}, spec)["autoscalingConfiguration"] == new
    assert (
        patch({"autoscalingConfigurationPolicy": "CUSTOM_CONFIGURATION"}, spec)[
            "autoscalingConfiguration"
        ]
        == AUTOSCALING
    )
    assert patch({"minInstances": 1}, spec)["autoscalingConfiguration"] == AUTOSCALING
    assert "must be one of [PLATFORM_CONFIGURATION, CUSTOM_CONFIGURATION]" in patch_refused(
        {"autoscalingConfigurationPolicy": "NONE"}, spec
    )
    assert (
        patch_refused(
            {"autoscalingConfiguration": {"scaleUpDetails": {"factor": 0.5, "threshold": 1}}}, spec
        )
        == "Invalid request: Autoscaling configuration is invalid"
    )
