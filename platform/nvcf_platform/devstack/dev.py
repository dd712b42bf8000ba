"""`nvcf-sidecar dev`: the whole local NVCF stack around one function, or several, one command.

Builds `FunctionSpec`s from the flags (`dev -- COMMAND`) or from a config file (`dev --config
FILE`, see `dev_config.py`), starts `LocalStack` (NATS, the platform, each version's server and
sidecars) with every child's output copied to stdout as `[name] line` and its own progress as
`[dev] line`, prints copy-paste `curl` lines for every function and version (`dev_output.py`),
and runs until SIGINT or SIGTERM (exit 0). With no function (no COMMAND, no `[[functions]]`) it
starts NATS and the platform only, ready for the control-plane API; the image catalog of
`--images` and of the config's `[[images]]`/`[[models]]` is what deployed functions run as, and
the instances the platform runs show their processes and output here (`dev_instances.py`). A
child that exits (nats-server, the platform, a server, a sidecar)
stops the stack (exit 1), or with `--restart` is restarted within a budget (`dev_supervisor.py`).
`--nats-cluster 3` runs NATS as a 3-node JetStream cluster with replicated streams (docs/scale.md).
Usage and config errors exit 2.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from nvcf_platform import argtypes
from nvcf_platform.backends.images import ImageCatalog
from nvcf_platform.backends.local import LocalBackend
from nvcf_platform.cli.api_client import ApiClient
from nvcf_platform.devstack.dev_config import catalog_toml, check_function_name, load_dev_file
from nvcf_platform.devstack.dev_instances import InstanceFollower
from nvcf_platform.devstack.dev_output import plan_text, ready_text
from nvcf_platform.devstack.dev_register import (
    DevDeployError,
    DevDeployments,
    catalog_beside,
    dev_image,
)
from nvcf_platform.devstack.dev_supervisor import (
    RestartPolicy,
    StackSupervisor,
    describe_child,
    describe_exit,
)
from nvcf_platform.devstack.process_tree import adopt_orphans, stop_orphans
from nvcf_platform.devstack.stack import ChildExited, FunctionSpec, LocalStack, StackError
from nvcf_platform.errors import ConfigError

__all__ = ["add_arguments", "run_command"]

_PREFIX: Final = "[dev] "
_POLL_INTERVAL: Final = 0.25  # the supervisor's round: exits, recoveries (4 a second)
_ORPHAN_WAIT: Final = 5.0
_RECONCILE_INTERVAL: Final = "0.5"  # seconds: deployments react at once (the platform's is 1)
# Flags of the one-function form (dest -> flag); with --config each version sets its own.
_ONE_FUNCTION_FLAGS: Final = {
    "inference_port": "--inference-port",
    "path": "--path",
    "health_endpoint": "--health-endpoint",
    "function_id": "--function-id",
    "version_id": "--version-id",
    "name": "--name",
    "max_request_concurrency": "--max-request-concurrency",
}
# stdout is shared with the children's output copiers (LocalStack's `stream_lock`).
_OUTPUT_LOCK: Final = threading.Lock()


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the stack was starting."""


def _path(value: str) -> str:
    if value and not value.startswith("/"):
        raise argparse.ArgumentTypeError(f"must start with '/': {value!r}")
    return value


