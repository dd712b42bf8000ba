"""Flags to request bodies of `nvcf-sidecar function` (parsed by the real argument parser)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from nvcf_platform.cli import UsageError, bodies
from nvcf_platform.cli.function import add_arguments

FID = "6f1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a11"
GROUPS: list[dict[str, Any]] = [
    {
        "name": "local",
        "gpus": [
            {
                "name": "L40S",
                "instanceTypes": [
                    {"name": "L40S_2x", "default": False},
                    {"name": "L40S_1x", "default": True},
                ],
            },
            {"name": "A100", "instanceTypes": [{"name": "A100_1x"}]},
        ],
    }
]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="function")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_create_flags_become_nvcfs_create_body() -> None:
    args = parse(
        "create", "--name", "echo", "--image", "nvcr.io/x/echo:1", "--inference-url", "/echo",
        "--inference-port", "9000", "--description", "d", "--function-type", "streaming",
        "--api-body-format", "predict_v2", "--container-args", "serve --fast",
        "--container-env", "A=1", "--container-env", "B=x=y", "--secrets", "KEY=s3cret",
        "--secrets", 'JSON={"a": 1}', "--tags", "a,b", "--tags", "c",
        "--resources", "r:1:ngc://org/r:1", "--health-uri", "/ready",
    )  # fmt: skip
    assert bodies.create_body(args, None) == {
        "name": "echo",
        "containerImage": "nvcr.io/x/echo:1",
        "inferenceUrl": "/echo",
        "inferencePort": 9000,
        "description": "d",
        "functionType": "STREAMING",
        "apiBodyFormat": "PREDICT_V2",
        "containerArgs": "serve --fast",
        "containerEnvironment": [{"key": "A", "value": "1"}, {"key": "B", "value": "x=y"}],
        "secrets": [{"name": "KEY", "value": "s3cret"}, {"name": "JSON", "value": {"a": 1}}],
        "tags": ["a", "b", "c"],
        "resources": [{"name": "r", "version": "1", "uri": "ngc://org/r:1"}],
        # One health flag brings NVCF's other four defaults; the port follows the inference port.
        "health": {
            "protocol": "HTTP",
            "uri": "/ready",
            "port": 9000,
            "timeout": "PT10S",
            "expectedStatusCode": 200,
        },
    }


def test_flags_override_the_input_files_fields(tmp_path: Path) -> None:
    path = tmp_path / "create.json"
    path.write_text(
        json.dumps(
            {
                "name": "from-file",
                "inferenceUrl": "/file",
                "containerImage": "file:1",
                "tags": ["old"],
                "health": {"protocol": "gRPC", "uri": "/h", "port": 1, "timeout": "PT1S"},
            }
        )
    )
    args = parse(
        "create", "--input-file", str(path), "--name", "from-flag", "--tags", "new",
        "--health-timeout", "30",
    )  # fmt: skip
    body = bodies.create_body(args, bodies.load_input_file(args.input_file))
    assert body["name"] == "from-flag"
    assert body["inferenceUrl"] == "/file"
    assert body["containerImage"] == "file:1"
    assert body["tags"] == ["new"]
    assert body["health"] == {
        "protocol": "gRPC",
        "uri": "/h",
        "port": 1,
        "timeout": "PT30S",
        "expectedStatusCode": 200,
    }


def test_a_models_only_function_needs_no_image() -> None:
    args = parse(
        "create", "--name", "m", "--inference-url", "/v2/models/m/infer",
        "--models", "m:1:ngc://org/team/m:1",
    )  # fmt: skip
    body = bodies.create_body(args, None)
    assert body["models"] == [{"name": "m", "version": "1", "uri": "ngc://org/team/m:1"}]
    assert "containerImage" not in body


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["--image", "x", "--inference-url", "/x"], "--name"),
        (["--name", "x", "--image", "x"], "--inference-url"),
        (["--name", "x", "--inference-url", "/x"], "--image, --models or --helm-chart"),
    ],
)
def test_create_without_a_required_field_is_a_usage_error(argv: list[str], missing: str) -> None:
    with pytest.raises(UsageError, match=missing):
        bodies.create_body(parse("create", *argv), None)


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "--container-env", "NOEQUALS"],
        ["create", "--models", "name:only"],
        ["create", "--health-timeout", "soon"],
        ["create", "--inference-port", "70000"],
        ["create", "--function-type", "batch"],
        ["deploy", "create", "--min-instances", "-1"],
        ["deploy", "create", "--poll-interval", "0"],
        ["get", "--function-id", "not-a-uuid"],
    ],
)
def test_bad_flag_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    flag = next(arg for arg in argv if arg.startswith("--"))
    assert f"error: argument {flag}" in capsys.readouterr().err


def test_input_file_that_is_not_json_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not JSON"):
        bodies.load_input_file(path)
    with pytest.raises(UsageError, match=r"missing\.json"):
        bodies.load_input_file(tmp_path / "missing.json")


@pytest.mark.parametrize(("text", "iso"), [("10", "PT10S"), ("1.5", "PT1.5S"), ("pt2m", "PT2M")])
def test_health_timeout_takes_seconds_or_an_iso_duration(text: str, iso: str) -> None:
    assert bodies.duration(text) == iso


def test_deploy_flags_default_to_one_instance_and_carry_placement() -> None:
    args = parse(
        "deploy", "create", "--gpu", "L40S", "--instance-type", "L40S_1x",
        "--max-request-concurrency", "4", "--regions", "eu,us", "--clusters", "c1",
        "--availability-zones", "z1,z2", "--attributes", "a", "--preferred-order", "2",
        "--backend", "local",
    )  # fmt: skip
    assert bodies.deployment_body(args, None) == {
        "deploymentSpecifications": [
            {
                "gpu": "L40S",
                "instanceType": "L40S_1x",
                "minInstances": 1,
                "maxInstances": 1,
                "maxRequestConcurrency": 4,
                "backend": "local",
                "regions": ["eu", "us"],
                "clusters": ["c1"],
                "availabilityZones": ["z1", "z2"],
                "attributes": ["a"],
                "preferredOrder": 2,
            }
        ]
    }


@pytest.mark.parametrize(
    "base",
    [
        {"deploymentSpecifications": [{"gpu": "A100", "minInstances": 0, "maxInstances": 3}]},
        [{"gpu": "A100", "minInstances": 0, "maxInstances": 3}],
        {"gpu": "A100", "minInstances": 0, "maxInstances": 3},
    ],
)
def test_deploy_input_file_may_be_the_body_the_list_or_one_spec(base: Any) -> None:
    body = bodies.deployment_body(parse("deploy", "create", "--max-instances", "5"), base)
    assert body == {
        "deploymentSpecifications": [{"gpu": "A100", "minInstances": 0, "maxInstances": 5}]
    }


def test_missing_gpu_and_instance_type_come_from_the_cluster_groups() -> None:
    assert bodies.default_instance_type(GROUPS) == ("L40S", "L40S_1x")
    assert bodies.default_instance_type(GROUPS, gpu="a100") == ("A100", "A100_1x")
    assert bodies.default_instance_type(GROUPS, instance_type="L40S_2x") == ("L40S", "L40S_2x")
    body: dict[str, Any] = {"deploymentSpecifications": [{"gpu": "A100"}, {}]}
    bodies.fill_instance_types(body, GROUPS)
    assert body["deploymentSpecifications"] == [
        {"gpu": "A100", "instanceType": "A100_1x"},
        {"gpu": "L40S", "instanceType": "L40S_1x"},
    ]
    with pytest.raises(UsageError, match="offer no GPU 'H100'"):
        bodies.default_instance_type(GROUPS, gpu="H100")
    with pytest.raises(UsageError, match="offer no GPU"):
        bodies.default_instance_type([])


def test_update_and_scale_bodies_need_something_to_change() -> None:
    assert bodies.update_body(parse("update", "--tags", "x,y"), None) == {"tags": ["x", "y"]}
    with pytest.raises(UsageError, match="--tags or --input-file"):
        bodies.update_body(parse("update"), None)
    scale = parse("deploy", "update", "--max-instances", "3")
    assert bodies.gpu_specification_update(scale, {"minInstances": 2}) == {
        "minInstances": 2,
        "maxInstances": 3,
    }
    with pytest.raises(UsageError, match="--min-instances"):
        bodies.gpu_specification_update(parse("deploy", "update"), None)


def test_connection_options_go_before_or_after_the_subcommand() -> None:
    before = parse("--base-url", "http://h:1/", "--token", "t", "deploy", "get")
    after = parse("deploy", "get", "--base-url", "http://h:2", "--token", "u")
    assert (before.base_url, before.token) == ("http://h:1", "t")
    assert (after.base_url, after.token) == ("http://h:2", "u")
    assert parse("create", "--function-id", FID.upper()).function_id == FID
