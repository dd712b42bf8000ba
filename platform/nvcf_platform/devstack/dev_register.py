"""`nvcf-sidecar dev --config` (and `dev -- COMMAND`) through the platform's NVCF API: each
version of the config is registered and deployed with the calls a user would make, then its
status is watched.

A version becomes three things:

- an image of the local catalog, `dev.local/<name>:<version id>` (`dev_image`): the version's
  command, working directory and environment, its sidecars' environment and flags, and its
  `inference_port` as the image's fixed port, unless the command takes `{port}` (then each
  instance gets a free one and the version may run several);
- a function version (`function_body`): `POST /v2/nvcf/functions` for a function's first
  version and `POST /v2/nvcf/functions/{id}/versions` for the next, with the config's ids (the
  API's `id`/`versionId` extension), its `inferenceUrl`, `inferencePort`, `healthUri` and
  secrets;
- a deployment (`deployment_body`) on the platform's default GPU and instance type:
  `minInstances` = `min_instances`, `maxInstances` = the larger of `sidecars` and
  `min_instances`, `maxRequestConcurrency` = `max_request_concurrency`.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nvcf_platform.backends.images import ImageCatalog, ImageEntry
from nvcf_platform.backends.instance_dir import read_instance_file
from nvcf_platform.cli.api_client import ApiClient, JsonObject
from nvcf_platform.cli.bodies import default_instance_type
from nvcf_platform.cli.errors import CliError
from nvcf_platform.control.validation import GRPC_INFERENCE_URL
from nvcf_platform.devstack.stack_spec import HOST, FunctionSpec

__all__ = [
    "DEV_REGISTRY",
    "DevDeployError",
    "DevDeployments",
    "catalog_beside",
    "deployment_body",
    "dev_image",
    "function_body",
]

DEV_REGISTRY: Final = "dev.local"
"""The registry part of the images `dev` makes of its config's versions."""
_PORT: Final = "{port}"
_WAIT_ROUND: Final = 0.25
_WATCH_EVERY: Final = 1.0
_WATCH_TIMEOUT: Final = 2.0
_PROBE_TIMEOUT: Final = 1.0
_LEFT_ACTIVE: Final = frozenset({"DEGRADING", "DEGRADED", "ERROR"})


class DevDeployError(Exception):
    """A version could not be registered or deployed, or did not become ACTIVE."""


def dev_image(spec: FunctionSpec) -> ImageEntry:
    """The catalog entry `spec`'s version runs as."""
    takes_port = any(_PORT in part for part in spec.command)
    return ImageEntry(
        image=f"{DEV_REGISTRY}/{spec.name.lower()}:{spec.version_id}",
        command=tuple(spec.command),
        cwd=spec.cwd,
        env=dict(spec.container_env),
        port=None if takes_port else spec.inference_port,
        sidecar_env=dict(spec.sidecar_env),
        sidecar_args=tuple(spec.sidecar_args),
    )


def catalog_beside(
    catalog: ImageCatalog | None, specs: Sequence[FunctionSpec]
) -> ImageCatalog | None:
    """`catalog` without the images of `specs`' versions: what `--images` and the config's
    tables add for the API (None when that leaves nothing)."""
    if catalog is None:
        return None
    own = {dev_image(spec).image for spec in specs}
    images = [entry for entry in catalog.images if entry.image not in own]
    if not images and not catalog.models:
        return None
    return ImageCatalog(images, catalog.models)


def max_instances(spec: FunctionSpec) -> int:
    """The most instances the version may run: its `sidecars` (or `min_instances`, at least 1)."""
    return max(spec.sidecars, spec.min_instances, 1)


def function_body(spec: FunctionSpec, image: str, *, first: bool) -> JsonObject:
    """The create body of `spec`'s version; `first`: its function's first (pins `id` too)."""
    body: JsonObject = {
        "name": spec.name,
        "inferenceUrl": spec.default_invocation_path,
        "inferencePort": spec.inference_port,
        "healthUri": spec.health_endpoint,
        "containerImage": image,
        "versionId": spec.version_id,
    }
    if first:
        body["id"] = spec.function_id
    secrets = _secrets(spec)
    if secrets:
        body["secrets"] = secrets
    return body


