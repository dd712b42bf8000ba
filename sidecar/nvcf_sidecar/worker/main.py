"""`nvcf-sidecar run`: its flags, its configuration, and its exit (status, termination log).

`run_command` builds the `WorkerConfig` from NVIDIA's environment variables with the flags on
top, runs the `Sidecar` until SIGTERM or SIGINT, and turns a fatal error into exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from nvcf_sidecar import eventloop
from nvcf_sidecar.worker.config import ConfigError, WorkerConfig, parse_duration
from nvcf_sidecar.worker.logs import configure_worker_logging, parse_log_level
from nvcf_sidecar.worker.sidecar import StartupError, run_sidecar

__all__ = [
    "TERMINATION_LOG",
    "add_arguments",
    "config_from_args",
    "run_command",
    "write_termination_log",
]

logger = logging.getLogger(__name__)

TERMINATION_LOG: Final = Path("/dev/termination-log")


def write_termination_log(
    error: StartupError,
    *,
    path: Path = TERMINATION_LOG,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Append `{message, isInternal}` to Kubernetes' termination log; only inside Kubernetes.

    Returns whether it was written.
    """
    env = os.environ if environ is None else environ
    if not env.get("KUBERNETES_SERVICE_HOST"):
        return False
    document = orjson.dumps({"message": error.message, "isInternal": error.is_internal})
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(descriptor, "wb") as file:
            file.write(document)
            file.flush()
            os.fsync(file.fileno())
    except OSError as write_error:
        logger.error("could not write the termination log", extra={"error": str(write_error)})
        return False
    return True


# --- command line ------------------------------------------------------------------------------

# flag dest -> NVIDIA's environment variable; the flag's text replaces the variable's before
# WorkerConfig.from_env parses it, so both get the same validation.
_ENV_FLAGS: Final = {
    "function_id": "FUNCTION_ID",
    "function_version_id": "FUNCTION_VERSION_ID",
    "function_name": "FUNCTION_NAME",
    "instance_id": "INSTANCE_ID",
    "nca_id": "NCA_ID",
    "grpc_url": "NVCF_FQDN_GRPC",
    "nats_url": "NVCF_FQDN_NATS",
    "inference_port": "INFERENCE_PORT",
    "inference_health_endpoint": "INFERENCE_HEALTH_ENDPOINT",
    "inference_health_port": "INFERENCE_HEALTH_PORT",
    "inference_health_protocol": "INFERENCE_HEALTH_PROTOCOL",
    "inference_health_timeout": "INFERENCE_HEALTH_TIMEOUT",
    "inference_ready_timeout": "INFERENCE_READY_TIMEOUT",
    "max_request_concurrency": "MAX_REQUEST_CONCURRENCY",
    "health_port": "HEALTH_PORT",
    "base_response_dir": "BASE_RESPONSE_DIR",
    "base_asset_dir": "BASE_ASSET_DIR",
    "shared_config_dir": "SHARED_CONFIG_DIR",
    "log_level": "LOG_LEVEL",
}


