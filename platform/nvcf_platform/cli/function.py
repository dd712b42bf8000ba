"""`nvcf-sidecar function ...`: manage functions and deployments, in the shape of NVIDIA's nvcf-cli.

This module owns the flags and the dispatch; `bodies` turns flags into request bodies,
`api_client` makes the calls, `state` remembers the last function and version between runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from nvcf_platform import argtypes
from nvcf_platform.cli import bodies, subcommands
from nvcf_platform.cli.api_client import ApiClient
from nvcf_platform.cli.errors import CliError, UsageError
from nvcf_platform.cli.state import CliState, state_path
from nvcf_platform.cli.subcommands import CommandContext, Handler

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_POLL_INTERVAL_SECONDS",
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_TOKEN",
    "TOKEN_ENVS",
    "add_arguments",
    "run_command",
]

BASE_URL_ENV: Final = "NVCF_BASE_HTTP_URL"
DEFAULT_BASE_URL: Final = "http://127.0.0.1:8080"
TOKEN_ENVS: Final = ("NVCF_TOKEN", "NVCF_API_KEY")
DEFAULT_TOKEN: Final = "local"
"""The local platform accepts any bearer unless API keys are configured."""
DEFAULT_POLL_INTERVAL_SECONDS: Final = 10.0
DEFAULT_TIMEOUT_SECONDS: Final = 900.0
EXIT_INTERRUPTED: Final = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `function` command's flags and its nested subcommands."""
    _add_connection_options(parser, leaf=False)
    parser.epilog = (
        "exit status: 0 done; 1 refused by the API, unreachable, or a deployment that failed or "
        "timed out; 2 bad flags. The last function and version are remembered in "
        "$NVCF_CLI_STATE (else ~/.nvcf-cli.state), so --function-id/--version-id may be left out."
    )
    commands = parser.add_subparsers(dest="function_command", required=True, metavar="COMMAND")

    create = _leaf(
        commands, "create", subcommands.create, "register a function, or a version of one"
    )
    create.add_argument(
        "--function-id",
        type=argtypes.uuid_text,
        help="add a version to this function instead (FUNCTION_ID)",
    )
    _add_input_file(create, "the CreateFunctionRequest body; flags given override its fields")
    _add_create_options(create)
    _add_json(create)

    listing = _leaf(commands, "list", subcommands.list_functions, "list every function version")
    _add_json(listing)
    versions = _leaf(
        commands, "list-versions", subcommands.list_versions, "list the versions of a function"
    )
    versions.add_argument(
        "function_id",
        nargs="?",
        type=argtypes.uuid_text,
        metavar="FUNCTION_ID",
        help="default: remembered",
    )
    _add_json(versions)

    get = _leaf(commands, "get", subcommands.get, "show one function version")
    _add_ids(get)
    _add_json(get)

    update = _leaf(commands, "update", subcommands.update, "change a version's tags (PUT)")
    _add_ids(update)
    update.add_argument("--tags", action="append", metavar="A,B", help="the new tags (replace)")
    _add_input_file(update, "the UpdateFunctionRequest body")
    _add_json(update)

    delete = _leaf(commands, "delete", subcommands.delete, "delete a version (and its deployment)")
    _add_ids(delete)
    delete.add_argument(
        "--deployment-only", action="store_true", help="undeploy the version, keep it registered"
    )
    delete.add_argument("--graceful", action="store_true", help="with --deployment-only: drain")

    deploy = _leaf(commands, "deploy", None, "deploy a version, show, scale or remove a deployment")
    deploys = deploy.add_subparsers(dest="deploy_command", required=True, metavar="COMMAND")
    _add_deploy_create(deploys)

    deploy_get = _leaf(deploys, "get", subcommands.deploy_get, "show a version's deployment")
    _add_ids(deploy_get)
    _add_json(deploy_get)

    deploy_update = _leaf(
        deploys,
        "update",
        subcommands.deploy_update,
        "change min/max instances of a GPU specification",
    )
    _add_ids(deploy_update)
    deploy_update.add_argument("--gpu", help="pick the specification (needed if several)")
    deploy_update.add_argument("--instance-type", help="pick the specification")
    deploy_update.add_argument("--min-instances", type=argtypes.count, metavar="N")
    deploy_update.add_argument("--max-instances", type=argtypes.count, metavar="N")
    _add_input_file(deploy_update, "the UpdateGpuSpecificationRequest body; flags override it")
    _add_json(deploy_update)

    remove = _leaf(
        deploys, "remove", subcommands.deploy_remove, "undeploy a version (it becomes INACTIVE)"
    )
    _add_ids(remove)
    remove.add_argument("--graceful", action="store_true", help="let queued requests drain")


