"""What `nvcf-sidecar dev` prints: what it starts, then, once ready, how to call it.

For the functions it runs: copy-paste `curl` lines per function and version, through pexec and
in the gateway form. For the control
plane (no function given, or an image catalog): the platform URL, the variables the CLI reads
and the `nvcf-sidecar function ...` and `curl` calls that register, deploy, invoke, undeploy and
delete a function of the catalog.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from nvcf_platform.backends.images import ImageCatalog
from nvcf_platform.cli.api_client import ApiClient
from nvcf_platform.cli.bodies import default_instance_type
from nvcf_platform.cli.errors import CliError
from nvcf_platform.control.catalog import CPU_GPU_NAME, CPU_INSTANCE_TYPE
from nvcf_platform.devstack.dev_register import dev_image, max_instances
from nvcf_platform.devstack.dev_supervisor import RestartPolicy
from nvcf_platform.devstack.stack import HOST, FunctionSpec, LocalStack

__all__ = ["EXAMPLE_BODY", "api_text", "plan_text", "ready_text"]

EXAMPLE_BODY: Final = '{"hello": "world"}'
_PREDICT_V2_BODY: Final = (
    '{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}'
)
_CLUSTER_GROUPS_TIMEOUT: Final = 5.0


def plan_text(
    specs: Sequence[FunctionSpec],
    *,
    port: int,
    timeout: float,
    work_dir: Path,
    temporary: bool,
    catalog: Path | None,
) -> str:
    """What is about to start and be deployed, and what start-up waits for."""
    lines = [f"work dir {work_dir}" + (" (removed at exit)" if temporary else "")]
    for spec in specs:
        image = dev_image(spec)
        where = f"port {spec.inference_port}" if image.port is not None else "a port each"
        lines.append(
            f"function {spec.name}, version {spec.version_id}: image {image.image} runs "
            f"{shlex.join(spec.command)} ({where}, up to {max_instances(spec)} "
            f"instance{'' if max_instances(spec) == 1 else 's'})"
        )
    if catalog is not None:
        lines.append(f"image catalog for deployments: {catalog}")
    platform_url = f"http://{HOST}:{port}"
    waited = f"waiting up to {timeout:g} s for: nats-server, the platform on {platform_url}"
    if specs:
        waited += ", then every version registered, deployed and ACTIVE"
    lines.append(waited)
    return "\n".join(lines)


def ready_text(
    stack: LocalStack,
    policy: RestartPolicy | None,
    catalog: ImageCatalog | None,
    functions: Sequence[FunctionSpec] | None = None,
) -> str:
    """Where to call each function and version (`functions`, default the stack's own),
    copy-paste ready; with `catalog` (or without a function) how to register and deploy
    functions through the API too."""
    specs = stack.functions if functions is None else tuple(functions)
    key = stack.api_key
    auth = f"-H {shlex.quote(f'Authorization: Bearer {key}')}"
    post = f"curl -sS -X POST {auth} -H 'Content-Type: application/json'"
    body = f"-d {shlex.quote(EXAMPLE_BODY)}"
    lines = [f"ready: {stack.base_url} (API key {key})"]
    by_function: dict[str, list[FunctionSpec]] = {}
    for spec in specs:
        by_function.setdefault(spec.function_id, []).append(spec)
    for function_id, versions in by_function.items():
        url = shlex.quote(stack.invoke_url(function_id))
        gateway_path = versions[0].default_invocation_path or "/"
        if not gateway_path.startswith("/"):
            gateway_path = f"/{gateway_path}"
        gateway_url = shlex.quote(stack.base_url + gateway_path)
        lines += [
            f"function {versions[0].name}, id {function_id}:",
            "  invoke (any version):",
            f"    {post} {url} {body}",
            "  stream (server-sent events):",
            f"    {post} -N -H 'Accept: text/event-stream' {url} {body}",
            "  gateway form (any method, path and query; add -H 'function-version-id: ...' for "
            "one version):",
            f"    {post} -H 'function-id: {function_id}' {gateway_url} {body}",
        ]
        for spec in versions:
            path = spec.default_invocation_path or "/"
            lines += [
                f"  version {spec.version_id} (invocation path {path}):",
                f"    {post} {shlex.quote(stack.invoke_url(function_id, spec.version_id))} {body}",
            ]
        lines += [
            "  with the CLI:",
            f"    nvcf-sidecar invoke {function_id} --url {stack.base_url} --api-key "
            f"{shlex.quote(key)} --data {shlex.quote(EXAMPLE_BODY)}",
            f"    nvcf-sidecar invoke {function_id} --gateway --path {shlex.quote(gateway_path)} "
            f"--url {stack.base_url} --api-key {shlex.quote(key)} --data {shlex.quote(EXAMPLE_BODY)}",
        ]
    if catalog is not None or not specs:
        lines.append(api_text(stack, catalog or ImageCatalog()))
    status_url = f"{stack.base_url}/v2/nvcf/pexec/status/REQUEST_ID"
    pids = [(name, nats.pid) for name, nats in stack.nats_nodes.items()]
    pids += [(p.name, p.pid) for p in stack.processes()]
    if stack.has_grpc_proxy:
        lines += [
            f"gRPC functions (inferenceUrl /grpc): h2c at {stack.grpc_proxy_address}, with the "
            "metadata NVCF's gRPC proxy reads, e.g.",
            f"  grpcurl -plaintext -H 'authorization: Bearer {key}' -H 'function-id: FUNCTION_ID' "
            f"{stack.grpc_proxy_address} SERVICE/METHOD",
        ]
    lines += [
        "status of a request answered 202 (REQUEST_ID: its nvcf-reqid header):",
        f"  curl -sS {auth} {status_url}",
        f"pids: {' '.join(f'{name}={pid}' for name, pid in pids)}",
    ]
    if policy is not None:
        lines.append(
            f"nats-server, the platform, a server or a sidecar that exits is restarted (at most "
            f"{policy.max_restarts} times within {policy.window:g} s each; an instance's server "
            "or sidecar by the platform, which replaces the instance once they are spent)"
        )
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def api_text(stack: LocalStack, catalog: ImageCatalog) -> str:
    """The control plane, copy-paste ready: CLI variables, then register, deploy, check,
    invoke, undeploy and delete one function of the catalog, with the CLI and with curl."""
    base, key = stack.base_url, stack.api_key
    auth = f"-H {shlex.quote(f'Authorization: Bearer {key}')}"
    json_post = "-H 'Content-Type: application/json'"
    lines = [
        "control plane (NVCF API): register functions, deploy them, and the platform runs their "
        "instances; their output shows here as [server-NAME-N] and [sidecar-NAME-N] lines "
        f"(logs in {stack.instances_dir})",
        *_catalog_lines(catalog),
    ]
    create_flags, definition, invoke_body = _example(catalog)
    invoke_path = str(definition["inferenceUrl"])
    gpu, instance_type = _instance_type(stack)
    deployment = {
        "deploymentSpecifications": [
            {"gpu": gpu, "instanceType": instance_type, "minInstances": 1, "maxInstances": 2}
        ]
    }
    version_url = f"{base}/v2/nvcf/functions/FUNCTION_ID/versions/VERSION_ID"
    deploy_url = f"{base}/v2/nvcf/deployments/functions/FUNCTION_ID/versions/VERSION_ID"
    lines += [
        "  with the CLI (it remembers the last function and version):",
        f"    export NVCF_BASE_HTTP_URL={base} NVCF_API_KEY={shlex.quote(key)}",
        f"    nvcf-sidecar function create {create_flags}",
        "    nvcf-sidecar function deploy create --min-instances 1 --max-instances 2"
        "    # DEPLOYING, then ACTIVE",
        f"    nvcf-sidecar invoke FUNCTION_ID --url {base} --api-key {shlex.quote(key)} "
        f"--data {shlex.quote(invoke_body)}",
        "    nvcf-sidecar function create --function-id FUNCTION_ID ...    # a new version",
        "    nvcf-sidecar function deploy remove    # INACTIVE (in-flight requests finish)",
        "    nvcf-sidecar function delete",
        "  with curl (FUNCTION_ID and VERSION_ID: the id and versionId of the answer):",
        f"    curl -sS -X POST {auth} {json_post} {base}/v2/nvcf/functions "
        f"-d {shlex.quote(json.dumps(definition))}",
        f"    curl -sS -X POST {auth} {json_post} {deploy_url} "
        f"-d {shlex.quote(json.dumps(deployment))}",
        f"    curl -sS {auth} {version_url}    # .function.status: DEPLOYING, then ACTIVE",
        f"    curl -sS -X POST {auth} {json_post} {base}/v2/nvcf/pexec/functions/FUNCTION_ID "
        f"-d {shlex.quote(invoke_body)}",
        f"    curl -sS -X POST {auth} {json_post} -H 'function-id: FUNCTION_ID' "
        f"{base}{invoke_path} -d {shlex.quote(invoke_body)}    # the gateway form",
        f"    curl -sS -X DELETE {auth} {deploy_url}    # undeploy: INACTIVE",
        f"    curl -sS -X DELETE {auth} {version_url}",
        f"    curl -sS {auth} {base}/v2/nvcf/functions    # every function and its status",
    ]
    return "\n".join(lines)


def _catalog_lines(catalog: ImageCatalog) -> list[str]:
    if not catalog.images and not catalog.models:
        return [
            "  the image catalog is empty: only images and models it names can be deployed, so "
            "none can; restart with --images FILE (or [[images]] and [[models]] in --config)"
        ]
    lines = ["  images and models that can be deployed (only these):"]
    for entry in catalog.images:
        fixed = "" if entry.port is None else f"  (listens on {entry.port}: one instance at a time)"
        lines.append(f"    image {entry.image}: {shlex.join(entry.command)}{fixed}")
    lines += [f"    model {m.name} version {m.version}: {m.path}" for m in catalog.models]
    return lines


def _example(catalog: ImageCatalog) -> tuple[str, dict[str, object], str]:
    """`function create` flags, the same definition as a body, and an invocation body."""
    if catalog.images or not catalog.models:
        image = catalog.images[0].image if catalog.images else "IMAGE"
        definition: dict[str, object] = {
            "name": "hello",
            "inferenceUrl": "/",
            "inferencePort": 8000,
            "containerImage": image,
        }
        flags = f"--name hello --image {shlex.quote(image)} --inference-url / --inference-port 8000"
        return flags, definition, EXAMPLE_BODY
    model = catalog.models[0]
    url = f"/v2/models/{model.name}/infer"
    artifact = f"{model.name}:{model.version}:/v2/models/{model.name}/{model.version}/files"
    definition = {
        "name": model.name.replace("_", "-"),
        "inferenceUrl": url,
        "inferencePort": 8000,
        "apiBodyFormat": "PREDICT_V2",
        "models": [
            {"name": model.name, "version": model.version, "uri": artifact.split(":", 2)[2]}
        ],
    }
    flags = (
        f"--name {shlex.quote(str(definition['name']))} --inference-url {url} "
        f"--api-body-format PREDICT_V2 --models {shlex.quote(artifact)}"
    )
    return flags, definition, _PREDICT_V2_BODY


def _instance_type(stack: LocalStack) -> tuple[str, str]:
    """The platform's default GPU and instance type (as the CLI picks them), from its cluster
    groups; the CPU entry if it cannot be asked."""
    client = ApiClient(stack.base_url, stack.api_key, timeout=_CLUSTER_GROUPS_TIMEOUT)
    try:
        return default_instance_type(client.list_cluster_groups())
    except (CliError, OSError, ValueError):
        return CPU_GPU_NAME, CPU_INSTANCE_TYPE
