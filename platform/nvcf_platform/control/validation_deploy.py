"""Validation of NVCF's deployment bodies (reference §4.1, §4.3, §6.3): create, PUT and PATCH.

Specs are checked against this machine's `Catalog`; failures raise `ControlError` (400) with
NVIDIA's detail, prefixed "Function id '<fid>', version '<fvid>': " where NVIDIA prefixes it.
"""

from __future__ import annotations

import copy
import uuid
from decimal import Decimal
from typing import Any, Final

from nvcf_platform.control.catalog import (
    Catalog,
    UnknownBackend,
    UnknownGpu,
    UnknownInstanceType,
)
from nvcf_platform.control.problems import bad_request
from nvcf_platform.control.validation_fields import FieldReader, parse_duration

__all__ = [
    "MAX_REQUEST_CONCURRENCY",
    "autoscaling_configuration",
    "deployment_specifications",
    "patch_specification",
    "put_specifications",
]

MAX_REQUEST_CONCURRENCY: Final = 16384
_MSG_EMPTY: Final = "Invalid request: Empty or null gpu specs in the request payload"
_MSG_MIN_MAX: Final = (
    "Invalid request: 'minInstances' must be lesser than or equal to 'maxInstances'"
)
_MSG_AUTOSCALING: Final = "Invalid request: Autoscaling configuration is invalid"
_STICKINESS_MAX: Final = Decimal(3600)
_HELM_POLICIES: Final = ("Default", "Unrestricted")
_SETS: Final = ("clusters", "regions", "attributes")


def _prefix(function_id: str, version_id: str) -> str:
    return f"Function id '{function_id}', version '{version_id}': "


