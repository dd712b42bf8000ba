"""The platform process's settings: one frozen dataclass, from `NVCF_PLATFORM_*` variables and flags.

Built and validated once at start-up (`PlatformSettings.from_env`), then passed down explicitly.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from nats.js.api import StorageType

from nvcf_platform.errors import ConfigError
from nvcf_sidecar.protocol import (
    ACK_WAIT_SECONDS,
    MAX_QUEUED_MESSAGES,
    InvalidSubjectToken,
    request_stream_name,
)

__all__ = ["ENV_VARIABLES", "PlatformSettings"]

_STORAGE: Final = {"memory": StorageType.MEMORY, "file": StorageType.FILE}
_LOG_LEVELS: Final = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
_MAX_REPLICAS: Final = 5


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """Everything `nvcf-sidecar platform` can be told; defaults suit one developer machine."""

    config_path: Path | None = None
    """The function registry (TOML, see docs/platform.md); required by the command line."""
    nats_url: str = "nats://127.0.0.1:4222"
    """One NATS URL, or several comma-separated (the nodes of a cluster; see `nats_servers`)."""
    replicas: int = 1
    """Replicas of every stream, consumer, KV and object-store bucket the platform creates
    (JetStream's R1, R3 ...); at most the cluster's size, 1 for a single nats-server."""
    host: str = "127.0.0.1"
    """Interface of the HTTP (invocation + attach) and gRPC listeners."""
    port: int = 8080
    """HTTP port, NVIDIA's invocation-service port; 0 picks a free one."""
    grpc_port: int = 9090
    """Port of the `nvcf.Worker` stand-in; 0 picks a free one."""
    region: str = "local"
    """The platform's region: stream names, `nvcf-invocation-region`, ConnectOnce's answer."""
    api_keys: tuple[str, ...] = ()
    """Bearer tokens callers may present; empty accepts any bearer (a warning is logged)."""
    nca_id: str = "local-nca"
    """`ncaId` of the caller in every work item."""
    client_subject: str = "local-client"
    """`subject` (the caller's auth subject) in every work item."""
    public_url: str | None = None
    """Base URL workers use to reach the HTTP routes (presigned URLs, and attach unless the
    lean attach listener runs); default `http://<host>:<port>`."""
    attach_port: int | None = None
    """Port of the lean attach listener: the worker-facing attach routes on an HTTP/1.1
    listener of their own, which work items then name (0 picks a free one). None: workers
    attach on the HTTP port, through aiohttp's server (the routes stay there either way)."""
    public_attach_url: str | None = None
    """Base URL workers reach the lean attach listener at; default `http://<host>:<attach
    port>`. Required with `attach_port` when `public_url` is set."""
    stream_max_messages: int = MAX_QUEUED_MESSAGES
    """Max messages of each work-queue stream; a publish beyond it is answered 429."""
    consumer_ack_wait: float = ACK_WAIT_SECONDS
    """Ack wait of each durable consumer: redelivery after this long without ack/keepalive."""
    stream_storage: str = "memory"
    """Storage of the queue and tracking streams: `memory` (as NVIDIA's invocation service
    creates them) or `file` (queued work and tracking records outlive a nats-server restart)."""
    nats_outage_grace: float = 10.0
    """Seconds NATS may be down before callers still waiting for a worker are answered 503."""
    http_fd: int | None = None
    """An inherited socket, already bound and listening, to serve HTTP on instead of binding
    `host:port` (a supervisor that keeps it open across restarts: `LocalStack`, `dev`)."""
    drain_grace: float = 5.0
    """On SIGTERM: seconds callers already waiting may still get their answers (new caller
    requests are refused 503 meanwhile) before the platform stops and answers the rest 503."""
    url_signing_secret_file: Path | None = None
    """The presigned-URL secret, kept in this file (created 0600 when missing) so URLs outlive a
    platform restart; None: a random secret per process."""
    ready_file: Path | None = None
    """Where `nvcf-sidecar platform` writes its bound ports as JSON once listening."""
    health_probe_interval: float = 2.0
    """Seconds between two probes of the versions' `instance_health_urls`."""
    deploy_timeout: float = 900.0
    """Seconds a version may be DEPLOYING before it is in ERROR (probed registry versions and
    deployments alike; NVIDIA's API has none, its cluster agent gives up after 10 min to 2 h)."""
    images_path: Path | None = None
    """The local image and model catalog (TOML `[[images]]`, `[[models]]`): what a deployed
    function's `containerImage` and `models` run as on this machine. None: an empty catalog."""
    instances_dir: Path | None = None
    """Where deployed instances keep their directories and logs; None: a temporary directory."""
    instance_restarts: int = 3
    """Restarts of a local instance's crashed (or never ready) server or sidecar before the
    instance is FAILED (and the reconciler replaces it); 0: FAILED at the first exit."""
    grpc_proxy_port: int | None = None
    """NVCF's gRPC entry point (h2c; NVIDIA's port is 10081); None: no gRPC proxy, 0: a free
    port."""
    grpc_tunnel_port: int = 0
    """Where workers dial back for gRPC sessions (`CONNECT /v1/proxy`; NVIDIA's 10086)."""
    grpc_tunnel_url: str | None = None
    """The dial-back URL workers are given; default `http://<host>:<tunnel port>/v1/proxy`."""
    kubernetes_path: Path | None = None
    """The Kubernetes backend's settings (JSON, `backends/kubernetes/settings.py`): deployed
    instances run as worker pods instead of local processes. None: the local backend."""
    control_state: bool = True
    """Keep functions, versions and deployments in the `nvcf_control` KV bucket (file storage)
    and load them at start-up."""
    reconcile_interval: float = 1.0
    """Seconds between two reconcile rounds (an API change starts one at once)."""
    autoscale_interval: float = 15.0
    """Seconds between two autoscaling decisions (NVIDIA's autoscaler loop: 15 s)."""
    scale_down_cooldown: float = 60.0
    """Seconds after a scaling decision before an instance is taken away again."""
    idle_timeout: float = 1800.0
    """Seconds without a call before a version with `minInstances: 0` scales to zero
    (NVIDIA's `scale_to_zero_idle_timeout_seconds`: 30 min)."""
    undeploy_drain_timeout: float = 60.0
    """On undeploy: seconds the version's instances may take to serve its queued requests
    before they stop (in-flight requests always finish)."""
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        ports = [("port", self.port), ("grpc_port", self.grpc_port)]
        ports.append(("grpc_tunnel_port", self.grpc_tunnel_port))
        if self.grpc_proxy_port is not None:
            ports.append(("grpc_proxy_port", self.grpc_proxy_port))
        if self.attach_port is not None:
            ports.append(("attach_port", self.attach_port))
        for name, port in ports:
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name}: {port} is not a TCP port (0-65535; 0 picks a free one)")
        try:
            request_stream_name(self.region, "0")
        except InvalidSubjectToken as error:
            raise ConfigError(f"region: {error}") from None
        servers = [part.strip() for part in self.nats_url.split(",")]
        for server in servers:
            if urllib.parse.urlsplit(server).scheme not in {"nats", "tls", "ws", "wss"}:
                raise ConfigError(f"nats_url: {server!r} is not a nats:// URL")
        websocket = {server.startswith(("ws://", "wss://")) for server in servers}
        if len(websocket) > 1:
            raise ConfigError(f"nats_url: {self.nats_url!r} mixes websocket and nats:// URLs")
        if not 1 <= self.replicas <= _MAX_REPLICAS:
            raise ConfigError(
                f"replicas: {self.replicas} must be between 1 and {_MAX_REPLICAS} "
                "(JetStream's limit)"
            )
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ConfigError("api_keys: keys must be non-empty and have no surrounding spaces")
        for name, url in (
            ("public_url", self.public_url),
            ("public_attach_url", self.public_attach_url),
        ):
            if url is None:
                continue
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ConfigError(f"{name}: {url!r} is not an http(s) URL")
            if parts.path not in {"", "/"} or parts.query or parts.fragment:
                raise ConfigError(f"{name}: {url!r} must not have a path")
        if self.public_attach_url is not None and self.attach_port is None:
            raise ConfigError("public_attach_url: set attach_port too (no attach listener)")
        if self.attach_port is not None and self.public_url and not self.public_attach_url:
            raise ConfigError(
                "attach_port: with public_url set, set public_attach_url too "
                "(where workers reach the attach listener)"
            )
        if self.instance_restarts < 0:
            raise ConfigError(f"instance_restarts: {self.instance_restarts} must be >= 0")
        if self.stream_max_messages < 1:
            raise ConfigError(f"stream_max_messages: {self.stream_max_messages} must be >= 1")
        if not self.consumer_ack_wait > 0:
            raise ConfigError(f"consumer_ack_wait: {self.consumer_ack_wait} must be > 0 seconds")
        for name, seconds in (
            ("health_probe_interval", self.health_probe_interval),
            ("deploy_timeout", self.deploy_timeout),
            ("nats_outage_grace", self.nats_outage_grace),
            ("drain_grace", self.drain_grace),
            ("reconcile_interval", self.reconcile_interval),
            ("undeploy_drain_timeout", self.undeploy_drain_timeout),
            ("autoscale_interval", self.autoscale_interval),
            ("idle_timeout", self.idle_timeout),
        ):
            if not seconds > 0:
                raise ConfigError(f"{name}: {seconds} must be > 0 seconds")
        if self.scale_down_cooldown < 0:
            raise ConfigError(
                f"scale_down_cooldown: {self.scale_down_cooldown} must be >= 0 seconds"
            )
        if self.http_fd is not None and self.http_fd < 0:
            raise ConfigError(f"http_fd: {self.http_fd} is not a file descriptor")
        if self.stream_storage not in _STORAGE:
            raise ConfigError(
                f"stream_storage: {self.stream_storage!r} is not one of {sorted(_STORAGE)}"
            )
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {sorted(_LOG_LEVELS)}")

    @property
    def nats_servers(self) -> list[str]:
        """The URLs of `nats_url`, in order: the client connects to one of them and reconnects
        to the others (and to nodes the cluster announces)."""
        return [part.strip() for part in self.nats_url.split(",")]

    @property
    def storage_type(self) -> StorageType:
        """`stream_storage` as the JetStream storage type."""
        return _STORAGE[self.stream_storage]

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> PlatformSettings:
        """Defaults, then `NVCF_PLATFORM_*` variables, then `overrides` that are not None.

        Flags arrive as `overrides`, so a flag beats its variable. Bad values raise `ConfigError`
        naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (variable, parse) in ENV_VARIABLES.items():
            text = env.get(variable)
            if text is None or text == "":
                continue
            try:
                values[name] = parse(text)
            except ValueError as error:
                raise ConfigError(f"{variable}={text!r}: {error}") from None
        known = {field.name for field in fields(cls)}
        for name, value in overrides.items():
            if name not in known:
                raise TypeError(f"PlatformSettings has no setting {name!r}")
            if value is not None:
                values[name] = value
        return cls(**values)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number") from None


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("not a boolean (true/false)")


def _keys(text: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in text.split(",") if key.strip())


ENV_VARIABLES: Final[dict[str, tuple[str, Callable[[str], Any]]]] = {
    "config_path": ("NVCF_PLATFORM_CONFIG", Path),
    "nats_url": ("NVCF_PLATFORM_NATS_URL", str),
    "replicas": ("NVCF_PLATFORM_REPLICAS", _int),
    "host": ("NVCF_PLATFORM_HOST", str),
    "port": ("NVCF_PLATFORM_PORT", _int),
    "grpc_port": ("NVCF_PLATFORM_GRPC_PORT", _int),
    "region": ("NVCF_PLATFORM_REGION", str),
    "api_keys": ("NVCF_PLATFORM_API_KEYS", _keys),
    "nca_id": ("NVCF_PLATFORM_NCA_ID", str),
    "client_subject": ("NVCF_PLATFORM_CLIENT_SUBJECT", str),
    "public_url": ("NVCF_PLATFORM_PUBLIC_URL", str),
    "attach_port": ("NVCF_PLATFORM_ATTACH_PORT", _int),
    "public_attach_url": ("NVCF_PLATFORM_PUBLIC_ATTACH_URL", str),
    "stream_max_messages": ("NVCF_PLATFORM_STREAM_MAX_MESSAGES", _int),
    "consumer_ack_wait": ("NVCF_PLATFORM_CONSUMER_ACK_WAIT", _float),
    "stream_storage": ("NVCF_PLATFORM_STREAM_STORAGE", str.lower),
    "nats_outage_grace": ("NVCF_PLATFORM_NATS_OUTAGE_GRACE", _float),
    "drain_grace": ("NVCF_PLATFORM_DRAIN_GRACE", _float),
    "http_fd": ("NVCF_PLATFORM_HTTP_FD", _int),
    "url_signing_secret_file": ("NVCF_PLATFORM_URL_SIGNING_SECRET_FILE", Path),
    "ready_file": ("NVCF_PLATFORM_READY_FILE", Path),
    "health_probe_interval": ("NVCF_PLATFORM_HEALTH_PROBE_INTERVAL", _float),
    "deploy_timeout": ("NVCF_PLATFORM_DEPLOY_TIMEOUT", _float),
    "images_path": ("NVCF_PLATFORM_IMAGES", Path),
    "instances_dir": ("NVCF_PLATFORM_INSTANCES_DIR", Path),
    "instance_restarts": ("NVCF_PLATFORM_INSTANCE_RESTARTS", _int),
    "kubernetes_path": ("NVCF_PLATFORM_KUBERNETES", Path),
    "grpc_proxy_port": ("NVCF_PLATFORM_GRPC_PROXY_PORT", _int),
    "grpc_tunnel_port": ("NVCF_PLATFORM_GRPC_TUNNEL_PORT", _int),
    "grpc_tunnel_url": ("NVCF_PLATFORM_GRPC_TUNNEL_URL", str),
    "control_state": ("NVCF_PLATFORM_CONTROL_STATE", _boolean),
    "reconcile_interval": ("NVCF_PLATFORM_RECONCILE_INTERVAL", _float),
    "undeploy_drain_timeout": ("NVCF_PLATFORM_UNDEPLOY_DRAIN_TIMEOUT", _float),
    "autoscale_interval": ("NVCF_PLATFORM_AUTOSCALE_INTERVAL", _float),
    "scale_down_cooldown": ("NVCF_PLATFORM_SCALE_DOWN_COOLDOWN", _float),
    "idle_timeout": ("NVCF_PLATFORM_IDLE_TIMEOUT", _float),
    "log_level": ("NVCF_PLATFORM_LOG_LEVEL", str.upper),
}
"""Setting name -> (environment variable, parser). API keys are comma-separated."""