def _name(value: str) -> str:
    try:
        return check_function_name(value)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `dev` subcommand's flags; the function's server command follows `--`."""
    parser.usage = "%(prog)s [OPTIONS] [--images FILE] [--config FILE | -- COMMAND [ARG ...]]"
    parser.epilog = (
        "With neither --config nor COMMAND: NATS and the platform only, for functions registered "
        "and deployed through the NVCF API (docs/dev.md)."
    )
    add = parser.add_argument
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="functions and versions, [[images]] and [[models]] (docs/dev.md)",
    )
    add(
        "--images",
        type=Path,
        action="append",
        metavar="FILE",
        help="image and model catalog for deployments through the API, repeatable (a later "
        "file's entry wins; the config's [[images]] win over all)",
    )
    one = parser.add_argument_group("one function (dev -- COMMAND)")
    one.add_argument(
        "--inference-port", type=argtypes.port, metavar="N", help="where COMMAND listens"
    )
    one.add_argument("--path", type=_path, help="default invocation path (/)")
    one.add_argument("--health-endpoint", type=_path, help="its health (/v2/health/ready)")
    one.add_argument("--function-id", type=argtypes.uuid_text, help="function id (random UUID)")
    one.add_argument(
        "--version-id", type=argtypes.uuid_text, help="function version id (random UUID)"
    )
    one.add_argument("--name", type=_name, help="function name (function)")
    one.add_argument(
        "--max-request-concurrency", type=argtypes.positive, metavar="N", help="per sidecar (1)"
    )
    add(
        "--port",
        type=argtypes.port,
        default=8080,
        metavar="N",
        help="the platform's HTTP port (8080)",
    )
    add("--api-key", default="nvcf-local-key", metavar="KEY", help="callers' bearer token")
    add(
        "--grpc-proxy-port",
        type=argtypes.port_or_zero,
        default=0,
        metavar="N",
        help="NVCF's gRPC entry point for gRPC functions (0: a free port, printed; NVIDIA's 10081)",
    )
    add("--work-dir", type=Path, metavar="DIR", help="logs and state (a temporary directory)")
    add("--timeout", type=argtypes.seconds, default=120.0, metavar="S", help="start-up limit (120)")
    add(
        "--restart",
        "--restart-on-crash",
        action="store_true",
        help="restart nats-server, the platform, a server or a sidecar that exits "
        "(else the stack stops)",
    )
    scaling = parser.add_argument_group(
        "autoscaling of deployments (the platform's defaults are NVIDIA's: 15, 60, 1800)"
    )
    scaling.add_argument(
        "--autoscale-interval",
        type=argtypes.seconds,
        default=2.0,
        metavar="S",
        help="between decisions (2)",
    )
    scaling.add_argument(
        "--scale-down-cooldown",
        type=argtypes.seconds,
        default=10.0,
        metavar="S",
        help="after a decision, before instances are taken away (10)",
    )
    scaling.add_argument(
        "--idle-timeout",
        type=argtypes.seconds,
        default=30.0,
        metavar="S",
        help="without calls this long, minInstances 0 scales to zero (30)",
    )
    add(
        "--nats-cluster",
        type=argtypes.positive,
        default=1,
        metavar="N",
        help="NATS as a JetStream cluster of N nodes, streams and buckets replicated on up to 3 "
        "(1: one nats-server; docs/scale.md)",
    )
    add("--max-restarts", type=argtypes.positive, default=5, metavar="N", help="per child (5) ...")
    add(
        "--restart-window",
        type=argtypes.seconds,
        default=60.0,
        metavar="S",
        help="... within S s (60)",
    )
    add("server_command", nargs=argparse.REMAINDER, metavar="COMMAND", help="after --")
    parser.set_defaults(_dev_parser=parser)


def run_command(args: argparse.Namespace) -> int:
    """Run the stack until SIGINT/SIGTERM (0) or until a child exits for good (1)."""
    specs, catalog = _function_specs(args)
    adopt_orphans()  # a server's helper whose parent dies stays ours to find and stop
    temporary = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="nvcf-dev-")) if temporary else args.work_dir
    try:
        return _run(specs, catalog, args, work_dir)
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)


def _function_specs(
    args: argparse.Namespace,
) -> tuple[tuple[FunctionSpec, ...], ImageCatalog | None]:
    """The versions to run, from `--config` or from the flags and COMMAND (none: the platform
    only), and the image catalog of `--images` and the config (None: none given); usage errors
    exit 2."""
    command = list(args.server_command)
    if command[:1] == ["--"]:
        command = command[1:]
    catalog = None
    try:
        for path in args.images or ():
            found = ImageCatalog.from_toml(path)
            catalog = found if catalog is None else catalog.merged(found)
    except ConfigError as error:
        _usage_error(args, str(error))
    given = [f for dest, f in _ONE_FUNCTION_FLAGS.items() if getattr(args, dest) is not None]
    if args.config is None and not command:
        if given:
            _usage_error(args, f"{', '.join(given)}: only for `dev -- COMMAND`")
        return (), catalog
    if args.config is not None:
        if command:
            _usage_error(args, "give either --config FILE or -- COMMAND, not both")
        if given:
            _usage_error(
                args,
                f"{', '.join(given)}: only for `dev -- COMMAND`; "
                f"with --config, set per function or version in {args.config}",
            )
        try:
            config = load_dev_file(args.config)
        except ConfigError as error:
            _usage_error(args, str(error))
        specs = config.functions
        if config.catalog.images or config.catalog.models:
            catalog = config.catalog if catalog is None else catalog.merged(config.catalog)
    else:
        try:
            specs = (_one_function(args, command),)
        except StackError as error:
            _usage_error(args, str(error))
    for spec in specs:
        if spec.inference_port == args.port:
            _usage_error(
                args,
                f"the server of function {spec.name!r} listens on {args.port}, "
                "the platform's --port",
            )
    return specs, catalog


def _one_function(args: argparse.Namespace, command: list[str]) -> FunctionSpec:
    return FunctionSpec(
        command=command,
        inference_port=args.inference_port or 8000,
        function_id=args.function_id or str(uuid.uuid4()),
        version_id=args.version_id or str(uuid.uuid4()),
        name=args.name or "function",
        default_invocation_path="/" if args.path is None else args.path,
        health_endpoint=args.health_endpoint or "/v2/health/ready",
        max_request_concurrency=args.max_request_concurrency or 1,
    )


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    parser: argparse.ArgumentParser = args._dev_parser
    parser.error(message)  # exits 2


def _say(text: str) -> None:
    lines = text.splitlines() or [""]
    _write("".join(f"{_PREFIX}{line}\n" for line in lines))


def _write(text: str) -> None:
    with _OUTPUT_LOCK:
        sys.stdout.write(text)
        sys.stdout.flush()


def _run(
    specs: tuple[FunctionSpec, ...],
    catalog: ImageCatalog | None,
    args: argparse.Namespace,
    work_dir: Path,
) -> int:
    images = None
    if specs:  # the config's versions run as images of the catalog
        own = ImageCatalog([dev_image(spec) for spec in specs])
        catalog = own if catalog is None else catalog.merged(own)
    if catalog is not None:  # one file of every source, its paths absolute
        work_dir.mkdir(parents=True, exist_ok=True)
        images = work_dir / "images.toml"
        images.write_text(catalog_toml(catalog))
    policy = RestartPolicy(args.max_restarts, args.restart_window) if args.restart else None
    stack = LocalStack(
        (),
        work_dir=work_dir,
        api_key=args.api_key,
        platform_port=args.port,
        platform_args=(
            "--grpc-proxy-port",
            str(args.grpc_proxy_port),
            "--reconcile-interval",
            _RECONCILE_INTERVAL,
            "--autoscale-interval",
            str(args.autoscale_interval),
            "--scale-down-cooldown",
            str(args.scale_down_cooldown),
            "--idle-timeout",
            str(args.idle_timeout),
            "--instance-restarts",
            str(0 if policy is None else policy.max_restarts),
        ),
        images=images,
        log_stream=sys.stdout,
        stream_lock=_OUTPUT_LOCK,
        progress=_say,
        nats_cluster=args.nats_cluster,
    )
    stop = threading.Event()
    starting = [True]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if starting[0]:
            starting[0] = False  # raise once; LocalStack.start stops what it started
            raise _Interrupted(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    instances: InstanceFollower | None = None
    try:
        try:
            _say(
                plan_text(
                    specs,
                    port=args.port,
                    timeout=args.timeout,
                    work_dir=work_dir,
                    temporary=args.work_dir is None,
                    catalog=images,
                )
            )
            deadline = time.monotonic() + args.timeout
            stack.start(timeout=args.timeout)
            root = LocalBackend.instances_root(stack.instances_dir)
            instances = InstanceFollower(root, write=_write, say=_say)
            instances.start()
            deployments = None
            if specs:
                client = ApiClient(stack.base_url, args.api_key)
                deployments = DevDeployments(client, specs, instances_root=root, say=_say)
                deployments.register()
                deployments.wait_active(deadline)
        except _Interrupted:
            _say("interrupted during start-up; stopped")
            if instances is not None:
                _stop(stack, 0, instances)
            return 0
        except ChildExited as error:
            what = describe_child(stack, error.name)
            text = f"error: {what} exited with {describe_exit(error.returncode)} during start-up"
            tail = error.log_tail
            _say(f"{text}; its output ended with:\n{tail}" if tail else text)
            return 1
        except StackError as error:
            _say(f"error: {error}")
            return 1
        except DevDeployError as error:
            _say(f"error: {error}")
            return _stop(stack, 1, instances)
        starting[0] = False
        if stop.is_set():
            return _stop(stack, 0, instances)
        _say(ready_text(stack, policy, catalog_beside(catalog, specs), specs))
        supervisor = StackSupervisor(stack, restart=policy, say=_say)
        while not stop.wait(_POLL_INTERVAL):
            status = supervisor.check()
            if status is not None:
                return _stop(stack, status, instances)
            left = None if deployments is None else deployments.watch()
            # Without --restart any instance lost stops the stack; with it, the platform
            # replaces instances, and only a version with none left (or in ERROR) stops it.
            if left is not None and (policy is None or left[1] != "DEGRADING"):
                hint = ")" if policy is not None else "; --restart keeps the stack running)"
                _say(
                    f"error: {left[0]} is {left[1]}; stopping (its instances' output is above{hint}"
                )
                return _stop(stack, 1, instances)
        _say("stopping: the platform (and its instances), nats-server")
        return _stop(stack, 0, instances)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(stack: LocalStack, status: int, instances: InstanceFollower | None = None) -> int:
    try:
        stack.stop()
    except StackError as error:
        _say(f"error while stopping: {error}")
        return 1
    finally:
        if instances is not None:
            instances.stop()  # after the platform: its instances' last lines are shown
    left = stop_orphans(_ORPHAN_WAIT)  # helpers no child was known to have started
    if left:
        _say(f"error while stopping: processes {left} survived SIGKILL")
        return 1
    _say("stopped")
    return status