def _java_set(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"


def deployment_specifications(
    body: object,
    catalog: Catalog,
    *,
    function_id: str,
    version_id: str,
    definition: dict[str, Any],
) -> list[dict[str, Any]]:
    """The GPU specifications of a deployment request, each with a fresh `gpuSpecificationId`.

    GPU, instance type and backend take the catalogue's spelling; the backend defaults to the
    catalogue's cluster group; the instance type's details (`systemMemory`, …) are filled in.
    """
    r = FieldReader(body, "functionDeploymentRequest")
    items = r.array("deploymentSpecifications")
    if not items:
        raise bad_request(_MSG_EMPTY)
    parsed = [_spec_fields(spec) for spec in r.elements("deploymentSpecifications")]
    if any(spec["minInstances"] > spec["maxInstances"] for spec in parsed):
        raise bad_request(_MSG_MIN_MAX)

    prefix = _prefix(function_id, version_id)
    helm = bool(definition.get("helmChart"))
    specs = []
    for spec in parsed:
        backend = spec.get("backend")
        if backend and spec.get("clusters"):
            raise bad_request(
                f"{prefix}Backend:['{backend}'] and Clusters:['{_java_set(spec['clusters'])}'] "
                "could not be specified at the same time."
            )
        try:
            gpu, instance_type, group = catalog.resolve(spec["gpu"], spec["instanceType"], backend)
        except UnknownBackend as exc:
            raise bad_request(f"{prefix}Invalid Backend '{exc.value}' specified") from None
        except UnknownGpu as exc:
            raise bad_request(f"{prefix}Invalid GPU '{exc.value}' specified") from None
        except UnknownInstanceType as exc:
            raise bad_request(f"{prefix}Invalid InstanceType '{exc.value}' specified") from None
        if not helm and spec.get("configuration") is not None:
            raise bad_request(
                f"{prefix}The configuration field in Gpu specification should be empty for "
                "container based functions."
            )
        if not helm and "helmValidationPolicy" in spec:
            raise bad_request(
                f"{prefix}The helmValidationPolicy field in Gpu specification should be empty "
                "for container based functions."
            )
        specs.append(
            {
                "gpuSpecificationId": str(uuid.uuid4()),
                **spec,
                "gpu": gpu.name,
                "instanceType": instance_type.name,
                "backend": group,
                **instance_type.spec_details(),
            }
        )
    return specs


def _spec_fields(s: FieldReader) -> dict[str, Any]:
    """One GpuSpecificationDto's input fields, type- and range-checked (output-only ignored)."""
    spec: dict[str, Any] = {
        "gpu": s.required_string("gpu"),
        "instanceType": s.required_string("instanceType"),
    }
    backend = s.string("backend")
    if backend is not None and backend.strip():
        spec["backend"] = backend
    spec["minInstances"] = s.required_integer("minInstances", minimum=0)
    spec["maxInstances"] = s.required_integer("maxInstances", minimum=1, positive=True)
    spec["maxRequestConcurrency"] = s.integer(
        "maxRequestConcurrency", minimum=1, maximum=MAX_REQUEST_CONCURRENCY
    )
    if spec["maxRequestConcurrency"] is None:
        spec["maxRequestConcurrency"] = 1
    configuration = s.mapping("configuration")
    if configuration is not None:
        spec["configuration"] = configuration
    for name in _SETS:
        values = s.strings(name, unique=True, drop_blank=True)
        if values:
            spec[name] = values
    zones = s.strings("availabilityZones")
    if zones:
        spec["availabilityZones"] = zones
    spec["preferredOrder"] = s.integer("preferredOrder", minimum=1, maximum=99) or 1
    autoscaling = autoscaling_configuration(s)
    if autoscaling is not None:
        spec["autoscalingConfiguration"] = autoscaling
    policy = s.nested("helmValidationPolicy")
    if policy is not None:
        spec["helmValidationPolicy"] = _helm_validation_policy(policy)
    return spec


def _helm_validation_policy(p: FieldReader) -> dict[str, Any]:
    name = p.enum("name", _HELM_POLICIES)
    if name is None:
        raise p.error("name", None, "must not be null")
    policy: dict[str, Any] = {"name": name}
    extra = p.array("extraKubernetesTypes")
    if extra is not None:
        if not extra:
            raise p.error("extraKubernetesTypes", extra, "size must be between 1 and 2147483647")
        policy["extraKubernetesTypes"] = [
            {key: t.string(key, required=True, blank=False) for key in ("group", "version", "kind")}
            for t in p.elements("extraKubernetesTypes")
        ]
    return policy


def autoscaling_configuration(r: FieldReader) -> dict[str, Any] | None:
    """The `autoscalingConfiguration` object of `r` as given, once valid per §6.3."""
    config = r.mapping("autoscalingConfiguration")
    if config is None:
        return None
    for key, scale_up in (("scaleUpDetails", True), ("scaleDownDetails", False)):
        details = config.get(key)
        if details is not None and not _valid_scaling(details, scale_up=scale_up):
            raise bad_request(_MSG_AUTOSCALING)
    return config


def _valid_scaling(details: object, *, scale_up: bool) -> bool:
    if not isinstance(details, dict):
        return False
    factor, threshold = details.get("factor"), details.get("threshold")
    metric, stickiness = details.get("metric"), details.get("stickiness")
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        return False
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        return False
    if not (factor > 1.0 if scale_up else 0.0 < factor < 1.0):
        return False
    if metric is not None and not isinstance(metric, str):
        return False
    if stickiness is None:
        return True
    if not isinstance(stickiness, dict):
        return False
    size, window = stickiness.get("size"), stickiness.get("threshold")
    if not isinstance(size, str) or not isinstance(window, str):
        return False
    size_s, window_s = parse_duration(size), parse_duration(window)
    return (
        size_s is not None
        and window_s is not None
        and size_s <= _STICKINESS_MAX
        and window_s < size_s
    )


def put_specifications(
    body: object,
    existing: list[dict[str, Any]],
    *,
    function_id: str,
    version_id: str,
) -> list[dict[str, Any]]:
    """The deployment's specs after a (deprecated) PUT: min/max/concurrency of each replaced.

    Entries match by `gpuSpecificationId` (omittable with one spec); `backend` and `clusters`
    must equal the original's; gpu and instanceType are read-only and ignored.
    """
    r = FieldReader(body, "updateFunctionDeploymentRequest")
    prefix = _prefix(function_id, version_id)
    # NVIDIA's two PUT messages read "version ='…'".
    put_prefix = f"Function id '{function_id}', version ='{version_id}': "
    items = r.array("deploymentSpecifications")
    if not items:
        raise bad_request(_MSG_EMPTY)
    updates = []
    for u in r.elements("deploymentSpecifications"):
        minimum = u.required_integer("minInstances", minimum=0)
        maximum = u.required_integer("maxInstances", minimum=1, positive=True)
        concurrency = u.integer("maxRequestConcurrency", minimum=1, maximum=MAX_REQUEST_CONCURRENCY)
        spec_id = u.string("gpuSpecificationId")
        updates.append((u, spec_id, minimum, maximum, concurrency))
    if any(minimum > maximum for _, _, minimum, maximum, _ in updates):
        raise bad_request(_MSG_MIN_MAX)
    if len(updates) != len(existing):
        raise bad_request(
            f"{put_prefix}GPU / InstanceType specs must match the ones in the original deployment"
        )
    if len(updates) > 1 and any(spec_id is None for _, spec_id, *_ in updates):
        raise bad_request(
            f"{put_prefix}Deployment has multiple GPU specifications. "
            "To update deployment use PATCH endpoint."
        )
    result = copy.deepcopy(existing)
    for u, spec_id, minimum, maximum, concurrency in updates:
        spec = next(
            (s for s in result if spec_id is None or s["gpuSpecificationId"] == spec_id), None
        )
        if spec is None:
            raise bad_request(
                f"{put_prefix}GPU / InstanceType specs must match the ones in the original "
                "deployment"
            )
        given = (u.string("backend") or "").strip()
        stored = spec.get("backend") or ""
        # The stored backend is the catalogue's group when none was given: blank matches it.
        if given and given != stored:
            raise bad_request(
                f"{prefix}Backend '{given}' field does not match original deployment spec: "
                f"'{stored}'."
            )
        clusters = u.strings("clusters", unique=True, drop_blank=True)
        if set(clusters) != set(spec.get("clusters", ())):
            raise bad_request(
                f"{prefix}Provided clusters: '{_java_set(clusters)}' does not match clusters "
                f"from original spec: '{_java_set(spec.get('clusters', []))}'"
            )
        spec["minInstances"], spec["maxInstances"] = minimum, maximum
        if concurrency is not None:
            spec["maxRequestConcurrency"] = concurrency
    return result


def patch_specification(
    body: object,
    existing: dict[str, Any],
    *,
    function_id: str,
    version_id: str,
) -> dict[str, Any]:
    """The GPU specification after a PATCH (UpdateGpuSpecificationRequest, §4.3).

    `autoscalingConfigurationPolicy` PLATFORM_CONFIGURATION drops the custom configuration;
    CUSTOM_CONFIGURATION (the default) stores the one given, and keeps the stored one otherwise.
    """
    r = FieldReader(body, "updateGpuSpecificationRequest")
    maximum = r.integer("maxInstances", minimum=1, positive=True)
    minimum = r.integer("minInstances", minimum=0)
    autoscaling = autoscaling_configuration(r)
    policy = r.enum(
        "autoscalingConfigurationPolicy", ("PLATFORM_CONFIGURATION", "CUSTOM_CONFIGURATION")
    )
    if minimum is None and maximum is None and autoscaling is None and policy is None:
        raise bad_request(
            _prefix(function_id, version_id)
            + "Empty update gpu specification request. At least one field should be provided."
        )
    spec = copy.deepcopy(existing)
    effective_min = spec["minInstances"] if minimum is None else minimum
    effective_max = spec["maxInstances"] if maximum is None else maximum
    if effective_min > effective_max:
        raise bad_request(
            f"Invalid request: minInstances '{effective_min}' must be lesser than or equal to "
            f"maxInstances '{effective_max}'"
        )
    spec["minInstances"], spec["maxInstances"] = effective_min, effective_max
    if policy == "PLATFORM_CONFIGURATION":
        spec.pop("autoscalingConfiguration", None)
    elif autoscaling is not None:
        spec["autoscalingConfiguration"] = autoscaling
    return spec
