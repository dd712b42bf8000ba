"""WorkerConfig from NVIDIA's environment variables, and `nvcf-sidecar run` flags on top."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nvcf_sidecar.worker.config import ConfigError, WorkerConfig, parse_duration
from nvcf_sidecar.worker.main import add_arguments, config_from_args

FID = "11111111-2222-3333-4444-555555555555"
FVID = "66666666-7777-8888-9999-000000000000"
REQUIRED = {"FUNCTION_ID": FID, "FUNCTION_VERSION_ID": FVID, "NVCF_FQDN_GRPC": "http://api:9090"}


def test_defaults_are_nvidias() -> None:
    config = WorkerConfig.from_env(REQUIRED)
    assert config.function_id == FID
    assert config.function_version_id == FVID
    assert config.max_request_concurrency == 1
    assert config.nats_url == "nats://127.0.0.1:4222"
    assert config.nkey_seed is None
    assert config.inference_url == "http://127.0.0.1:8000"
    assert config.health_url == "http://127.0.0.1:8000/v2/health/ready"
    assert config.health_timeout == 31.0
    assert config.ready_timeout == 30 * 60.0
    assert config.health_expected_status == 200
    assert config.sidecar_health_port == 8080
    assert config.base_asset_dir == Path("/var/inf/inputAssets")
    assert config.base_response_dir == Path("/var/inf/response")
    assert config.shared_config_dir == Path("/config/shared")
    assert config.nats_connection_name.startswith(f"worker_{FVID}_")
    # The process shell's own timings default to NVIDIA's constants.
    assert config.keepalive_interval == 10.0
    assert config.health_check_interval == 10.0
    assert config.fetch_max_wait == 300.0
    assert config.fetch_heartbeat == 5.0
    assert config.shutdown_grace is None
    assert config.log_level == "info"
    assert config.sidecar_health_host == "0.0.0.0"


def test_every_variable_overrides_its_default() -> None:
    config = WorkerConfig.from_env(
        {
            **REQUIRED,
            "NVCF_FQDN_NATS": "nats://nats.example:4222",
            "NVCF_WORKER_TOKEN": "tok",
            "NKEY_SEED": "SUSEED",
            "INSTANCE_ID": "pod-1",
            "NCA_ID": "nca",
            "MAX_REQUEST_CONCURRENCY": "8",
            "INFERENCE_PORT": "9000",
            "INFERENCE_HEALTH_PORT": "9001",
            "INFERENCE_HEALTH_ENDPOINT": "/healthz",
            "INFERENCE_HEALTH_EXPECTED_RESPONSE_CODE": "204",
            "INFERENCE_HEALTH_TIMEOUT": "5s",
            "INFERENCE_READY_TIMEOUT": "PT2M",
            "HEALTH_PORT": "8181",
            "BASE_ASSET_DIR": "/a",
            "BASE_RESPONSE_DIR": "/r",
            "SHARED_CONFIG_DIR": "/s",
            "LOG_LEVEL": "DEBUG",
            "HELM_CHART_INFERENCE_SERVICE_NAME": "svc",
            "HELM_CHART_NAMESPACE": "ns",
        }
    )
    assert config.nats_url == "nats://nats.example:4222"
    assert config.worker_token == "tok"
    assert config.nkey_seed == "SUSEED"
    assert config.nats_connection_name == f"worker_{FVID}_pod-1"
    assert config.billing_nca_id == "nca"
    assert config.max_request_concurrency == 8
    assert config.health_url == "http://svc.ns.svc.cluster.local:9001/healthz"
    assert config.inference_url == "http://svc.ns.svc.cluster.local:9000"
    assert config.health_expected_status == 204
    assert config.health_timeout == 5.0
    assert config.ready_timeout == 120.0
    assert config.sidecar_health_port == 8181
    assert (config.base_asset_dir, config.base_response_dir) == (Path("/a"), Path("/r"))
    assert config.shared_config_dir == Path("/s")
    assert config.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("PT1M30S", 90.0),
        ("PT0.5S", 0.5),
        ("P1D", 86400.0),
        ("45", 45.0),
    ],
)
def test_durations_in_go_iso_or_seconds(text: str, seconds: float) -> None:
    assert parse_duration("INFERENCE_READY_TIMEOUT", text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"FUNCTION_ID": "not-a-uuid"}, "FUNCTION_ID='not-a-uuid': must be a UUID"),
        ({"FUNCTION_VERSION_ID": "x"}, "FUNCTION_VERSION_ID='x': must be a UUID"),
        ({"NVCF_FQDN_GRPC": "api:9090"}, "NVCF_FQDN_GRPC='api:9090': must start with http://"),
        ({"MAX_REQUEST_CONCURRENCY": "many"}, "MAX_REQUEST_CONCURRENCY='many': must be an integer"),
        ({"INFERENCE_PORT": "70000"}, "INFERENCE_PORT=70000: not a TCP port"),
        (
            {"INFERENCE_READY_TIMEOUT": "soon"},
            "INFERENCE_READY_TIMEOUT='soon': expected a duration",
        ),
        ({"INFERENCE_HEALTH_PROTOCOL": "tcp"}, "INFERENCE_HEALTH_PROTOCOL='tcp'"),
        ({"V3_BACKWARDS_COMPATIBILITY_DISABLED": "maybe"}, "must be true or false"),
        ({"NVCF_ATTACH_CLIENT": "curl"}, "NVCF_ATTACH_CLIENT='curl': must be lean or aiohttp"),
        (
            {"NVCF_CONTAINER_CLIENT": "httpx"},
            "NVCF_CONTAINER_CLIENT='httpx': must be lean or aiohttp",
        ),
    ],
)
def test_bad_values_name_the_variable(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        WorkerConfig.from_env({**REQUIRED, **changes})
    assert message in str(error.value)


def test_missing_required_variables_are_listed() -> None:
    with pytest.raises(ConfigError, match="FUNCTION_ID, FUNCTION_VERSION_ID, NVCF_FQDN_GRPC"):
        WorkerConfig.from_env({})


def test_zero_concurrency_becomes_one_like_nvidia() -> None:
    assert (
        WorkerConfig.from_env({**REQUIRED, "MAX_REQUEST_CONCURRENCY": "0"}).max_request_concurrency
        == 1
    )


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_the_environment() -> None:
    args = _parse(
        "--function-version-id",
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "--nats-url",
        "nats://127.0.0.1:4333",
        "--inference-port",
        "9100",
        "--max-request-concurrency",
        "4",
        "--health-port",
        "0",
        "--health-host",
        "127.0.0.1",
        "--base-response-dir",
        "/tmp/r",
        "--keepalive-interval",
        "500ms",
        "--shutdown-grace",
        "1m",
        "--inference-ready-timeout",
        "2m",
    )
    env = {
        **REQUIRED,
        "INFERENCE_PORT": "7000",
        "MAX_REQUEST_CONCURRENCY": "2",
        "HEALTH_PORT": "81",
    }
    config = config_from_args(args, env)
    assert config.function_id == FID  # from the environment
    assert config.function_version_id == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert config.nats_url == "nats://127.0.0.1:4333"
    assert config.inference_port == 9100
    assert config.health_port == 9100  # the health port follows the inference port
    assert config.max_request_concurrency == 4
    assert config.sidecar_health_port == 8080  # like HEALTH_PORT=0: the default
    assert config.sidecar_health_host == "127.0.0.1"
    assert config.base_response_dir == Path("/tmp/r")
    assert config.keepalive_interval == 0.5
    assert config.shutdown_grace == 60.0
    assert config.ready_timeout == 120.0


def test_flags_alone_are_enough() -> None:
    args = _parse(
        "--function-id", FID, "--function-version-id", FVID, "--grpc-url", "https://api:443"
    )
    config = config_from_args(args, {})
    assert config.grpc_url == "https://api:443"


def test_bad_flag_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="MAX_REQUEST_CONCURRENCY='x'"):
        config_from_args(_parse("--max-request-concurrency", "x"), REQUIRED)
    with pytest.raises(ConfigError, match="--fetch-heartbeat"):
        config_from_args(_parse("--fetch-heartbeat", "10s", "--fetch-max-wait", "15s"), REQUIRED)
    with pytest.raises(SystemExit):
        _parse("--keepalive-interval", "often")


def test_nvcf_fqdn_nats_takes_comma_separated_servers_like_nvidias_worker() -> None:
    config = WorkerConfig.from_env(
        {**REQUIRED, "NVCF_FQDN_NATS": "nats://a:4222, nats://b:4222,nats://c:4222"}
    )
    assert config.nats_servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert WorkerConfig.from_env(REQUIRED).nats_servers == ["nats://127.0.0.1:4222"]


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("nats://a:4222,,nats://b:4222", "none empty"),
        ("nats://a:4222,", "none empty"),
        ("ws://a:80,nats://b:4222", "cannot be mixed"),
    ],
)
def test_a_malformed_server_list_names_nvcf_fqdn_nats(value: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=f"NVCF_FQDN_NATS=.*{complaint}"):
        WorkerConfig.from_env({**REQUIRED, "NVCF_FQDN_NATS": value})


@pytest.mark.parametrize(
    ("variable", "attribute", "other"),
    [
        ("NVCF_ATTACH_CLIENT", "lean_attach", "lean_container"),
        ("NVCF_CONTAINER_CLIENT", "lean_container", "lean_attach"),
    ],
)
@pytest.mark.parametrize(
    ("value", "lean"), [(None, True), ("", True), (" Lean ", True), (" aiohttp ", False)]
)
def test_the_attach_and_container_clients_are_lean_unless_aiohttp_is_asked_for(
    variable: str, attribute: str, other: str, value: str | None, lean: bool
) -> None:
    changes = {} if value is None else {variable: value}
    config = WorkerConfig.from_env({**REQUIRED, **changes})
    assert getattr(config, attribute) is lean
    assert getattr(config, other)  # each variable picks its own call's client
