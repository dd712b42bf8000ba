"""`InstancePlan`: what the control plane hands a backend for one instance of a function version,
and the readings of the stored NVCF function definition (camelCase) a backend needs.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from nvcf_platform.backends.errors import BackendError

__all__ = ["DEFAULT_HEALTH_URI", "HealthCheck", "InstancePlan", "ModelRef"]

DEFAULT_HEALTH_URI: Final = "/v2/health/ready"
"""NVCF's default `INFERENCE_HEALTH_ENDPOINT` (Triton's readiness)."""


@dataclass(frozen=True)
class ModelRef:
    """One entry of a definition's `models[]`."""

    name: str
    version: str
    uri: str = ""


@dataclass(frozen=True)
class HealthCheck:
    """A definition's `health` (or the legacy top-level `healthUri`)."""

    uri: str = DEFAULT_HEALTH_URI
    protocol: str = "HTTP"
    """`HTTP` or `gRPC`."""
    port: int | None = None
    timeout: str | None = None
    """An ISO 8601 duration (`PT10S`), as NVCF stores it."""
    expected_status_code: int | None = None


@dataclass(frozen=True)
class InstancePlan:
    """One instance to run: ids, placement, the version's definition and its concurrency.

    The definition readers (`container_image`, `container_args`, ...) raise `BackendError`
    naming the key when a value has the wrong shape; `LocalBackend.check` turns that into 400.
    """

    instance_id: str
    function_id: str
    function_version_id: str
    function_name: str
    nca_id: str
    deployment_id: str = ""
    gpu_specification_id: str = ""
    gpu: str = ""
    instance_type: str = ""
    definition: Mapping[str, Any] = field(default_factory=dict)
    max_request_concurrency: int = 1
    max_instances: int = 1
    """Its GPU specification's `maxInstances`: how many instances of it may run at once."""

    @property
    def container_image(self) -> str | None:
        """`containerImage`, None when absent or blank."""
        return self._text("containerImage") or None

    @property
    def container_args(self) -> list[str]:
        """`containerArgs` split as a shell would ([] when absent or blank)."""
        text = self._text("containerArgs")
        try:
            return shlex.split(text)
        except ValueError as error:
            raise BackendError(
                f"containerArgs: {text!r} is not valid shell words: {error}"
            ) from None

    @property
    def container_environment(self) -> dict[str, str]:
        """`containerEnvironment` ([{key, value}]) as a mapping, later entries winning."""
        env: dict[str, str] = {}
        for index, item in enumerate(self._list("containerEnvironment")):
            key = item.get("key") if isinstance(item, Mapping) else None
            value = item.get("value", "") if isinstance(item, Mapping) else None
            if not isinstance(key, str) or not key or not isinstance(value, str | int | float):
                raise BackendError(f"containerEnvironment[{index}]: must be {{key, value}} strings")
            env[key] = str(value)
        return env

    @property
    def models(self) -> list[ModelRef]:
        """`models[]` ([{name, version, uri}])."""
        found = []
        for index, item in enumerate(self._list("models")):
            name = item.get("name") if isinstance(item, Mapping) else None
            version = item.get("version") if isinstance(item, Mapping) else None
            if not isinstance(name, str) or not name or not isinstance(version, str | int):
                raise BackendError(f"models[{index}]: must name a model and its version")
            uri = item.get("uri", "")
            found.append(ModelRef(name, str(version), uri if isinstance(uri, str) else ""))
        return found

    @property
    def secrets(self) -> dict[str, str | dict[str, Any]]:
        """`secrets` ([{name, value}]) as NVCF writes them to `secrets.json`: a string value as
        it is, a JSON object value (the API allows one) as that object."""
        found: dict[str, str | dict[str, Any]] = {}
        for index, item in enumerate(self._list("secrets")):
            name = item.get("name") if isinstance(item, Mapping) else None
            value = item.get("value") if isinstance(item, Mapping) else None
            if not isinstance(name, str) or not name or value is None:
                raise BackendError(f"secrets[{index}]: must be {{name, value}}")
            if isinstance(value, Mapping):
                found[name] = dict(value)
            else:
                found[name] = value if isinstance(value, str) else str(value)
        return found

    @property
    def helm_chart(self) -> str | None:
        """`helmChart`, None when absent or blank."""
        return self._text("helmChart") or None

    @property
    def inference_url(self) -> str:
        """`inferenceUrl` ('' when absent)."""
        return self._text("inferenceUrl")

    @property
    def health(self) -> HealthCheck:
        """`health` ({protocol, uri, port, timeout, expectedStatusCode}); `healthUri` when only
        that legacy key is given; NVCF's defaults otherwise."""
        health = self.definition.get("health")
        if health is None:
            return HealthCheck(uri=self._text("healthUri") or DEFAULT_HEALTH_URI)
        if not isinstance(health, Mapping):
            raise BackendError(f"health: must be an object, not {health!r}")
        uri = health.get("uri") or DEFAULT_HEALTH_URI
        protocol = health.get("protocol") or "HTTP"
        port, code, timeout = (
            health.get("port"),
            health.get("expectedStatusCode"),
            health.get("timeout"),
        )
        if not isinstance(uri, str) or not uri.startswith("/"):
            raise BackendError(f"health.uri: {uri!r} must start with '/'")
        if not isinstance(protocol, str) or protocol.upper() not in ("HTTP", "GRPC"):
            raise BackendError(f"health.protocol: {protocol!r} must be HTTP or gRPC")
        for key, value in (("port", port), ("expectedStatusCode", code)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise BackendError(f"health.{key}: {value!r} must be an integer")
        if timeout is not None and not isinstance(timeout, str):
            raise BackendError(f"health.timeout: {timeout!r} must be a duration (PT10S)")
        return HealthCheck(uri, protocol, port, timeout, code)

    def _text(self, key: str) -> str:
        value = self.definition.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise BackendError(f"{key}: {value!r} must be a string")
        return value.strip()

    def _list(self, key: str) -> list[Any]:
        value = self.definition.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise BackendError(f"{key}: must be an array")
        return value
