"""The sidecar's configuration: NVIDIA's `worker-utils` environment variables, validated once.

`WorkerConfig.from_env()` reads the exact variable names NVIDIA's worker reads (reference §2.8);
`nvcf-sidecar run` flags override them through `dataclasses.replace`.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nvcf_sidecar.worker.errors import WorkerError

__all__ = ["ConfigError", "WorkerConfig", "parse_duration"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_INFERENCE_HOST = "127.0.0.1"
DEFAULT_HEALTH_ENDPOINT = "/v2/health/ready"
DEFAULT_HEALTH_TIMEOUT = 31.0
DEFAULT_READY_TIMEOUT = 30 * 60.0


class ConfigError(WorkerError, ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


_GO_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_ISO = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration(name: str, text: str) -> float:
    """Seconds from a Go duration (`1m30s`, `500ms`), an ISO 8601 one (`PT1M30S`) or a number.

    Go's `time.ParseDuration` and ISO 8601 are what NVIDIA's worker accepts; a bare number
    (seconds) is our addition for convenience.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ConfigError(f"{name}={text!r}: a duration must not be negative")
        return seconds
    iso = _ISO.fullmatch(value.upper())
    if iso is not None and value.upper() not in ("P", "PT"):
        parts = iso.groupdict(default="0")
        return (
            float(parts["d"]) * 86400
            + float(parts["h"]) * 3600
            + float(parts["m"]) * 60
            + float(parts["s"])
        )
    position = 0
    total = 0.0
    for match in _GO_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _GO_UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == len(value) and position > 0:
        return total
    raise ConfigError(
        f"{name}={text!r}: expected a duration such as '30s', '1m30s', 'PT1M30S' or seconds"
    )


def _uuid(name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ConfigError(f"{name}={value!r}: must be a UUID") from None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: must be an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "f", "no", "off"):
        return False
    if raw in ("1", "true", "t", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r}: must be true or false")


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    seconds = parse_duration(name, raw)
    return seconds if seconds > 0 else default  # NVIDIA treats 0 as "use the default"


def _client(env: Mapping[str, str], name: str) -> str:
    """`lean` or `aiohttp`: which HTTP client the variable `name` picks (lean by default)."""
    value = env.get(name, "").strip().lower() or "lean"
    if value not in ("lean", "aiohttp"):
        raise ConfigError(f"{name}={env[name]!r}: must be lean or aiohttp")
    return value