def deployment_body(spec: FunctionSpec, gpu: str, instance_type: str) -> JsonObject:
    """The deployment of `spec`'s version on `gpu` / `instance_type`."""
    return {
        "deploymentSpecifications": [
            {
                "gpu": gpu,
                "instanceType": instance_type,
                "minInstances": spec.min_instances,
                "maxInstances": max_instances(spec),
                "maxRequestConcurrency": spec.max_request_concurrency,
            }
        ]
    }


def _secrets(spec: FunctionSpec) -> list[JsonObject]:
    """The version's secrets as NVCF takes them, `[{name, value}]`; a value is a string or an
    object (DevDeployError for anything else: the API would refuse it)."""
    if spec.secrets is None:
        return []
    if isinstance(spec.secrets, Path):
        document = json.loads(spec.secrets.read_bytes())  # checked by the config's loader
    else:
        document = dict(spec.secrets)
    secrets = []
    for name, value in document.items():
        if not isinstance(value, str | dict):
            raise DevDeployError(
                f"function {spec.name!r}: secret {name!r} must be a string or an object "
                f"(as NVCF takes secrets), not {type(value).__name__}"
            )
        secrets.append({"name": name, "value": value})
    return secrets


@dataclass
class _Version:
    spec: FunctionSpec
    status: str = "INACTIVE"
    last_answer: str = ""