def _add_deploy_create(deploys: Any) -> None:
    create = _leaf(
        deploys,
        "create",
        subcommands.deploy_create,
        "deploy a version, then wait until it is ACTIVE",
        epilog=(
            "Unlike NVIDIA's nvcf-cli (--gpu H100 --instance-type NCP.GPU.H100_1x), the GPU and "
            "instance type default to what this platform offers: the first GPU of "
            "GET /v2/nvcf/clusterGroups and its instance type marked default."
        ),
    )
    _add_ids(create)
    add = create.add_argument
    add("--gpu", help="GPU name (default: the platform's first; see below)")
    add("--instance-type", help="instance type (default: the GPU's default one)")
    add(
        "--min-instances",
        type=argtypes.count,
        metavar="N",
        help=f"(default {bodies.DEFAULT_MIN_INSTANCES})",
    )
    add(
        "--max-instances",
        type=argtypes.count,
        metavar="N",
        help=f"(default {bodies.DEFAULT_MAX_INSTANCES})",
    )
    add("--max-request-concurrency", type=argtypes.count, metavar="N", help="(server default 1)")
    add("--backend", help="cluster group name")
    add("--regions", action="append", metavar="A,B")
    add("--clusters", action="append", metavar="A,B")
    add("--availability-zones", action="append", metavar="A,B")
    add("--attributes", action="append", metavar="A,B")
    add("--preferred-order", type=argtypes.count, metavar="N")
    _add_input_file(create, "the deployment body (or its specification list, or one)")
    add(
        "--poll-interval",
        type=argtypes.seconds,
        default=DEFAULT_POLL_INTERVAL_SECONDS,
        metavar="S",
        help=f"seconds between status polls ({DEFAULT_POLL_INTERVAL_SECONDS:g})",
    )
    add(
        "--timeout",
        type=argtypes.seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="S",
        help=f"give up waiting after S seconds ({DEFAULT_TIMEOUT_SECONDS:g})",
    )
    add("--no-wait", action="store_true", help="do not wait for ACTIVE")


def _add_create_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--name", help="function name (required unless in --input-file)")
    add("--image", help="container image")
    add("--inference-url", metavar="PATH", help="e.g. /predict (required unless in --input-file)")
    add("--inference-port", type=argtypes.port, metavar="PORT", help="(worker default 8000)")
    add("--description")
    add("--function-type", type=str.upper, choices=("DEFAULT", "STREAMING", "LLM"))
    add("--api-body-format", type=str.upper, choices=("CUSTOM", "PREDICT_V2"))
    add("--health-uri", metavar="PATH", help="(/v2/health/ready)")
    add("--health-port", type=argtypes.port, metavar="PORT", help="(the inference port)")
    add("--health-protocol", type=_health_protocol, choices=("HTTP", "gRPC"), help="(HTTP)")
    add("--health-timeout", type=bodies.duration, metavar="S|PT10S", help="(PT10S)")
    add("--health-expected-status", type=int, metavar="CODE", help="(200)")
    add("--container-args", metavar="ARGS", help="arguments to the image's entrypoint")
    add("--container-env", type=bodies.key_value, action="append", metavar="KEY=VALUE")
    add("--secrets", type=bodies.key_value, action="append", metavar="NAME=VALUE")
    add("--tags", action="append", metavar="A,B")
    add("--models", type=bodies.artifact, action="append", metavar="NAME:VERSION:URI")
    add("--resources", type=bodies.artifact, action="append", metavar="NAME:VERSION:URI")
    add("--helm-chart", metavar="URI")
    add("--helm-chart-service", metavar="NAME")


def _leaf(
    subparsers: Any, name: str, handler: Handler | None, summary: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=summary, description=summary, epilog=epilog
    )
    _add_connection_options(parser, leaf=True)
    parser.set_defaults(_handler=handler, _leaf_parser=parser)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser, *, leaf: bool) -> None:
    """`--base-url` / `--token`, on `function` and again on each subcommand, so they may come
    before or after it (a subcommand's copy has no default and leaves the other's alone)."""
    token = next((os.environ[name] for name in TOKEN_ENVS if os.environ.get(name)), DEFAULT_TOKEN)
    base_url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parser.add_argument(
        "--base-url",
        type=_base_url,
        default=argparse.SUPPRESS if leaf else base_url,
        metavar="URL",
        help=f"the NVCF API (${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS if leaf else token,
        help=f"bearer token (${TOKEN_ENVS[0]}, else ${TOKEN_ENVS[1]}, else {DEFAULT_TOKEN!r})",
    )


def _add_ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--function-id", type=argtypes.uuid_text, help="default: the remembered one"
    )
    parser.add_argument("--version-id", type=argtypes.uuid_text, help="default: the remembered one")


def _add_input_file(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--input-file", type=Path, metavar="FILE", help=f"JSON file (- stdin): {what}"
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's answer as JSON")


def _health_protocol(value: str) -> str:
    return "gRPC" if value.lower() == "grpc" else value.upper()


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise argparse.ArgumentTypeError(f"not an http(s) base URL: {value!r}")
    return value.rstrip("/")


def run_command(args: argparse.Namespace) -> int:
    """Run the chosen `function` subcommand; 0 done, 1 failed or refused, 2 bad input."""
    handler: Handler = args._handler
    path = state_path()
    context = CommandContext(ApiClient(args.base_url, args.token), path, CliState.load(path))
    try:
        return handler(context, args)
    except UsageError as error:
        parser: argparse.ArgumentParser = args._leaf_parser
        parser.error(str(error))  # exits 2
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