def _nats_servers(text: str) -> list[str]:
    """The URLs of a comma-separated `NVCF_FQDN_NATS`; ConfigError on an empty entry or a mix of
    websocket and plain URLs (nats-py refuses it)."""
    servers = [part.strip() for part in text.split(",")]
    if not all(servers):
        raise ConfigError(
            f"NVCF_FQDN_NATS={text!r}: expected one URL or comma-separated URLs, none empty"
        )
    websocket = [server.startswith(("ws://", "wss://")) for server in servers]
    if any(websocket) and not all(websocket):
        raise ConfigError(f"NVCF_FQDN_NATS={text!r}: websocket and nats:// URLs cannot be mixed")
    return servers


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one sidecar process needs, validated at start-up and passed down explicitly."""

    function_id: str
    function_version_id: str
    grpc_url: str
    worker_token: str = ""
    function_name: str = ""
    nca_id: str = ""
    billing_nca_id: str = ""
    instance_id: str = field(default_factory=socket.gethostname)
    max_request_concurrency: int = 1
    nats_url: str = DEFAULT_NATS_URL
    nkey_seed: str | None = None
    inference_host: str = DEFAULT_INFERENCE_HOST
    inference_port: int = 8000
    health_endpoint: str = DEFAULT_HEALTH_ENDPOINT
    health_protocol: str = "http"
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    health_port: int = 8000
    health_expected_status: int = 200
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    base_asset_dir: Path = Path("/var/inf/inputAssets")
    base_response_dir: Path = Path("/var/inf/response")
    sidecar_health_port: int = 8080
    shared_config_dir: Path = Path("/config/shared")
    compatibility_disabled: bool = False
    cloud_provider: str = ""
    instance_type: str = ""
    zone_name: str = ""
    icms_environment: str = ""
    gpu_name: str = ""
    gpu_count: int = 0
    function_tags: tuple[str, ...] = ()
    nspect_id: str = ""
    # Process-shell settings (`nvcf-sidecar run` flags; NVIDIA's constants by default).
    log_level: str = "info"
    lean_attach: bool = True
    """POST attach of in-memory responses through `lean_http` (`NVCF_ATTACH_CLIENT=lean`, the
    default) or through aiohttp like the streamed ones (`aiohttp`)."""
    lean_container: bool = True
    """Calls to the inference container through `lean_http` (`NVCF_CONTAINER_CLIENT=lean`, the
    default) or through aiohttp (`aiohttp`)."""
    sidecar_health_host: str = "0.0.0.0"
    keepalive_interval: float = 10.0
    health_check_interval: float = 10.0
    fetch_max_wait: float = 300.0
    fetch_heartbeat: float = 5.0
    shutdown_grace: float | None = None

    def __post_init__(self) -> None:
        if self.max_request_concurrency < 1:
            raise ConfigError(
                f"MAX_REQUEST_CONCURRENCY={self.max_request_concurrency}: must be at least 1"
            )
        if self.health_protocol not in ("http", "grpc"):
            raise ConfigError(
                f"INFERENCE_HEALTH_PROTOCOL={self.health_protocol!r}: must be http or grpc"
            )
        if not self.grpc_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"NVCF_FQDN_GRPC={self.grpc_url!r}: must start with http:// (plaintext) "
                "or https:// (TLS)"
            )
        for port_name, port in (
            ("INFERENCE_PORT", self.inference_port),
            ("INFERENCE_HEALTH_PORT", self.health_port),
            ("HEALTH_PORT", self.sidecar_health_port),
        ):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{port_name}={port}: not a TCP port")
        for setting, seconds in (
            ("--keepalive-interval", self.keepalive_interval),
            ("--health-check-interval", self.health_check_interval),
            ("--fetch-max-wait", self.fetch_max_wait),
            ("--fetch-heartbeat", self.fetch_heartbeat),
        ):
            if not seconds > 0:
                raise ConfigError(f"{setting}={seconds}: must be a positive number of seconds")
        if self.fetch_heartbeat * 2 > self.fetch_max_wait:
            raise ConfigError(
                f"--fetch-heartbeat={self.fetch_heartbeat}: must be at most half of "
                f"--fetch-max-wait={self.fetch_max_wait}"
            )
        if self.shutdown_grace is not None and self.shutdown_grace < 0:
            raise ConfigError(f"--shutdown-grace={self.shutdown_grace}: must not be negative")
        _nats_servers(self.nats_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """Build the configuration from NVIDIA's environment variable names."""
        env = os.environ if environ is None else environ
        missing = [
            name
            for name in ("FUNCTION_ID", "FUNCTION_VERSION_ID", "NVCF_FQDN_GRPC")
            if not env.get(name)
        ]
        if missing:
            raise ConfigError(f"missing required environment variable(s): {', '.join(missing)}")
        host = DEFAULT_INFERENCE_HOST
        if env.get("INFERENCE_SERVICE_NAME") and env.get("INFERENCE_NAMESPACE"):
            host = f"{env['INFERENCE_SERVICE_NAME']}.{env['INFERENCE_NAMESPACE']}.svc.cluster.local"
        if env.get("HELM_CHART_INFERENCE_SERVICE_NAME") and env.get("HELM_CHART_NAMESPACE"):
            host = (
                f"{env['HELM_CHART_INFERENCE_SERVICE_NAME']}."
                f"{env['HELM_CHART_NAMESPACE']}.svc.cluster.local"
            )
        inference_port = _int(env, "INFERENCE_PORT", 8000, minimum=1)
        health_port = _int(env, "INFERENCE_HEALTH_PORT", 0)
        sidecar_health_port = _int(env, "HEALTH_PORT", 0)
        nca_id = env.get("NCA_ID", "")
        tags = tuple(tag.strip() for tag in env.get("FUNCTION_TAGS", "").split(",") if tag.strip())
        return cls(
            function_id=_uuid("FUNCTION_ID", env["FUNCTION_ID"]),
            function_version_id=_uuid("FUNCTION_VERSION_ID", env["FUNCTION_VERSION_ID"]),
            grpc_url=env["NVCF_FQDN_GRPC"],
            worker_token=env.get("NVCF_WORKER_TOKEN", ""),
            function_name=env.get("FUNCTION_NAME", ""),
            nca_id=nca_id,
            billing_nca_id=env.get("BILLING_NCA_ID", "") or nca_id,
            instance_id=env.get("INSTANCE_ID", "") or socket.gethostname(),
            max_request_concurrency=max(1, _int(env, "MAX_REQUEST_CONCURRENCY", 1)),
            nats_url=env.get("NVCF_FQDN_NATS", "") or DEFAULT_NATS_URL,
            nkey_seed=env.get("NKEY_SEED") or None,
            inference_host=host,
            inference_port=inference_port,
            health_endpoint=env.get("INFERENCE_HEALTH_ENDPOINT", "") or DEFAULT_HEALTH_ENDPOINT,
            health_protocol=(env.get("INFERENCE_HEALTH_PROTOCOL", "") or "http").lower(),
            health_timeout=_duration(env, "INFERENCE_HEALTH_TIMEOUT", DEFAULT_HEALTH_TIMEOUT),
            health_port=health_port if health_port > 0 else inference_port,
            health_expected_status=_int(env, "INFERENCE_HEALTH_EXPECTED_RESPONSE_CODE", 0) or 200,
            ready_timeout=_duration(env, "INFERENCE_READY_TIMEOUT", DEFAULT_READY_TIMEOUT),
            base_asset_dir=Path(env.get("BASE_ASSET_DIR", "") or "/var/inf/inputAssets"),
            base_response_dir=Path(env.get("BASE_RESPONSE_DIR", "") or "/var/inf/response"),
            sidecar_health_port=sidecar_health_port if sidecar_health_port > 0 else 8080,
            shared_config_dir=Path(env.get("SHARED_CONFIG_DIR", "") or "/config/shared"),
            compatibility_disabled=_bool(env, "V3_BACKWARDS_COMPATIBILITY_DISABLED"),
            cloud_provider=env.get("CLOUD_PROVIDER", ""),
            instance_type=env.get("INSTANCE_TYPE", ""),
            zone_name=env.get("ZONE_NAME", ""),
            icms_environment=env.get("ICMS_ENVIRONMENT", "") or env.get("SPOT_ENVIRONMENT", ""),
            gpu_name=env.get("GPU_NAME", ""),
            gpu_count=_int(env, "ATTACHED_GPU_COUNT", 0),
            function_tags=tags,
            nspect_id=env.get("NVCF_NSPECT_ID", ""),
            log_level=env.get("LOG_LEVEL", "").strip().lower() or "info",
            lean_attach=_client(env, "NVCF_ATTACH_CLIENT") == "lean",
            lean_container=_client(env, "NVCF_CONTAINER_CLIENT") == "lean",
        )

    @property
    def inference_url(self) -> str:
        """Base URL of the function's inference server, without a path."""
        return f"http://{self.inference_host}:{self.inference_port}"

    @property
    def health_url(self) -> str:
        """The URL of the container health check (HTTP protocol)."""
        return f"http://{self.inference_host}:{self.health_port}{self.health_endpoint}"

    @property
    def backend(self) -> str:
        """The `NVCF-BACKEND` value: the cloud provider, with NGN reported as GFN like NVIDIA's."""
        return "GFN" if self.cloud_provider == "NGN" else self.cloud_provider

    @property
    def nats_servers(self) -> list[str]:
        """The NATS servers of `NVCF_FQDN_NATS`, a comma-separated list as NVIDIA's worker (Go's
        `nats.Connect`) takes it: the client connects to one and reconnects to the others (and
        to any node the cluster announces)."""
        return _nats_servers(self.nats_url)

    @property
    def nats_connection_name(self) -> str:
        """NVIDIA's worker names its NATS connection `worker_<fvid>_<instanceId>`."""
        return f"worker_{self.function_version_id}_{self.instance_id}"
