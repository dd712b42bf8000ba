"""`nvcf-sidecar platform`: run the local invocation service until SIGTERM or SIGINT.

Flags override `NVCF_PLATFORM_*` variables (see docs/platform.md); `--ready-file` receives the
bound ports as JSON once both listeners accept connections. Without `--config` the registry is
empty: every function is registered and deployed through the API, its images and models found
in the `--images` catalog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from nats.errors import Error as NatsError

from nvcf_platform.backends.images import ImageCatalog
from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.control.registry import Registry
from nvcf_platform.errors import ConfigError, PlatformError
from nvcf_platform.service import PlatformService
from nvcf_platform.settings import PlatformSettings
from nvcf_sidecar import eventloop
from nvcf_sidecar.heap import tune_gc_for_serving

__all__ = ["add_arguments", "load_registry", "run_command", "serve", "settings_from_args"]

_log = logging.getLogger("nvcf_platform")

# LogRecord attributes that are not `extra` fields.
_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `platform` subcommand's flags; each overrides its environment variable."""
    add = parser.add_argument
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="function registry, TOML (NVCF_PLATFORM_CONFIG); none: every function comes "
        "through the API",
    )
    add(
        "--images",
        type=Path,
        metavar="FILE",
        help="local image and model catalog, TOML [[images]] and [[models]] "
        "(NVCF_PLATFORM_IMAGES; none: an empty catalog, nothing can be deployed)",
    )
    add(
        "--instances-dir",
        type=Path,
        metavar="DIR",
        help="deployed instances' directories and logs "
        "(NVCF_PLATFORM_INSTANCES_DIR; default: a temporary directory)",
    )
    add(
        "--kubernetes",
        type=Path,
        metavar="FILE",
        help="run deployed instances as worker pods in Kubernetes, with the settings of this "
        "JSON file (NVCF_PLATFORM_KUBERNETES; needs the kubernetes extra; docs/scale.md)",
    )
    add(
        "--reconcile-interval",
        type=float,
        metavar="SECONDS",
        help="between two reconcile rounds of deployments (NVCF_PLATFORM_RECONCILE_INTERVAL, 1)",
    )
    add(
        "--undeploy-drain-timeout",
        type=float,
        metavar="SECONDS",
        help="on undeploy, time the instances get to serve queued requests "
        "(NVCF_PLATFORM_UNDEPLOY_DRAIN_TIMEOUT, 60)",
    )
    add(
        "--autoscale-interval",
        type=float,
        metavar="SECONDS",
        help="between two autoscaling decisions (NVCF_PLATFORM_AUTOSCALE_INTERVAL, 15)",
    )
    add(
        "--scale-down-cooldown",
        type=float,
        metavar="SECONDS",
        help="after a scaling decision, before instances are taken away "
        "(NVCF_PLATFORM_SCALE_DOWN_COOLDOWN, 60)",
    )
    add(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="without calls this long, a version with minInstances 0 scales to zero "
        "(NVCF_PLATFORM_IDLE_TIMEOUT, 1800)",
    )
    add(
        "--instance-restarts",
        type=int,
        metavar="N",
        help="restarts of a local instance's crashed server or sidecar before it is FAILED "
        "(NVCF_PLATFORM_INSTANCE_RESTARTS, 3)",
    )
    add(
        "--deploy-timeout",
        type=float,
        metavar="SECONDS",
        help="a version DEPLOYING this long is in ERROR (NVCF_PLATFORM_DEPLOY_TIMEOUT, 900)",
    )
    add(
        "--nats",
        metavar="URL[,URL...]",
        help="NATS server URL, or a cluster's comma-separated (NVCF_PLATFORM_NATS_URL)",
    )
    add(
        "--replicas",
        type=int,
        metavar="N",
        help="replicas of every stream, consumer and bucket created, 3 on a 3-node cluster "
        "(NVCF_PLATFORM_REPLICAS, 1)",
    )
    add("--host", help="listen address of HTTP and gRPC (NVCF_PLATFORM_HOST, 127.0.0.1)")
    add("--port", type=int, metavar="N", help="HTTP port, 0 = free (NVCF_PLATFORM_PORT, 8080)")
    add("--grpc-port", type=int, metavar="N", help="gRPC port (NVCF_PLATFORM_GRPC_PORT, 9090)")
    add(
        "--grpc-proxy-port",
        type=int,
        metavar="N",
        help="NVCF's gRPC entry point for gRPC functions, h2c; 0 = free "
        "(NVCF_PLATFORM_GRPC_PROXY_PORT; default: off; NVIDIA's 10081)",
    )
    add(
        "--grpc-tunnel-port",
        type=int,
        metavar="N",
        help="where workers dial back for gRPC sessions (NVCF_PLATFORM_GRPC_TUNNEL_PORT, 0 = free)",
    )
    add(
        "--grpc-tunnel-url",
        metavar="URL",
        help="the dial-back URL given to workers (NVCF_PLATFORM_GRPC_TUNNEL_URL; "
        "default http://<host>:<tunnel port>/v1/proxy)",
    )
    add("--region", help="region of streams and headers (NVCF_PLATFORM_REGION, local)")
    add(
        "--api-key",
        action="append",
        metavar="KEY",
        help="accepted caller bearer token, repeatable (NVCF_PLATFORM_API_KEYS, comma-separated)",
    )
    add("--nca-id", help="caller NCA id in work items (NVCF_PLATFORM_NCA_ID)")
    add("--client-subject", help="caller subject in work items (NVCF_PLATFORM_CLIENT_SUBJECT)")
    add(
        "--public-url", metavar="URL", help="attach base URL for workers (NVCF_PLATFORM_PUBLIC_URL)"
    )
    add(
        "--attach-port",
        type=int,
        metavar="N",
        help="serve workers' attach calls on a lean HTTP/1.1 listener of their own on this "
        "port, 0 = free (NVCF_PLATFORM_ATTACH_PORT; default: off, on the HTTP port)",
    )
    add(
        "--public-attach-url",
        metavar="URL",
        help="where workers reach the attach listener (NVCF_PLATFORM_PUBLIC_ATTACH_URL; "
        "default http://<host>:<attach port>)",
    )
    add(
        "--stream-max-messages",
        type=int,
        metavar="N",
        help="max messages per queue stream (NVCF_PLATFORM_STREAM_MAX_MESSAGES, 100000)",
    )
    add(
        "--consumer-ack-wait",
        type=float,
        metavar="SECONDS",
        help="ack wait of durable consumers (NVCF_PLATFORM_CONSUMER_ACK_WAIT, 30)",
    )
    add(
        "--stream-storage",
        choices=("memory", "file"),
        help="queue stream storage (NVCF_PLATFORM_STREAM_STORAGE, memory)",
    )
    add(
        "--nats-outage-grace",
        type=float,
        metavar="SECONDS",
        help="answer waiting callers 503 once NATS is down this long "
        "(NVCF_PLATFORM_NATS_OUTAGE_GRACE, 10)",
    )
    add(
        "--http-fd",
        type=int,
        metavar="FD",
        help="serve HTTP on this inherited listening socket instead of binding --host/--port "
        "(NVCF_PLATFORM_HTTP_FD)",
    )
    add(
        "--drain-grace",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, let waiting callers get their answers this long "
        "(NVCF_PLATFORM_DRAIN_GRACE, 5)",
    )
    add(
        "--url-signing-secret-file",
        type=Path,
        metavar="FILE",
        help="keep the presigned-URL secret here, created 0600 if missing "
        "(NVCF_PLATFORM_URL_SIGNING_SECRET_FILE; default: random per process)",
    )
    add("--ready-file", type=Path, metavar="PATH", help="write bound ports here as JSON")
    add(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (NVCF_PLATFORM_LOG_LEVEL, INFO)",
    )