def _seconds(text: str) -> float:
    try:
        return parse_duration("value", text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `run` flags; each one overrides the environment variable named in its help."""
    identity = parser.add_argument_group("function and platform (override NVIDIA's env vars)")
    for flag, dest, metavar in (
        ("--function-id", "function_id", "UUID"),
        ("--function-version-id", "function_version_id", "UUID"),
        ("--function-name", "function_name", "NAME"),
        ("--instance-id", "instance_id", "ID"),
        ("--nca-id", "nca_id", "ID"),
        ("--grpc-url", "grpc_url", "URL"),
        ("--nats-url", "nats_url", "URL"),
    ):
        identity.add_argument(flag, dest=dest, metavar=metavar, help=f"env {_ENV_FLAGS[dest]}")
    container = parser.add_argument_group("inference container")
    for flag, dest, metavar in (
        ("--inference-port", "inference_port", "PORT"),
        ("--inference-health-endpoint", "inference_health_endpoint", "PATH"),
        ("--inference-health-port", "inference_health_port", "PORT"),
        ("--inference-health-protocol", "inference_health_protocol", "http|grpc"),
        ("--inference-health-timeout", "inference_health_timeout", "DURATION"),
        ("--inference-ready-timeout", "inference_ready_timeout", "DURATION"),
        ("--max-request-concurrency", "max_request_concurrency", "N"),
        ("--base-response-dir", "base_response_dir", "DIR"),
        ("--base-asset-dir", "base_asset_dir", "DIR"),
    ):
        container.add_argument(flag, dest=dest, metavar=metavar, help=f"env {_ENV_FLAGS[dest]}")
    sidecar = parser.add_argument_group("the sidecar process")
    sidecar.add_argument(
        "--health-port", dest="health_port", metavar="PORT", help="env HEALTH_PORT (8080)"
    )
    sidecar.add_argument(
        "--health-host",
        dest="health_host",
        metavar="HOST",
        help="address of the health and metrics server (default 0.0.0.0)",
    )
    sidecar.add_argument(
        "--shared-config-dir", dest="shared_config_dir", metavar="DIR", help="env SHARED_CONFIG_DIR"
    )
    sidecar.add_argument(
        "--log-level", dest="log_level", metavar="LEVEL", help="env LOG_LEVEL (info)"
    )
    tuning = parser.add_argument_group(
        "timing (NVIDIA's constants by default; DURATION: 10s, 500ms)"
    )
    tuning.add_argument(
        "--keepalive-interval",
        type=_seconds,
        metavar="DURATION",
        help="+WPI period (10s; at most a third of the consumer's ack wait)",
    )
    tuning.add_argument(
        "--health-check-interval",
        type=_seconds,
        metavar="DURATION",
        help="container re-check period once serving (10s)",
    )
    tuning.add_argument(
        "--fetch-max-wait", type=_seconds, metavar="DURATION", help="long-poll of a pull (5m)"
    )
    tuning.add_argument(
        "--fetch-heartbeat", type=_seconds, metavar="DURATION", help="pull heartbeat (5s)"
    )
    tuning.add_argument(
        "--shutdown-grace",
        type=_seconds,
        metavar="DURATION",
        help="on SIGTERM, how long in-flight requests may run before they are cancelled "
        "(default: no limit, like NVIDIA's worker)",
    )


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> WorkerConfig:
    """WorkerConfig from the environment with the flags given on top; ConfigError if invalid."""
    env = dict(os.environ if environ is None else environ)
    for dest, name in _ENV_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            env[name] = str(value)
    config = WorkerConfig.from_env(env)
    overrides: dict[str, Any] = {}
    for dest, field_name in (
        ("health_host", "sidecar_health_host"),
        ("keepalive_interval", "keepalive_interval"),
        ("health_check_interval", "health_check_interval"),
        ("fetch_max_wait", "fetch_max_wait"),
        ("fetch_heartbeat", "fetch_heartbeat"),
        ("shutdown_grace", "shutdown_grace"),
    ):
        value = getattr(args, dest, None)
        if value is not None:
            overrides[field_name] = value
    return dataclasses.replace(config, **overrides) if overrides else config


def _log_level(config: WorkerConfig, explicit: bool) -> int:
    try:
        return parse_log_level(config.log_level)
    except ValueError:
        if explicit:
            raise ConfigError(f"--log-level={config.log_level!r}: unknown level") from None
        return logging.INFO  # NVIDIA falls back to info for an unknown LOG_LEVEL


def run_command(args: argparse.Namespace) -> int:
    """Entry of `nvcf-sidecar run`: 0 after a graceful stop, 1 when the sidecar cannot run."""
    configure_worker_logging(logging.INFO)
    try:
        config = config_from_args(args)
        configure_worker_logging(_log_level(config, explicit=args.log_level is not None))
        factory = eventloop.loop_factory()
    except (ConfigError, eventloop.EventLoopError) as error:
        failure = StartupError(f"invalid configuration: {error}", is_internal=False)
        logger.error(failure.message)
        write_termination_log(failure)
        return 1
    try:
        eventloop.run(run_sidecar(config), factory=factory)
    except StartupError as error:
        logger.error(
            "sidecar failed", extra={"error": error.message, "internal": error.is_internal}
        )
        write_termination_log(error)
        return 1
    logger.info("sidecar stopped")
    return 0


if __name__ == "__main__":
    from nvcf_sidecar.cli import main as cli_main

    sys.exit(cli_main(["run", *sys.argv[1:]]))
