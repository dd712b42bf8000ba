"""Validation and normalisation of the function bodies of NVCF's control plane (reference §2, §3).

`function_definition` and `function_update` return the stored, normalised form or raise
`ControlError` (400) with NVIDIA's detail; field reads are `validation_fields`'s.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from nvcf_platform.control.problems import bad_request
from nvcf_platform.control.registry import canonical_uuid
from nvcf_platform.control.validation_fields import (
    FieldReader,
    format_duration,
    invalid,
    parse_duration,
)

__all__ = [
    "GRPC_INFERENCE_URL",
    "MODEL_ONLY_CONTAINER_ARGS",
    "function_definition",
    "function_update",
    "pinned_ids",
]

GRPC_INFERENCE_URL: Final = "/grpc"
"""NVCF's `inferenceUrl` of gRPC functions: without a `health` object, their health is gRPC's."""
MODEL_ONLY_CONTAINER_ARGS: Final = (
    "tritonserver --model-repository /config/models --model-control-mode none --allow-metrics 1"
    " --allow-gpu-metrics 1 --allow-cpu-metrics 1 --metrics-interval-ms 500 --strict-readiness 1"
    " --log-error 1 --log-warning 1 --log-info 1"
)
_NAME_RE: Final = re.compile(r"[a-z0-9A-Z][a-z0-9A-Z\-_]*")
_TAG_RE: Final = re.compile(r"[a-zA-Z0-9\-_:=]+")
_SECRET_NAME_RE: Final = re.compile(r"[a-z0-9A-Z][a-z0-9A-Z_.\-]*")
_RATE_RE: Final = re.compile(r"(?!.*-([SMHD]).*-\1)[1-9]\d*-[SMHD](,\s*[1-9]\d*-[SMHD])*", re.ASCII)
_RATE_REGEX_TEXT: Final = r"^(?!.*-([SMHD]).*-\1)[1-9]\d*-[SMHD](,\s*[1-9]\d*-[SMHD])*$"
_MSG_NAME: Final = "Invalid request: 'name' cannot be empty/null in the create function payload"
_MSG_ONE_OF: Final = (
    "Invalid request: One of the following properties 'containerImage', 'models', "
    "or 'helmChart' must be specified in the payload"
)
_MSG_BOTH: Final = (
    "Invalid request: Cannot specify both '{}' and 'helmChart' properties in the payload"
)
_MSG_HELM_PAIR: Final = (
    "Invalid request: Either both or none of 'helmChart' and 'helmChartServiceName' "
    "properties must be specified"
)
# NVIDIA's text block ends with a newline, and so does their answer.
_MSG_HEALTH_URI: Final = (
    "Invalid request: Health URI cannot be empty/null in the create function payload\n"
)
_MSG_LLM_MODELS: Final = "Invalid request: 'models' must be specified when functionType is LLM"
_MSG_DUP_MODELS: Final = "Invalid request: duplicate model names are not allowed in 'models'"
_MSG_MODEL_FIELDS: Final = (
    "Invalid request: non-LLM function models must specify both 'version' and 'uri'"
)
_MSG_LLM_CONFIG: Final = "Invalid request: LLM function models must specify 'llmConfig'"
_MSG_LLM_URIS: Final = (
    "Invalid request: LLM function models must specify non-empty 'llmConfig.uris'"
)
_MSG_UPDATE: Final = (
    "Invalid request: at least one of 'tags', 'rateLimit', 'modelUpdates', or "
    "'llmInvocationConfig' must be specified"
)
_MSG_DUP_MODEL_UPDATES: Final = (
    "Invalid request: duplicate model names are not allowed in 'modelUpdates'"
)
_MSG_MODEL_UPDATE: Final = (
    "Invalid request: at least one of 'tokenRateLimit' or 'routingMethod' must be specified"
)
_MSG_RATE_LIMIT: Final = (
    "Either global rateLimit, perNcaIdRate, or perUserRate must be non-null, per-ncaid rates "
    "ncaids cannot be in exemptedNcaIds, and exemptedNcaIds can only exist when global "
    "rateLimit is provided"
)
_API_BODY_FORMATS: Final = ("PREDICT_V2", "CUSTOM")
_FUNCTION_TYPES: Final = ("DEFAULT", "STREAMING", "LLM")
_HEALTH_PROTOCOLS: Final = {"HTTP": "HTTP", "GRPC": "gRPC"}


def function_definition(body: object) -> dict[str, Any]:
    """The stored definition of a CreateFunctionRequest (§2.1), camelCase, absent fields omitted.

    Secret values are kept: the caller strips them from answers.
    """
    r = FieldReader(body, "createFunctionRequest")
    name = r.string("name")
    if name is None or not name.strip():
        raise bad_request(_MSG_NAME)
    if len(name) > 128:
        raise r.error("name", name, "Invalid function name: must be 1 - 128 characters long")
    if not _NAME_RE.fullmatch(name):
        raise r.error(
            "name", name, "Invalid function name: Must conform to regex ^" + _NAME_RE.pattern + "$"
        )
    out: dict[str, Any] = {"name": name}
    inference_url = r.uri("inferenceUrl", required=True)
    if inference_url is not None and not inference_url.strip():
        raise r.error("inferenceUrl", inference_url, "must not be blank")
    out["inferenceUrl"] = inference_url
    port = r.integer("inferencePort", minimum=1, maximum=65535, positive=True)
    if port is not None:
        out["inferencePort"] = port
    health_uri = r.uri("healthUri")
    health = r.nested("health")
    image = r.uri("containerImage")
    args = r.string("containerArgs")
    env = _environment(r)
    function_type = r.enum("functionType", _FUNCTION_TYPES) or "DEFAULT"
    models = _models(r, llm=function_type == "LLM")
    helm_chart = r.uri("helmChart")
    helm_service = r.string("helmChartServiceName")

    if image is None and not models and helm_chart is None:
        raise bad_request(_MSG_ONE_OF)
    if helm_chart is not None:
        for prop, present in (
            ("containerImage", image is not None),
            ("containerArgs", bool(args and args.strip())),
            ("containerEnvironment", env is not None),
        ):
            if present:
                raise bad_request(_MSG_BOTH.format(prop))
    if (helm_chart is None) == bool(helm_service and helm_service.strip()):
        raise bad_request(_MSG_HELM_PAIR)
    if function_type == "LLM" and not models:
        raise bad_request(_MSG_LLM_MODELS)
    if models and not (args and args.strip()) and image is None and helm_chart is None:
        args = MODEL_ONLY_CONTAINER_ARGS

    out["health"] = (
        _health(health)
        if health is not None
        else {
            "protocol": "gRPC" if inference_url == GRPC_INFERENCE_URL else "HTTP",
            "uri": health_uri or "/v2/health/ready",
            "port": port or 8000,
            "timeout": "PT10S",
            "expectedStatusCode": 200,
        }
    )
    out["healthUri"] = out["health"]["uri"]
    optional: dict[str, Any] = {
        "containerImage": image,
        "containerArgs": args,
        "containerEnvironment": env,
        "models": models or None,
        "resources": _resources(r) or None,
        "helmChart": helm_chart,
        "helmChartServiceName": helm_service,
    }
    out.update({key: value for key, value in optional.items() if value is not None})
    out["apiBodyFormat"] = r.enum("apiBodyFormat", _API_BODY_FORMATS) or "CUSTOM"
    out["functionType"] = function_type
    description = r.string("description")
    if description is not None and len(description) > 256:
        raise r.error("description", description, "Maximum description length of 256 is exceeded.")
    out["description"] = description if description and description.strip() else name
    tags = _tags(r)
    if tags:
        out["tags"] = tags
    secrets = _secrets(r)
    if secrets:
        out["secrets"] = secrets
    rate_limit = r.nested("rateLimit")
    if rate_limit is not None:
        out["rateLimit"] = _rate_limit(rate_limit)
    llm_config = r.mapping("llmInvocationConfig")
    if llm_config is not None:
        out["llmInvocationConfig"] = llm_config
    return out


def function_update(body: object) -> dict[str, Any]:
    """The changes of an UpdateFunctionRequest (§3): only the fields given, validated.

    An empty `tags` clears the stored tags: it is answered None (the plane drops None fields),
    as NVIDIA's FunctionDto omits empty tags.
    """
    r = FieldReader(body, "updateFunctionRequest")
    out: dict[str, Any] = {}
    if r.has("tags"):
        out["tags"] = _tags(r) or None
    rate_limit = r.nested("rateLimit")
    if rate_limit is not None:
        out["rateLimit"] = _rate_limit(rate_limit)
    updates = []
    for item in r.elements("modelUpdates"):
        update: dict[str, Any] = {"modelName": item.string("modelName", required=True, blank=False)}
        llm = item.nested("llmConfig")
        if llm is not None:
            fields = {key: llm.string(key) for key in ("tokenRateLimit", "routingMethod")}
            update["llmConfig"] = {key: value for key, value in fields.items() if value is not None}
        updates.append(update)
    llm_invocation = r.mapping("llmInvocationConfig")
    if "tags" not in out and rate_limit is None and not updates and llm_invocation is None:
        raise bad_request(_MSG_UPDATE)
    if updates:
        names = [update["modelName"] for update in updates]
        if len(set(names)) != len(names):
            raise bad_request(_MSG_DUP_MODEL_UPDATES)
        if any(not update.get("llmConfig") for update in updates):
            raise bad_request(_MSG_MODEL_UPDATE)
        out["modelUpdates"] = updates
    if llm_invocation is not None:
        out["llmInvocationConfig"] = llm_invocation
    return out


def _health(h: FieldReader) -> dict[str, Any]:
    protocol = h.enum("protocol", _HEALTH_PROTOCOLS)
    if protocol is None:
        raise h.error("protocol", None, "must not be null")
    raw_uri = h.string("uri", required=True)
    if raw_uri is not None and not raw_uri.strip():
        raise bad_request(_MSG_HEALTH_URI)
    uri = h.uri("uri", required=True)
    port = h.integer("port", required=True, minimum=1, maximum=65535, positive=True)
    timeout_text = h.string("timeout", required=True)
    timeout = parse_duration(timeout_text or "")
    if timeout is None or timeout <= 0:
        raise h.error("timeout", timeout_text, "must be a positive ISO-8601 duration")
    status = h.integer("expectedStatusCode", required=True, minimum=100, maximum=599)
    return {
        "protocol": protocol,
        "uri": uri,
        "port": port,
        "timeout": format_duration(timeout),
        "expectedStatusCode": status,
    }


def _environment(r: FieldReader) -> list[dict[str, str]] | None:
    if r.array("containerEnvironment") is None:
        return None
    entries = []
    for item in r.elements("containerEnvironment"):
        key = item.string("key", required=True, blank=False)
        value = item.string("value", required=True)
        entries.append({"key": key or "", "value": value or ""})
    return entries


def _models(r: FieldReader, *, llm: bool) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = []
    for item in r.elements("models"):
        model: dict[str, Any] = {"name": item.string("name", required=True, blank=False)}
        for key, value in (("version", item.string("version")), ("uri", item.uri("uri"))):
            if value is not None:
                model[key] = value
        llm_config = item.nested("llmConfig")
        if llm_config is not None:
            llm_config.strings("uris")
            model["llmConfig"] = llm_config.body
        models.append(model)
    names = [model["name"] for model in models]
    if len(set(names)) != len(names):
        raise bad_request(_MSG_DUP_MODELS)
    for model in models:
        if llm and "llmConfig" not in model:
            raise bad_request(_MSG_LLM_CONFIG)
        if llm and not model["llmConfig"].get("uris"):
            raise bad_request(_MSG_LLM_URIS)
        if not llm and ("version" not in model or "uri" not in model):
            raise bad_request(_MSG_MODEL_FIELDS)
    return models


def _resources(r: FieldReader) -> list[dict[str, str]]:
    resources: list[dict[str, str]] = []
    for item in r.elements("resources"):
        resource = {
            "name": item.string("name", required=True) or "",
            "version": item.string("version", required=True) or "",
            "uri": item.uri("uri", required=True) or "",
        }
        if resource not in resources:
            resources.append(resource)
    return resources


def _tags(r: FieldReader) -> list[str]:
    tags = r.strings("tags", unique=True)
    if len(tags) > 64:
        raise r.error("tags", tags, "Maximum number of tags of 64 is exceeded.")
    for tag in tags:
        if len(tag) > 128:
            raise r.error("tags[]", tag, "Maximum tag length of 128 is exceeded.")
        if not _TAG_RE.fullmatch(tag):
            raise r.error("tags[]", tag, f'must match "{_TAG_RE.pattern}"')
    return tags


def _secrets(r: FieldReader) -> list[dict[str, Any]]:
    secrets: list[dict[str, Any]] = []
    for item in r.elements("secrets"):
        item.path = "secrets[]"  # a Java Set: its elements have no index
        name = item.string("name", required=True, blank=False) or ""
        if len(name) > 48:
            raise item.error("name", name, "Invalid secret name: must be 1 - 48 chars long")
        if not _SECRET_NAME_RE.fullmatch(name):
            raise item.error(
                "name",
                name,
                "Invalid secret name: Must conform to regex ^[a-z0-9A-Z][a-z0-9A-Z\\_\\.\\-]*$",
            )
        value = item.get("value")
        # Never echo a secret's value in an answer.
        if value is None:
            raise item.error("value", None, "must not be null")
        if not isinstance(value, str | dict):
            raise item.error("value", "***", "Invalid secret value specified")
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if not 1 <= len(text.strip()) <= 32768:
            raise item.error("value", "***", "Invalid secret value specified")
        if any(secret["name"] == name for secret in secrets):
            raise bad_request("Invalid request: Duplicate secrets keys in the payload")
        secrets.append({"name": name, "value": value})
    return secrets


def _rate_limit(r: FieldReader) -> dict[str, Any]:
    def rate(name: str, what: str, value: str | None) -> str | None:
        if value is not None and not _RATE_RE.fullmatch(value):
            raise r.error(name, value, f"Invalid {what}: Must conform to regex {_RATE_REGEX_TEXT}")
        return value

    out: dict[str, Any] = {}
    global_rate = rate("rateLimit", "rate", r.string("rateLimit"))
    exempted = r.strings("exemptedNcaIds", unique=True) if r.has("exemptedNcaIds") else None
    per_nca = r.mapping("perNcaIdRate")
    per_user = rate("perUserRate", "per-user rate", r.string("perUserRate"))
    sync_check = r.get("syncCheck")
    if sync_check is not None and not isinstance(sync_check, bool):
        raise r.error("syncCheck", sync_check, "must be a boolean")
    if exempted is not None and len(exempted) > 32:
        raise r.error(
            "exemptedNcaIds", exempted, "Maximum number of exempted nca id of 32 is exceeded"
        )
    if per_nca is not None:
        if len(per_nca) > 32:
            raise r.error(
                "perNcaIdRate", per_nca, "Maximum number of per nca id config of 32 is exceeded"
            )
        for nca_id, value in per_nca.items():
            if not isinstance(value, str):
                raise r.error(f"perNcaIdRate[{nca_id}]", value, "must be a string")
            rate(f"perNcaIdRate[{nca_id}]", "rate limit", value)
    if (
        (global_rate is None and per_nca is None and per_user is None)
        or (exempted and global_rate is None)
        or (per_nca and exempted and set(per_nca) & set(exempted))
    ):
        raise invalid(r.obj, r.path, r.body, _MSG_RATE_LIMIT)
    fields = {
        "rateLimit": global_rate,
        "exemptedNcaIds": exempted,
        "perNcaIdRate": per_nca,
        "syncCheck": sync_check,
        "perUserRate": per_user,
    }
    out.update({key: value for key, value in fields.items() if value is not None})
    return out


def pinned_ids(body: object, *, new_function: bool) -> tuple[str | None, str | None]:
    """The ids a create body asks for (an extension of NVIDIA's API): `id` (a new function's
    only: a new version's body may carry it, checked and otherwise ignored) and `versionId`,
    canonical; None where absent. 400 naming a field that is no UUID."""
    found: list[str | None] = []
    for field in ("id", "versionId"):
        value = body.get(field) if isinstance(body, dict) else None
        if value is None:
            found.append(None)
            continue
        key = canonical_uuid(value) if isinstance(value, str) else None
        if key is None:
            raise bad_request(f"Invalid request: '{field}' must be a UUID, not {value!r}")
        found.append(None if field == "id" and not new_function else key)
    return found[0], found[1]
