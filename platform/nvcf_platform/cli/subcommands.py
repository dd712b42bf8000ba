"""The work of each `nvcf-sidecar function` subcommand: call the API, print, remember the ids.

`function` parses the flags and dispatches here; a handler returns the exit status or raises a
`CliError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvcf_platform.cli import bodies, display
from nvcf_platform.cli.api_client import ApiClient, JsonObject, wait_until_deployed
from nvcf_platform.cli.errors import CliError, DeploymentFailed, UsageError
from nvcf_platform.cli.state import CliState

__all__ = [
    "CommandContext",
    "Handler",
    "create",
    "delete",
    "deploy_create",
    "deploy_get",
    "deploy_remove",
    "deploy_update",
    "get",
    "list_functions",
    "list_versions",
    "update",
]


@dataclass(frozen=True)
class CommandContext:
    """What every subcommand gets: the API client and where the remembered ids live."""

    client: ApiClient
    state_file: Path
    state: CliState

    def remember(self, function_id: str, version_id: str | None) -> None:
        """Keep the ids for the next command (as NVIDIA's CLI does after create)."""
        CliState(function_id, version_id).save(self.state_file)


Handler = Callable[[CommandContext, argparse.Namespace], int]


# Functions and versions.


def create(context: CommandContext, args: argparse.Namespace) -> int:
    """POST a function (or a version with --function-id); print it and remember its ids."""
    body = bodies.create_body(args, bodies.load_input_file(args.input_file))
    function = context.client.create_function(body, args.function_id)
    context.remember(str(function.get("id")), str(function.get("versionId")))
    if args.json:
        display.print_json({"function": function})
    else:
        display.print_function(function)
    return 0


def list_functions(context: CommandContext, args: argparse.Namespace) -> int:
    """Every version the caller sees, as a table or the raw answer."""
    display.print_functions(context.client.list_functions(), as_json=args.json)
    return 0


def list_versions(context: CommandContext, args: argparse.Namespace) -> int:
    """The versions of FUNCTION_ID (else the remembered function)."""
    function_id = args.function_id or context.state.function_id
    if function_id is None:
        raise UsageError(f"give FUNCTION_ID (none is remembered in {context.state_file})")
    display.print_functions(context.client.list_versions(function_id), as_json=args.json)
    return 0


def get(context: CommandContext, args: argparse.Namespace) -> int:
    """One version, as fields or the raw answer; remembers its ids."""
    function_id, version_id = _ids(context, args)
    function = context.client.get_version(function_id, version_id)
    context.remember(function_id, version_id)
    if args.json:
        display.print_json({"function": function})
    else:
        display.print_function(function)
    return 0


def update(context: CommandContext, args: argparse.Namespace) -> int:
    """PUT new tags (or the input file's update body) on a version."""
    function_id, version_id = _ids(context, args)
    body = bodies.update_body(args, bodies.load_input_file(args.input_file))
    function = context.client.update_version(function_id, version_id, body)
    if args.json:
        display.print_json({"function": function})
    else:
        display.print_function(function)
    return 0


def delete(context: CommandContext, args: argparse.Namespace) -> int:
    """DELETE a version (204) and forget it; with --deployment-only, undeploy instead."""
    function_id, version_id = _ids(context, args)
    if args.deployment_only:
        return _undeploy(context, function_id, version_id, graceful=args.graceful)
    if args.graceful:
        raise UsageError("--graceful goes with --deployment-only")
    context.client.delete_version(function_id, version_id)
    print(f"deleted version {version_id} of function {function_id}")
    if context.state.version_id == version_id:
        context.remember(function_id, None)
    return 0


# Deployments.


def deploy_create(context: CommandContext, args: argparse.Namespace) -> int:
    """POST a deployment, then poll the version until ACTIVE (0), or ERROR, INACTIVE or
    --timeout (1); each status is printed once, as it changes."""
    function_id, version_id = _ids(context, args)
    body = bodies.deployment_body(args, bodies.load_input_file(args.input_file))
    specs = body["deploymentSpecifications"]
    if any(not spec.get("gpu") or not spec.get("instanceType") for spec in specs):
        bodies.fill_instance_types(body, context.client.list_cluster_groups())
    deployment = context.client.create_deployment(function_id, version_id, body)
    context.remember(function_id, version_id)
    placed = ", ".join(f"{spec.get('gpu')} {spec.get('instanceType')}" for spec in specs)
    display.note(f"deployment {deployment.get('deploymentId')} of version {version_id} on {placed}")
    status = str(deployment.get("functionStatus", "UNKNOWN"))
    print(status, flush=True)
    if args.no_wait:
        return 0
    if status not in ("ACTIVE", "ERROR", "INACTIVE"):
        status = wait_until_deployed(
            context.client,
            function_id,
            version_id,
            interval=args.poll_interval,
            timeout=args.timeout,
            last_status=status,
            report=lambda seen: print(seen, flush=True),
        )
    if status == "ACTIVE":
        return 0
    if status == "ERROR":
        health = context.client.get_deployment(function_id, version_id).get("healthInfo") or []
        for entry in health if isinstance(health, list) else []:
            display.note(f"  {display.health_line(entry)}")
    raise DeploymentFailed(f"version {version_id} of function {function_id} is {status}")


def deploy_get(context: CommandContext, args: argparse.Namespace) -> int:
    """The deployment: status, and min/max (and instance counts, if given) per GPU spec."""
    function_id, version_id = _ids(context, args)
    deployment = context.client.get_deployment(function_id, version_id)
    if args.json:
        display.print_json({"deployment": deployment})
    else:
        display.print_deployment(deployment)
    return 0


def deploy_update(context: CommandContext, args: argparse.Namespace) -> int:
    """PATCH min/max of the GPU specification picked by --gpu/--instance-type (or the only one)."""
    function_id, version_id = _ids(context, args)
    body = bodies.gpu_specification_update(args, bodies.load_input_file(args.input_file))
    deployment = context.client.get_deployment(function_id, version_id)
    spec = _pick_specification(deployment, args.gpu, args.instance_type)
    updated = context.client.update_gpu_specification(
        str(deployment.get("deploymentId")), str(spec.get("gpuSpecificationId")), body
    )
    if args.json:
        display.print_json({"gpuSpecification": updated})
    else:
        display.print_specifications([updated])
    return 0


def deploy_remove(context: CommandContext, args: argparse.Namespace) -> int:
    """DELETE the deployment (undeploy); prints the version's new status, INACTIVE."""
    function_id, version_id = _ids(context, args)
    return _undeploy(context, function_id, version_id, graceful=args.graceful)


def _undeploy(context: CommandContext, function_id: str, version_id: str, *, graceful: bool) -> int:
    function = context.client.delete_deployment(function_id, version_id, graceful=graceful)
    print(function.get("status", "UNKNOWN"))
    return 0


def _ids(context: CommandContext, args: argparse.Namespace) -> tuple[str, str]:
    """`--function-id` / `--version-id`, else the remembered ones (a flag id drops the
    remembered version when it names another function)."""
    function_id: str | None = args.function_id
    version_id: str | None = args.version_id
    if function_id is None:
        function_id = context.state.function_id
        version_id = version_id or context.state.version_id
    elif version_id is None and function_id == context.state.function_id:
        version_id = context.state.version_id
    if function_id is None or version_id is None:
        missing = "--function-id and --version-id" if function_id is None else "--version-id"
        raise UsageError(f"give {missing} (none is remembered in {context.state_file})")
    return function_id, version_id


def _pick_specification(
    deployment: JsonObject, gpu: str | None, instance_type: str | None
) -> JsonObject:
    specs = [s for s in deployment.get("deploymentSpecifications") or [] if isinstance(s, dict)]
    matching = [
        spec
        for spec in specs
        if (gpu is None or str(spec.get("gpu", "")).lower() == gpu.lower())
        and (
            instance_type is None
            or str(spec.get("instanceType", "")).lower() == instance_type.lower()
        )
    ]
    if len(matching) == 1:
        return matching[0]
    offered = ", ".join(f"{s.get('gpu')} {s.get('instanceType')}" for s in specs) or "none"
    if not matching:
        raise CliError(f"no GPU specification of the deployment matches (it has: {offered})")
    raise UsageError(
        f"the deployment has several GPU specifications ({offered}): "
        "choose one with --gpu and --instance-type"
    )