def load_registry(settings: PlatformSettings) -> Registry:
    """The registry file's functions, or an empty registry without one; the image catalog is
    read too, so that a bad one is a `ConfigError` before anything starts."""
    if settings.images_path is not None:
        ImageCatalog.from_toml(settings.images_path)
    if settings.kubernetes_path is not None:
        KubernetesSettings.from_file(settings.kubernetes_path)
    if settings.config_path is None:
        return Registry(())
    return Registry.from_toml(settings.config_path)


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> PlatformSettings:
    """The settings of the parsed flags over `NVCF_PLATFORM_*` variables; ConfigError if bad."""
    return PlatformSettings.from_env(
        environ,
        config_path=args.config,
        nats_url=args.nats,
        replicas=args.replicas,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        region=args.region,
        api_keys=tuple(args.api_key) if args.api_key else None,
        nca_id=args.nca_id,
        client_subject=args.client_subject,
        public_url=args.public_url,
        attach_port=args.attach_port,
        public_attach_url=args.public_attach_url,
        stream_max_messages=args.stream_max_messages,
        consumer_ack_wait=args.consumer_ack_wait,
        stream_storage=args.stream_storage,
        nats_outage_grace=args.nats_outage_grace,
        drain_grace=args.drain_grace,
        http_fd=args.http_fd,
        url_signing_secret_file=args.url_signing_secret_file,
        ready_file=args.ready_file,
        images_path=args.images,
        instances_dir=args.instances_dir,
        instance_restarts=args.instance_restarts,
        kubernetes_path=args.kubernetes,
        grpc_proxy_port=args.grpc_proxy_port,
        grpc_tunnel_port=args.grpc_tunnel_port,
        grpc_tunnel_url=args.grpc_tunnel_url,
        reconcile_interval=args.reconcile_interval,
        undeploy_drain_timeout=args.undeploy_drain_timeout,
        deploy_timeout=args.deploy_timeout,
        autoscale_interval=args.autoscale_interval,
        scale_down_cooldown=args.scale_down_cooldown,
        idle_timeout=args.idle_timeout,
        log_level=args.log_level,
    )


