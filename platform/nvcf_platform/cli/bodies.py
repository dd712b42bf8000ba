"""Flags to request bodies for `nvcf-sidecar function`: create, update, deploy, scale.

Each builder starts from the `--input-file` body (if any) and lets the flags that were given
override its fields, as NVIDIA's `nvcf-cli` does; the server validates the rest.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Final

from nvcf_platform.cli.api_client import JsonObject
from nvcf_platform.cli.errors import UsageError

__all__ = [
    "DEFAULT_MAX_INSTANCES",
    "DEFAULT_MIN_INSTANCES",
    "HEALTH_DEFAULTS",
    "artifact",
    "create_body",
    "default_instance_type",
    "deployment_body",
    "duration",
    "fill_instance_types",
    "gpu_specification_update",
    "key_value",
    "load_input_file",
    "split_tags",
    "update_body",
]

DEFAULT_MIN_INSTANCES: Final = 1
DEFAULT_MAX_INSTANCES: Final = 1
HEALTH_DEFAULTS: Final[JsonObject] = {
    "protocol": "HTTP",
    "uri": "/v2/health/ready",
    "port": 8000,
    "timeout": "PT10S",
    "expectedStatusCode": 200,
}
"""NVCF's health defaults (reference §2.1); `port` follows `--inference-port` when given."""
_ISO_DURATION = re.compile(r"P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?", re.IGNORECASE)


# argparse types: each names the bad value.


def key_value(text: str) -> tuple[str, str]:
    """`KEY=VALUE` (`--container-env`, `--secrets`); the value may contain `=`."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key.strip(), value


def artifact(text: str) -> JsonObject:
    """`NAME:VERSION:URI` (`--models`, `--resources`); the URI may contain `:`."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise argparse.ArgumentTypeError(f"not NAME:VERSION:URI: {text!r}")
    name, version, uri = (part.strip() for part in parts)
    return {"name": name, "version": version, "uri": uri}


def duration(text: str) -> str:
    """An ISO-8601 duration (`PT10S`) or a number of seconds (`10` becomes `PT10S`)."""
    if _ISO_DURATION.fullmatch(text):
        return text.upper()
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not seconds or an ISO-8601 duration: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return f"PT{seconds:g}S"


def split_tags(values: list[str] | None) -> list[str] | None:
    """`--tags a,b --tags c` as `["a", "b", "c"]`; `None` when the flag was not given."""
    if values is None:
        return None
    return [tag.strip() for value in values for tag in value.split(",") if tag.strip()]


# Bodies.


def load_input_file(path: Path | None) -> Any:
    """The JSON of `--input-file` (`-` reads stdin); `None` without the flag."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8") if str(path) != "-" else sys.stdin.read()
        return json.loads(text)
    except OSError as error:
        raise UsageError(f"--input-file {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise UsageError(f"--input-file {path} is not JSON: {error}") from None


def create_body(args: argparse.Namespace, base: Any) -> JsonObject:
    """The CreateFunctionRequest of `function create`: the input file's, then the flags.

    Checks only what the command line promises (a name, an inference URL, and an image, models
    or a Helm chart); the server checks the rest and answers problem details.
    """
    body = _object(base, "--input-file")
    _set(body, "name", args.name)
    _set(body, "containerImage", args.image)
    _set(body, "inferenceUrl", args.inference_url)
    _set(body, "inferencePort", args.inference_port)
    _set(body, "description", args.description)
    _set(body, "functionType", args.function_type)
    _set(body, "apiBodyFormat", args.api_body_format)
    _set(body, "containerArgs", args.container_args)
    if args.container_env is not None:
        body["containerEnvironment"] = [{"key": k, "value": v} for k, v in args.container_env]
    if args.secrets is not None:
        body["secrets"] = [{"name": k, "value": _secret_value(v)} for k, v in args.secrets]
    _set(body, "tags", split_tags(args.tags))
    _set(body, "models", args.models)
    _set(body, "resources", args.resources)
    _set(body, "helmChart", args.helm_chart)
    _set(body, "helmChartServiceName", args.helm_chart_service)
    health_flags = {
        "protocol": args.health_protocol,
        "uri": args.health_uri,
        "port": args.health_port,
        "timeout": args.health_timeout,
        "expectedStatusCode": args.health_expected_status,
    }
    if any(value is not None for value in health_flags.values()):
        # NVCF wants all five fields once `health` is present: fill the ones not given.
        health = dict(HEALTH_DEFAULTS)
        health["port"] = body.get("inferencePort", HEALTH_DEFAULTS["port"])
        health.update(_object(body.get("health"), "--input-file's 'health'"))
        health.update({key: value for key, value in health_flags.items() if value is not None})
        body["health"] = health
    for field, flag in (("name", "--name"), ("inferenceUrl", "--inference-url")):
        if not body.get(field):
            raise UsageError(f"function create needs {flag} (or {field!r} in --input-file)")
    if not any(body.get(field) for field in ("containerImage", "models", "helmChart")):
        raise UsageError(
            "function create needs --image, --models or --helm-chart "
            "(or 'containerImage', 'models' or 'helmChart' in --input-file)"
        )
    return body


def update_body(args: argparse.Namespace, base: Any) -> JsonObject:
    """The UpdateFunctionRequest of `function update`: the input file's, then `--tags`."""
    body = _object(base, "--input-file")
    _set(body, "tags", split_tags(args.tags))
    if not body:
        raise UsageError("function update needs --tags or --input-file")
    return body