class DevDeployments:
    """The config's versions on the platform: `register()` creates and deploys them,
    `wait_active()` waits for all of them, `watch()` is one round of watching afterwards.

    `instances_root` is where the platform lays out its instances (their `instance.json` say
    which version each serves, and where its sidecar's health is).
    """

    def __init__(
        self,
        client: ApiClient,
        specs: Sequence[FunctionSpec],
        *,
        instances_root: Path,
        say: Callable[[str], None],
    ) -> None:
        self._client = client
        # Watching shares a loop with the stack's supervisor: never a long wait on a platform
        # that is restarting (its listening socket outlives it, so calls hang, not fail).
        self._watcher = dataclasses.replace(client, timeout=_WATCH_TIMEOUT)
        self._versions = [_Version(spec) for spec in specs]
        self._instances_root = instances_root
        self._say = say
        self._next_watch = 0.0

    def register(self) -> None:
        """Create every function and version, then deploy each version; DevDeployError (with
        the API's answer) on the first refusal."""
        try:
            gpu, instance_type = default_instance_type(self._client.list_cluster_groups())
            created: set[str] = set()
            for version in self._versions:
                spec = version.spec
                first = spec.function_id not in created
                body = function_body(spec, dev_image(spec).image, first=first)
                self._client.create_function(body, None if first else spec.function_id)
                created.add(spec.function_id)
            for version in self._versions:
                spec = version.spec
                self._client.create_deployment(
                    spec.function_id,
                    spec.version_id,
                    deployment_body(spec, gpu, instance_type),
                )
                self._say(
                    f"function {spec.name} version {spec.version_id}: deployed on {gpu} "
                    f"{instance_type} (min {spec.min_instances}, max {max_instances(spec)} "
                    "instances)"
                )
        except CliError as error:
            raise DevDeployError(str(error)) from None

    def wait_active(self, deadline: float) -> None:
        """Wait until every version is ACTIVE (monotonic `deadline`); DevDeployError naming the
        version and why when one is in ERROR or the time runs out."""
        while True:
            pending = [v for v in self._versions if v.status != "ACTIVE"]
            for version in pending:
                try:
                    self._refresh(version)
                except CliError as error:
                    raise DevDeployError(str(error)) from None
                if version.status == "ERROR":
                    raise DevDeployError(self._error_text(version))
                if version.status != "ACTIVE":
                    self._probe(version)
            if all(v.status == "ACTIVE" for v in self._versions):
                return
            if time.monotonic() >= deadline:
                waiting = []
                for version in self._versions:
                    if version.status != "ACTIVE":
                        answers = self._answers(version)
                        why = f" ({answers})" if answers else ""
                        waiting.append(f"{self._label(version)} is {version.status}{why}")
                raise DevDeployError("; ".join(waiting))
            time.sleep(_WAIT_ROUND)

    def watch(self) -> tuple[str, str] | None:
        """One round of watching (its API calls once a second): what changed is said; the
        first version that just turned DEGRADING, DEGRADED or ERROR, as (its label, that
        status), else None."""
        now = time.monotonic()
        if now < self._next_watch:
            return None
        self._next_watch = now + _WATCH_EVERY
        for version in self._versions:
            before = version.status
            try:
                self._refresh(version, self._watcher)
            except CliError:
                return None  # the platform is away (restarting?): the stack's supervisor sees
            if version.status in _LEFT_ACTIVE and version.status != before:
                return self._label(version), version.status
        return None

    # -- reading the platform -------------------------------------------------------------------

    def _refresh(self, version: _Version, client: ApiClient | None = None) -> None:
        spec = version.spec
        found = (client or self._client).get_version(spec.function_id, spec.version_id)
        status = str(found.get("status", "UNKNOWN"))
        if status != version.status:
            self._say(f"{self._label(version)}: {status}")
            version.status = status

    def _error_text(self, version: _Version) -> str:
        spec = version.spec
        text = f"{self._label(version)} is in ERROR"
        try:
            deployment = self._client.get_deployment(spec.function_id, spec.version_id)
        except CliError:
            return text
        errors = [str(h.get("error")) for h in deployment.get("healthInfo") or () if h]
        return f"{text}: {errors[0]}" if errors else text

    def _probe(self, version: _Version) -> None:
        """Ask the version's server (and sidecars) for their health while it deploys; say the
        answers when they change."""
        answers = self._answers(version)
        if answers and answers != version.last_answer:
            self._say(f"{self._label(version)}: {answers}")
        version.last_answer = answers

    def _answers(self, version: _Version) -> str:
        """`server URL answers 404; sidecar URL answers 503`: the server's health endpoint (a
        fixed port's, HTTP) and the sidecars of its newest instances ('' when none is known)."""
        spec = version.spec
        image = dev_image(spec)
        parts = []
        if image.port is not None and spec.default_invocation_path != GRPC_INFERENCE_URL:
            url = f"http://{HOST}:{image.port}{spec.health_endpoint}"
            parts.append(f"server {url} {_answer(url)}")
        for document in self._instance_files(spec.version_id):
            url = f"http://{HOST}:{document.get('healthPort')}/v1/health/ready"
            parts.append(f"sidecar {url} {_answer(url)}")
        return "; ".join(parts)

    def _instance_files(self, version_id: str) -> list[dict[str, Any]]:
        """The descriptions of the version's newest instances (3 at most)."""
        try:
            directories = list(self._instances_root.iterdir())
        except OSError:
            return []
        found = []
        for directory in directories:
            document = read_instance_file(directory)
            if document is not None and document.get("functionVersionId") == version_id:
                found.append(document)
        found.sort(key=lambda document: float(document.get("createdAt") or 0))
        return found[-3:]

    @staticmethod
    def _label(version: _Version) -> str:
        return f"function {version.spec.name} version {version.spec.version_id}"


def _answer(url: str) -> str:
    """`answers 200`, `answers 404`, or `does not answer (...)`."""
    try:
        with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT) as response:
            return f"answers {response.status}"
    except urllib.error.HTTPError as error:
        error.close()
        return f"answers {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"does not answer ({reason})"
    except http.client.HTTPException as error:
        return f"does not answer HTTP/1.1 ({type(error).__name__})"
