"""The description a local instance's directory holds for people and tools (`nvcf-sidecar dev`
follows it): `instance.json`, written when the instance is laid out, beside its `server.log`,
`sidecar.log` and the `<name>.pid` records of its processes (`leftovers.py`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Final

import orjson

from nvcf_platform.backends.plan import InstancePlan

__all__ = ["INSTANCE_FILE", "read_instance_file", "write_instance_file"]

INSTANCE_FILE: Final = "instance.json"


def write_instance_file(
    directory: Path,
    plan: InstancePlan,
    *,
    inference_port: int,
    health_port: int,
    server_health_url: str | None = None,
    server_health_status: int = 200,
) -> None:
    """Describe the instance of `plan` in `directory/instance.json` (best effort: a directory
    that cannot take it changes nothing for the instance). `server_health_url` is its server's
    HTTP health check (None: gRPC), answered `server_health_status` when healthy."""
    document = {
        "instanceId": plan.instance_id,
        "functionId": plan.function_id,
        "functionVersionId": plan.function_version_id,
        "functionName": plan.function_name,
        "deploymentId": plan.deployment_id,
        "containerImage": plan.container_image,
        "inferencePort": inference_port,
        "healthPort": health_port,
        "serverHealthUrl": server_health_url,
        "serverHealthStatus": server_health_status,
        "createdAt": time.time(),
    }
    with contextlib.suppress(OSError):
        (directory / INSTANCE_FILE).write_bytes(orjson.dumps(document))


def read_instance_file(directory: Path) -> dict[str, Any] | None:
    """The description in `directory`, None while there is none or it is not readable."""
    try:
        document = orjson.loads((directory / INSTANCE_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None