def deployment_body(args: argparse.Namespace, base: Any) -> JsonObject:
    """`{"deploymentSpecifications": [...]}` of `function deploy create`.

    The input file may hold that whole body, a list of specifications or one specification; the
    flags given override the fields of every specification. Without an input file, minInstances
    and maxInstances default to 1. `gpu` / `instanceType` may still be missing: see
    `fill_instance_types`.
    """
    if base is None:
        specs: list[JsonObject] = [
            {"minInstances": DEFAULT_MIN_INSTANCES, "maxInstances": DEFAULT_MAX_INSTANCES}
        ]
    elif isinstance(base, dict) and "deploymentSpecifications" in base:
        specs = _objects(
            base["deploymentSpecifications"], "--input-file's deploymentSpecifications"
        )
    elif isinstance(base, list):
        specs = _objects(base, "--input-file")
    else:
        specs = [_object(base, "--input-file")]
    if not specs:
        raise UsageError("--input-file has no deployment specification")
    flags = {
        "gpu": args.gpu,
        "instanceType": args.instance_type,
        "minInstances": args.min_instances,
        "maxInstances": args.max_instances,
        "maxRequestConcurrency": args.max_request_concurrency,
        "backend": args.backend,
        "regions": split_tags(args.regions),
        "clusters": split_tags(args.clusters),
        "availabilityZones": split_tags(args.availability_zones),
        "attributes": split_tags(args.attributes),
        "preferredOrder": args.preferred_order,
    }
    for spec in specs:
        spec.update({key: value for key, value in flags.items() if value is not None})
    return {"deploymentSpecifications": specs}


def default_instance_type(
    cluster_groups: list[JsonObject], gpu: str | None = None, instance_type: str | None = None
) -> tuple[str, str]:
    """The GPU and instance type to deploy on when the flags leave one or both out.

    The first GPU of the first cluster group (or the GPU named `gpu`, or the one offering
    `instance_type`) and its instance type marked `default` (else its first one).
    """
    for group in cluster_groups:
        for offered in _objects(group.get("gpus") or [], "a cluster group's gpus"):
            name = str(offered.get("name", ""))
            types = _objects(offered.get("instanceTypes") or [], "a GPU's instanceTypes")
            type_names = [str(t.get("name", "")) for t in types]
            if gpu is not None and name.lower() != gpu.lower():
                continue
            if instance_type is not None:
                if instance_type.lower() in (t.lower() for t in type_names):
                    return name, instance_type
                continue
            chosen = next(
                (t for t in types if t.get("default") is True), types[0] if types else None
            )
            if chosen is not None:
                return name, str(chosen.get("name"))
    wanted = " ".join(
        part
        for part in (
            f"GPU {gpu!r}" if gpu else "",
            f"instance type {instance_type!r}" if instance_type else "",
        )
        if part
    )
    raise UsageError(
        f"the platform's cluster groups (GET /v2/nvcf/clusterGroups) offer no {wanted or 'GPU'}"
    )


def fill_instance_types(body: JsonObject, cluster_groups: list[JsonObject]) -> None:
    """Fill a missing `gpu` or `instanceType` of each specification from the cluster groups."""
    for spec in body["deploymentSpecifications"]:
        if not spec.get("gpu") or not spec.get("instanceType"):
            gpu, instance_type = default_instance_type(
                cluster_groups, spec.get("gpu") or None, spec.get("instanceType") or None
            )
            spec["gpu"], spec["instanceType"] = gpu, instance_type


def gpu_specification_update(args: argparse.Namespace, base: Any) -> JsonObject:
    """The UpdateGpuSpecificationRequest of `function deploy update`: input file, then flags."""
    body = _object(base, "--input-file")
    _set(body, "minInstances", args.min_instances)
    _set(body, "maxInstances", args.max_instances)
    if not body:
        raise UsageError("deploy update needs --min-instances, --max-instances or --input-file")
    return body


def _set(body: JsonObject, key: str, value: object) -> None:
    if value is not None:
        body[key] = value


def _object(value: Any, what: str) -> JsonObject:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{what} is not a JSON object")
    return dict(value)


def _objects(value: Any, what: str) -> list[JsonObject]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise UsageError(f"{what} is not a list of objects")
    return [dict(item) for item in value]


def _secret_value(value: str) -> Any:
    """A secret's value: a JSON object when it is one (NVCF accepts both), else the string."""
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, dict):
            return parsed
    return value
