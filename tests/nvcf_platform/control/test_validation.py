"""CreateFunctionRequest / UpdateFunctionRequest validation (reference §2.1, §3) and field reads."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvcf_platform.control.problems import ControlError
from nvcf_platform.control.validation import (
    MODEL_ONLY_CONTAINER_ARGS,
    function_definition,
    function_update,
)
from nvcf_platform.control.validation_fields import (
    format_duration,
    invalid,
    is_uri,
    parse_duration,
)

IMAGE = "nvcr.io/org/echo:1.0"


def body(**fields: Any) -> dict[str, Any]:
    return {"name": "echo", "inferenceUrl": "/predict", "containerImage": IMAGE, **fields}


def refused(payload: object, detail: str | None = None) -> str:
    with pytest.raises(ControlError) as error:
        function_definition(payload)
    assert error.value.status == 400
    if detail is not None:
        assert error.value.detail == detail
    return error.value.detail


def bean(field: str, rejected: str, message: str) -> str:
    return (
        f"Validation failed: [object=createFunctionRequest, field={field}, rejected={rejected}, "
        f"message={message}]"
    )


# -- defaults and normalisation ---------------------------------------------------------------


def test_minimal_container_function_gets_nvcf_defaults() -> None:
    assert function_definition(body()) == {
        "name": "echo",
        "inferenceUrl": "/predict",
        "health": {
            "protocol": "HTTP",
            "uri": "/v2/health/ready",
            "port": 8000,
            "timeout": "PT10S",
            "expectedStatusCode": 200,
        },
        "healthUri": "/v2/health/ready",
        "containerImage": IMAGE,
        "apiBodyFormat": "CUSTOM",
        "functionType": "DEFAULT",
        "description": "echo",
    }


def test_grpc_inference_url_without_health_means_a_grpc_health_check() -> None:
    definition = function_definition(body(inferenceUrl="/grpc", inferencePort=8001))
    assert definition["health"]["protocol"] == "gRPC"
    assert definition["health"]["port"] == 8001
    assert definition["inferencePort"] == 8001
    assert function_definition(body(inferenceUrl="/gRPC"))["health"]["protocol"] == "HTTP"


def test_health_uri_is_the_default_health_path_and_is_mirrored() -> None:
    definition = function_definition(body(healthUri="/health"))
    assert definition["health"]["uri"] == "/health"
    assert definition["healthUri"] == "/health"


def test_given_health_wins_over_health_uri_and_is_normalised() -> None:
    health = {
        "protocol": "grpc",
        "uri": "/ready",
        "port": 9000,
        "timeout": "pt90s",
        "expectedStatusCode": 204,
    }
    definition = function_definition(body(health=health, healthUri="/ignored"))
    assert definition["health"] == {
        "protocol": "gRPC",
        "uri": "/ready",
        "port": 9000,
        "timeout": "PT1M30S",
        "expectedStatusCode": 204,
    }
    assert definition["healthUri"] == "/ready"


def test_nulls_count_as_absent_and_unknown_fields_are_ignored() -> None:
    payload = body(
        inferencePort=None,
        health=None,
        containerArgs=None,
        tags=None,
        description=None,
        secrets=None,
        rateLimit=None,
        models=None,
        helmChart=None,
        someFutureField={"x": 1},
        utilsContainerImage="PYTHON",
    )
    assert function_definition(payload) == function_definition(body())


def test_enums_are_case_insensitive_and_upper_cased() -> None:
    definition = function_definition(body(apiBodyFormat="predict_v2", functionType="Streaming"))
    assert definition["apiBodyFormat"] == "PREDICT_V2"
    assert definition["functionType"] == "STREAMING"


@pytest.mark.parametrize(
    ("field", "value", "choices"),
    [
        ("apiBodyFormat", "JSON", "[PREDICT_V2, CUSTOM]"),
        ("functionType", "BATCH", "[DEFAULT, STREAMING, LLM]"),
    ],
)
def test_unknown_enum_values_are_refused(field: str, value: str, choices: str) -> None:
    refused(body(**{field: value}), bean(field, value, f"must be one of {choices}"))


def test_description_defaults_to_the_name_and_is_kept_when_given() -> None:
    assert function_definition(body(description="   "))["description"] == "echo"
    assert function_definition(body(description="Echoes"))["description"] == "Echoes"
    assert function_definition(body(description="d" * 256))["description"] == "d" * 256
    refused(
        body(description="d" * 257),
        bean(
            "description",
            "d" * 256 + "... (truncated for log/response, total length 257 chars)",
            "Maximum description length of 256 is exceeded.",
        ),
    )


def test_container_fields_are_kept() -> None:
    env = [{"key": "A", "value": ""}, {"key": "B", "value": "2"}]
    definition = function_definition(body(containerArgs="--port 8000", containerEnvironment=env))
    assert definition["containerArgs"] == "--port 8000"
    assert definition["containerEnvironment"] == env


@pytest.mark.parametrize(
    ("entry", "field", "rejected", "message"),
    [
        ({"value": "1"}, "containerEnvironment[0].key", "null", "must not be null"),
        ({"key": " ", "value": "1"}, "containerEnvironment[0].key", " ", "must not be blank"),
        ({"key": "A"}, "containerEnvironment[0].value", "null", "must not be null"),
        ({"key": "A", "value": 1}, "containerEnvironment[0].value", "1", "must be a string"),
    ],
)
def test_environment_entries_need_string_key_and_value(
    entry: dict[str, Any], field: str, rejected: str, message: str
) -> None:
    refused(body(containerEnvironment=[entry]), bean(field, rejected, message))


# -- name ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "   "])
def test_blank_name_gets_nvcf_message(name: str | None) -> None:
    refused(
        body(name=name),
        "Invalid request: 'name' cannot be empty/null in the create function payload",
    )


def test_name_length_and_regex() -> None:
    assert function_definition(body(name="a" * 128))["name"] == "a" * 128
    refused(
        body(name="a" * 129),
        bean("name", "a" * 129, "Invalid function name: must be 1 - 128 characters long"),
    )
    refused(
        body(name="-echo"),
        bean(
            "name",
            "-echo",
            "Invalid function name: Must conform to regex ^[a-z0-9A-Z][a-z0-9A-Z\\-_]*$",
        ),
    )
    refused(body(name=5), bean("name", "5", "must be a string"))


@given(st.from_regex(r"[a-z0-9A-Z][a-z0-9A-Z\-_]{0,127}", fullmatch=True))
def test_every_name_matching_the_regex_is_accepted(name: str) -> None:
    assert function_definition(body(name=name))["name"] == name


@given(st.text(min_size=1, max_size=20).filter(lambda s: s.strip()))
def test_names_outside_the_regex_are_refused(name: str) -> None:
    import re

    if re.fullmatch(r"[a-z0-9A-Z][a-z0-9A-Z\-_]*", name):
        assert function_definition(body(name=name))["name"] == name
    else:
        assert "field=name" in refused(body(name=name))


# -- URIs and ports -----------------------------------------------------------------------------


def test_inference_url_is_required_and_must_parse() -> None:
    refused(body(inferenceUrl=None), bean("inferenceUrl", "null", "must not be null"))
    refused(body(inferenceUrl=""), bean("inferenceUrl", "", "must not be blank"))
    refused(
        body(inferenceUrl="/pre dict"), bean("inferenceUrl", "/pre dict", "must be a valid URI")
    )
    for url in ("/predict", "predict", "http://localhost:8000/v1?x=1#f", "/a%20b"):
        assert function_definition(body(inferenceUrl=url))["inferenceUrl"] == url


@pytest.mark.parametrize(
    "text",
    [
        "/a b",
        "/a\tb",
        "/a<b",
        "/{x}",
        "/a|b",
        "/%zz",
        "/a#b#c",
        ":foo",
        "1abc:foo",
        "http:",
        "/[x]",
    ],
)
def test_java_uri_rejects(text: str) -> None:
    assert not is_uri(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "x",
        "nvcr.io/org/img:1",
        "localhost:5000/img",
        "oci://h/r/c-1.0.0.tgz",
        "http://[::1]:80/",
    ],
)
def test_java_uri_accepts(text: str) -> None:
    assert is_uri(text)


@pytest.mark.parametrize("field", ["healthUri", "containerImage", "helmChart"])
def test_uri_fields_must_parse(field: str) -> None:
    assert f"field={field}, rejected=a b, message=must be a valid URI" in refused(
        body(**{field: "a b"})
    )


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (0, "must be greater than 0"),
        (65536, "must be less than or equal to 65535"),
        ("8000", "must be an integer"),
        (True, "must be an integer"),
        (80.5, "must be an integer"),
    ],
)
def test_inference_port_range(port: object, message: str) -> None:
    assert "field=inferencePort" in refused(body(inferencePort=port))
    assert refused(body(inferencePort=port)).endswith(f"message={message}]")


def test_inference_port_bounds_are_accepted() -> None:
    assert function_definition(body(inferencePort=1))["inferencePort"] == 1
    assert function_definition(body(inferencePort=65535))["inferencePort"] == 65535


# -- health -------------------------------------------------------------------------------------

HEALTH = {
    "protocol": "HTTP",
    "uri": "/ready",
    "port": 8000,
    "timeout": "PT5S",
    "expectedStatusCode": 200,
}


@pytest.mark.parametrize("missing", sorted(HEALTH))
def test_health_needs_all_five_fields(missing: str) -> None:
    health = {k: v for k, v in HEALTH.items() if k != missing}
    refused(body(health=health), bean(f"health.{missing}", "null", "must not be null"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("protocol", "TCP", "must be one of [HTTP, gRPC]"),
        ("uri", "/re ady", "must be a valid URI"),
        ("port", 0, "must be greater than 0"),
        ("timeout", "10s", "must be a positive ISO-8601 duration"),
        ("timeout", "PT0S", "must be a positive ISO-8601 duration"),
        ("timeout", "-PT5S", "must be a positive ISO-8601 duration"),
        ("expectedStatusCode", 99, "must be greater than or equal to 100"),
        ("expectedStatusCode", "200", "must be an integer"),
    ],
)
def test_health_field_rules(field: str, value: object, message: str) -> None:
    detail = refused(body(health={**HEALTH, field: value}))
    assert f"field=health.{field}," in detail
    assert detail.endswith(f"message={message}]")


def test_blank_health_uri_gets_nvcf_message_with_its_newline() -> None:
    refused(
        body(health={**HEALTH, "uri": " "}),
        "Invalid request: Health URI cannot be empty/null in the create function payload\n",
    )


def test_health_must_be_an_object() -> None:
    refused(body(health="HTTP"), bean("health", "HTTP", "must be a JSON object"))


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("PT10S", "10", "PT10S"),
        ("pt1m", "60", "PT1M"),
        ("PT1H30M", "5400", "PT1H30M"),
        ("P1D", "86400", "PT24H"),
        ("PT0.5S", "0.5", "PT0.5S"),
        ("PT1,25S", "1.25", "PT1.25S"),
        ("PT-5S", "-5", None),
    ],
)
def test_durations_parse_as_java_does(text: str, seconds: str, canonical: str | None) -> None:
    assert parse_duration(text) == Decimal(seconds)
    if canonical:
        assert format_duration(Decimal(seconds)) == canonical


@pytest.mark.parametrize("text", ["", "P", "PT", "10S", "PT1.5M", "P1W", "PT10"])
def test_invalid_durations(text: str) -> None:
    assert parse_duration(text) is None


# -- one-of and helm exclusivity ----------------------------------------------------------------


def test_one_of_image_models_helm_is_required() -> None:
    message = (
        "Invalid request: One of the following properties 'containerImage', 'models', or "
        "'helmChart' must be specified in the payload"
    )
    refused(body(containerImage=None), message)
    refused(body(containerImage=None, models=[]), message)


HELM = {
    "containerImage": None,
    "helmChart": "oci://reg/charts/c-1.0.0.tgz",
    "helmChartServiceName": "svc",
}


def test_helm_function_is_accepted() -> None:
    definition = function_definition(body(**HELM))
    assert definition["helmChart"] == HELM["helmChart"]
    assert definition["helmChartServiceName"] == "svc"
    assert "containerImage" not in definition


@pytest.mark.parametrize(
    ("extra", "prop"),
    [
        ({"containerImage": IMAGE}, "containerImage"),
        ({"containerArgs": "--x"}, "containerArgs"),
        ({"containerEnvironment": []}, "containerEnvironment"),
    ],
)
def test_helm_chart_excludes_container_fields(extra: dict[str, Any], prop: str) -> None:
    refused(
        body(**{**HELM, **extra}),
        f"Invalid request: Cannot specify both '{prop}' and 'helmChart' properties in the payload",
    )


def test_helm_chart_with_blank_args_is_fine() -> None:
    assert "containerArgs" in function_definition(body(**HELM, containerArgs=" "))


@pytest.mark.parametrize(
    "fields",
    [
        {**HELM, "helmChartServiceName": None},
        {**HELM, "helmChartServiceName": " "},
        {"helmChartServiceName": "svc"},
    ],
)
def test_helm_chart_and_service_name_come_together(fields: dict[str, Any]) -> None:
    refused(
        body(**fields),
        "Invalid request: Either both or none of 'helmChart' and 'helmChartServiceName' "
        "properties must be specified",
    )


# -- models and resources -----------------------------------------------------------------------

MODEL = {"name": "m", "version": "1", "uri": "ngc://org/m:1"}


def test_model_only_function_gets_the_tritonserver_args() -> None:
    definition = function_definition(body(containerImage=None, models=[MODEL]))
    assert definition["containerArgs"] == MODEL_ONLY_CONTAINER_ARGS
    assert definition["models"] == [MODEL]
    assert "containerImage" not in definition
    assert MODEL_ONLY_CONTAINER_ARGS.startswith("tritonserver --model-repository /config/models")


def test_models_with_an_image_or_args_keep_their_args() -> None:
    assert "containerArgs" not in function_definition(body(models=[MODEL]))
    own = function_definition(body(containerImage=None, models=[MODEL], containerArgs="serve"))
    assert own["containerArgs"] == "serve"


def test_model_rules() -> None:
    refused(
        body(models=[MODEL, MODEL]),
        "Invalid request: duplicate model names are not allowed in 'models'",
    )
    refused(
        body(models=[{"name": "m", "version": "1"}]),
        "Invalid request: non-LLM function models must specify both 'version' and 'uri'",
    )
    refused(
        body(models=[{"version": "1", "uri": "u"}]),
        bean("models[0].name", "null", "must not be null"),
    )
    assert "models[0].uri" in refused(body(models=[{**MODEL, "uri": "a b"}]))


def test_llm_functions_need_models_with_llm_config_uris() -> None:
    refused(
        body(functionType="llm"),
        "Invalid request: 'models' must be specified when functionType is LLM",
    )
    refused(
        body(functionType="LLM", models=[{"name": "m"}]),
        "Invalid request: LLM function models must specify 'llmConfig'",
    )
    refused(
        body(functionType="LLM", models=[{"name": "m", "llmConfig": {"uris": []}}]),
        "Invalid request: LLM function models must specify non-empty 'llmConfig.uris'",
    )
    llm = {"name": "m", "llmConfig": {"uris": ["http://x"]}}
    definition = function_definition(body(functionType="LLM", models=[llm]))
    assert definition["models"] == [llm]


def test_resources_need_all_three_fields_and_are_a_set() -> None:
    assert function_definition(body(resources=[MODEL, MODEL]))["resources"] == [MODEL]
    refused(
        body(resources=[{"name": "r", "version": "1"}]),
        bean("resources[0].uri", "null", "must not be null"),
    )


# -- tags ---------------------------------------------------------------------------------------


def test_tags_are_a_set_and_omitted_when_empty() -> None:
    assert function_definition(body(tags=["a", "b:c=d", "a"]))["tags"] == ["a", "b:c=d"]
    assert "tags" not in function_definition(body(tags=[]))


def test_tag_limits() -> None:
    assert len(function_definition(body(tags=[f"t{i}" for i in range(64)]))["tags"]) == 64
    assert refused(body(tags=[f"t{i}" for i in range(65)])).endswith(
        "message=Maximum number of tags of 64 is exceeded.]"
    )
    refused(
        body(tags=["t" * 129]), bean("tags[]", "t" * 129, "Maximum tag length of 128 is exceeded.")
    )
    refused(body(tags=["a b"]), bean("tags[]", "a b", 'must match "[a-zA-Z0-9\\-_:=]+"'))
    refused(body(tags="a"), bean("tags", "a", "must be a JSON array"))
    refused(body(tags=[1]), bean("tags[]", "1", "must be a string"))


@given(st.lists(st.from_regex(r"[a-zA-Z0-9\-_:=]{1,128}", fullmatch=True), max_size=10))
def test_every_tag_matching_the_regex_is_accepted(tags: list[str]) -> None:
    assert function_definition(body(tags=tags)).get("tags", []) == list(dict.fromkeys(tags))


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_keep_their_values() -> None:
    secrets = [{"name": "API_KEY", "value": "s3cret"}, {"name": "cfg.json", "value": {"a": 1}}]
    assert function_definition(body(secrets=secrets))["secrets"] == secrets


@pytest.mark.parametrize(
    ("secret", "field", "rejected", "message"),
    [
        ({"value": "x"}, "name", "null", "must not be null"),
        (
            {"name": "_x", "value": "x"},
            "name",
            "_x",
            "Invalid secret name: Must conform to regex ^[a-z0-9A-Z][a-z0-9A-Z\\_\\.\\-]*$",
        ),
        (
            {"name": "n" * 49, "value": "x"},
            "name",
            "n" * 49,
            "Invalid secret name: must be 1 - 48 chars long",
        ),
        ({"name": "n"}, "value", "null", "must not be null"),
        ({"name": "n", "value": "  "}, "value", "***", "Invalid secret value specified"),
        ({"name": "n", "value": "v" * 32769}, "value", "***", "Invalid secret value specified"),
        ({"name": "n", "value": 5}, "value", "***", "Invalid secret value specified"),
    ],
)
def test_secret_rules_never_echo_the_value(
    secret: dict[str, Any], field: str, rejected: str, message: str
) -> None:
    refused(body(secrets=[secret]), bean(f"secrets[].{field}", rejected, message))


def test_longest_secret_value_and_duplicate_names() -> None:
    assert function_definition(body(secrets=[{"name": "n", "value": "v" * 32768}]))
    refused(
        body(secrets=[{"name": "n", "value": "a"}, {"name": "n", "value": "b"}]),
        "Invalid request: Duplicate secrets keys in the payload",
    )


# -- rate limit ---------------------------------------------------------------------------------

RATE_MESSAGE = (
    "Either global rateLimit, perNcaIdRate, or perUserRate must be non-null, per-ncaid rates "
    "ncaids cannot be in exemptedNcaIds, and exemptedNcaIds can only exist when global "
    "rateLimit is provided"
)


@pytest.mark.parametrize("rate", ["100-S", "10-S,500-M", "1-D, 2-H", "5-S,6-M,7-H,8-D"])
def test_valid_rates_are_stored_as_given(rate: str) -> None:
    limit = {"rateLimit": rate, "exemptedNcaIds": ["a"], "syncCheck": True}
    assert function_definition(body(rateLimit=limit))["rateLimit"] == limit


@pytest.mark.parametrize("rate", ["0-S", "10-s", "10", "10-S,20-S", "10-S,", "-S", "10-S\n"])
def test_invalid_rates_are_refused(rate: str) -> None:
    assert "message=Invalid rate: Must conform to regex" in refused(
        body(rateLimit={"rateLimit": rate})
    )


def test_rate_limit_cross_rules() -> None:
    detail = refused(body(rateLimit={"syncCheck": True}))
    assert detail.endswith(f"message={RATE_MESSAGE}]")
    assert RATE_MESSAGE in refused(body(rateLimit={"perUserRate": "1-S", "exemptedNcaIds": ["a"]}))
    assert RATE_MESSAGE in refused(
        body(rateLimit={"rateLimit": "1-S", "perNcaIdRate": {"a": "2-S"}, "exemptedNcaIds": ["a"]})
    )
    ok = {"perNcaIdRate": {"a": "2-S"}, "perUserRate": "3-M"}
    assert function_definition(body(rateLimit=ok))["rateLimit"] == ok


def test_rate_limit_sizes_and_types() -> None:
    many = [f"n{i}" for i in range(33)]
    assert "Maximum number of exempted nca id of 32 is exceeded" in refused(
        body(rateLimit={"rateLimit": "1-S", "exemptedNcaIds": many})
    )
    assert "Maximum number of per nca id config of 32 is exceeded" in refused(
        body(rateLimit={"perNcaIdRate": dict.fromkeys(many, "1-S")})
    )
    assert "Invalid rate limit: Must conform" in refused(
        body(rateLimit={"perNcaIdRate": {"a": "x"}})
    )
    assert "Invalid per-user rate: Must conform" in refused(body(rateLimit={"perUserRate": "x"}))
    assert "field=rateLimit.syncCheck" in refused(
        body(rateLimit={"rateLimit": "1-S", "syncCheck": "y"})
    )


def test_body_must_be_an_object() -> None:
    refused([], bean("body", "[]", "must be a JSON object"))


def test_rejected_values_are_truncated_like_nvidias() -> None:
    detail = invalid("o", "f", "x" * 300, "m").detail
    assert "x" * 256 + "... (truncated for log/response, total length 300 chars)" in detail


# -- update -------------------------------------------------------------------------------------


def update_refused(payload: object, detail: str) -> None:
    with pytest.raises(ControlError) as error:
        function_update(payload)
    assert (error.value.status, error.value.detail) == (400, detail)


@pytest.mark.parametrize("payload", [{}, {"tags": None, "modelUpdates": []}, {"other": 1}])
def test_update_needs_one_field(payload: dict[str, Any]) -> None:
    update_refused(
        payload,
        "Invalid request: at least one of 'tags', 'rateLimit', 'modelUpdates', or "
        "'llmInvocationConfig' must be specified",
    )


def test_update_returns_only_the_fields_given() -> None:
    # Empty tags clear the stored ones (None: the plane drops the field; answers omit it).
    assert function_update({"tags": []}) == {"tags": None}
    assert function_update({"tags": ["a", "a"]}) == {"tags": ["a"]}
    assert function_update({"rateLimit": {"rateLimit": "1-S"}}) == {
        "rateLimit": {"rateLimit": "1-S"}
    }
    assert function_update({"llmInvocationConfig": {"x": 1}}) == {"llmInvocationConfig": {"x": 1}}
    update = {"modelName": "m", "llmConfig": {"routingMethod": "rr", "other": 1}}
    assert function_update({"modelUpdates": [update]}) == {
        "modelUpdates": [{"modelName": "m", "llmConfig": {"routingMethod": "rr"}}]
    }


def test_update_rules() -> None:
    with pytest.raises(ControlError, match="updateFunctionRequest, field=tags"):
        function_update({"tags": ["a b"]})
    with pytest.raises(ControlError, match="rateLimit"):
        function_update({"rateLimit": {}})
    update_refused(
        {"modelUpdates": [{"modelName": "m", "llmConfig": {"tokenRateLimit": "1-S"}}] * 2},
        "Invalid request: duplicate model names are not allowed in 'modelUpdates'",
    )
    update_refused(
        {"modelUpdates": [{"modelName": "m"}]},
        "Invalid request: at least one of 'tokenRateLimit' or 'routingMethod' must be specified",
    )
    with pytest.raises(ControlError, match=r"modelUpdates\[0\]\.modelName"):
        function_update({"modelUpdates": [{"modelName": ""}]})