def run_command(args: argparse.Namespace) -> int:
    """Run the platform until SIGTERM/SIGINT: 0 then, 2 for bad settings, 1 for start-up errors."""
    try:
        settings = settings_from_args(args)
        registry = load_registry(settings)
        factory = eventloop.loop_factory()
    except (ConfigError, eventloop.EventLoopError) as error:
        print(f"nvcf-sidecar platform: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        eventloop.run(serve(settings, registry), factory=factory)
    except (PlatformError, NatsError, OSError, TimeoutError) as error:
        _log.error("platform failed", extra={"error": repr(error)})
        return 1
    return 0


async def serve(settings: PlatformSettings, registry: Registry) -> None:
    """Run a `PlatformService` until SIGTERM or SIGINT, with the ready file while it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with PlatformService(settings, registry) as platform:
            frozen = tune_gc_for_serving()  # before the first caller (heap.py)
            _log.info("garbage collector tuned for serving", extra={"gc_frozen_objects": frozen})
            endpoints = platform.endpoints()
            if settings.ready_file is not None:
                _write_ready_file(settings.ready_file, endpoints)
            print(
                f"NVCF platform: invocations at {endpoints['base_url']}, "
                f"nvcf.Worker gRPC at {endpoints['grpc_url']}",
                flush=True,
            )
            try:
                await stop.wait()  # the process's lifetime: until a signal arrives
            finally:
                if settings.ready_file is not None:
                    with contextlib.suppress(FileNotFoundError):
                        settings.ready_file.unlink()
            await platform.drain(settings.drain_grace)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _write_ready_file(path: Path, endpoints: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(endpoints))
    os.replace(partial, path)


class _FieldsFormatter(logging.Formatter):
    """`time level logger message key=value ...`: the record's `extra` fields, logfmt style."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _RECORD_FIELDS and not key.startswith("_")
        ]
        return f"{line} {' '.join(fields)}" if fields else line


def configure_logging(level: str) -> None:
    """Log to stderr with extra fields; quiet aiohttp's and nats' own chatter below WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiohttp", "nats", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
