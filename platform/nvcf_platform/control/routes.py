"""NVCF's control-plane routes: functions, versions, deployments, GPUs and cluster groups.

Bodies, success codes and wrapper keys as NVIDIA's API (reference §2-§4, §9, §11.1): create and
deploy answer 200, deleting a version 204; errors are problem details naming the field. The
caller's bearer is checked as for invocations.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web
from nats.errors import Error as NatsError

from nvcf_platform.control.functions import (
    FUNCTION_VERSION_PATH,
    FUNCTION_VERSIONS_PATH,
    FUNCTIONS_PATH,
    FunctionEndpoints,
)
from nvcf_platform.control.metrics import ControlMetrics
from nvcf_platform.control.plane import ControlPlane
from nvcf_platform.control.problems import ControlError, control_problem, not_found
from nvcf_platform.control.reconciler import Reconciler
from nvcf_platform.control.records import VersionRecord
from nvcf_platform.errors import FunctionNotFound, FunctionVersionNotFound, NatsUnavailable
from nvcf_platform.invocation.app import METRICS_PATH
from nvcf_platform.invocation.invocation import CallerIdentity
from nvcf_platform.invocation.problems import RETRY_AFTER_SECONDS, UNAUTHORIZED_CLIENT
from nvcf_sidecar.protocol import parse_bearer

__all__ = [
    "CLUSTER_GROUPS_PATH",
    "DEPLOYMENT_BY_ID_PATH",
    "DEPLOYMENT_PATH",
    "FUNCTION_IDS_PATH",
    "GPU_SPECIFICATION_PATH",
    "SUPPORTED_GPUS_PATH",
    "ControlEndpoints",
]

FUNCTION_IDS_PATH: Final = FUNCTIONS_PATH + "/ids"
DEPLOYMENT_PATH: Final = (
    "/v2/nvcf/deployments/functions/{function_id}/versions/{function_version_id}"
)
DEPLOYMENT_BY_ID_PATH: Final = "/v2/nvcf/deployments/{deployment_id}"
GPU_SPECIFICATION_PATH: Final = DEPLOYMENT_BY_ID_PATH + "/gpu-specifications/{gpu_specification_id}"
SUPPORTED_GPUS_PATH: Final = "/v2/nvcf/supportedGpus"
CLUSTER_GROUPS_PATH: Final = "/v2/nvcf/clusterGroups"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = logging.getLogger(__name__)


class ControlEndpoints:
    """The control plane over HTTP; configured versions (registry file) are listed alongside
    the API's own, through `FunctionEndpoints`, but cannot be deployed or deleted here."""

    def __init__(
        self,
        plane: ControlPlane,
        reconciler: Reconciler | None,
        callers: CallerIdentity,
        configured: FunctionEndpoints,
        metrics: ControlMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._plane = plane
        self._reconciler = reconciler
        self._callers = callers
        self._configured = configured

    def register(self, router: web.UrlDispatcher) -> None:
        add = router.add_route
        add("GET", FUNCTIONS_PATH, self._guard(self.list_functions))
        add("POST", FUNCTIONS_PATH, self._guard(self.create_function))
        add("GET", FUNCTION_IDS_PATH, self._guard(self.list_ids))
        add("GET", FUNCTION_VERSIONS_PATH, self._guard(self.list_versions))
        add("POST", FUNCTION_VERSIONS_PATH, self._guard(self.create_version))
        add("GET", FUNCTION_VERSION_PATH, self._guard(self.show_version))
        add("PUT", FUNCTION_VERSION_PATH, self._guard(self.update_version))
        add("DELETE", FUNCTION_VERSION_PATH, self._guard(self.delete_version))
        add("POST", DEPLOYMENT_PATH, self._guard(self.deploy))
        add("GET", DEPLOYMENT_PATH, self._guard(self.show_deployment))
        add("PUT", DEPLOYMENT_PATH, self._guard(self.replace_deployment))
        add("DELETE", DEPLOYMENT_PATH, self._guard(self.undeploy))
        add("GET", DEPLOYMENT_BY_ID_PATH, self._guard(self.show_deployment_by_id))
        add("PATCH", GPU_SPECIFICATION_PATH, self._guard(self.patch_specification))
        add("GET", SUPPORTED_GPUS_PATH, self._guard(self.supported_gpus))
        add("GET", CLUSTER_GROUPS_PATH, self._guard(self.cluster_groups))
        if self._metrics is not None:
            router.add_get(METRICS_PATH, self.metrics, allow_head=False)

    def _guard(self, handler: _Handler) -> _Handler:
        """Bearer check, then the handler; a `ControlError` becomes NVCF's problem details."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._callers.accepts(parse_bearer(request.headers.get("Authorization"))):
                return control_problem(401, UNAUTHORIZED_CLIENT, request.path)
            try:
                return await handler(request)
            except ControlError as error:
                return control_problem(error.status, error.detail, request.path)
            except (NatsError, TimeoutError, NatsUnavailable) as error:
                _log.error("control state unavailable", extra={"error": repr(error)})
                reason = error.reason if isinstance(error, NatsUnavailable) else repr(error)
                response = control_problem(
                    503, f"the control state (NATS KV) is unavailable: {reason}", request.path
                )
                response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
                return response

        return guarded

    # -- functions ----------------------------------------------------------------------------

    def _function_json(self, record: VersionRecord) -> dict[str, Any]:
        instances = None if self._reconciler is None else self._reconciler.instances_json(record)
        return record.function_json(instances=instances)

    def _all_versions(self) -> list[dict[str, Any]]:
        managed = {r.version_id: r for r in self._plane.records()}
        answers = [
            self._configured.version_json(v)
            for v in self._configured.registry.versions
            if v.function_version_id not in managed
        ]
        answers.extend(r.function_json() for r in managed.values())
        return answers

    async def list_functions(self, request: web.Request) -> web.StreamResponse:
        """`{"functions": [...]}`, one entry per version (no activeInstances, as NVIDIA's)."""
        return _json({"functions": self._all_versions()})

    async def list_ids(self, request: web.Request) -> web.StreamResponse:
        ids = dict.fromkeys(entry["id"] for entry in self._all_versions())
        return _json({"functionIds": list(ids)})

    async def list_versions(self, request: web.Request) -> web.StreamResponse:
        function_id = request.match_info["function_id"]
        try:
            function = self._configured.registry.function(function_id)
        except FunctionNotFound:
            raise ControlError(
                404, f"Function id '{function_id}': Not found in account '{self._plane.nca_id}'"
            ) from None
        answers = []
        for version in function.versions:
            record = self._plane.managed(version.function_version_id)
            answers.append(
                self._configured.version_json(version) if record is None else record.function_json()
            )
        return _json({"functions": answers})

    async def show_version(self, request: web.Request) -> web.StreamResponse:
        function_id = request.match_info["function_id"]
        version_id = request.match_info["function_version_id"]
        nca_id = self._plane.nca_id
        try:
            version = self._configured.registry.version(function_id, version_id)
        except FunctionNotFound:
            raise not_found(
                f"Function id '{function_id}': Not found in account '{nca_id}'"
            ) from None
        except FunctionVersionNotFound:
            raise not_found(
                f"Function id '{function_id}', version '{version_id}': "
                f"Not found in account '{nca_id}'"
            ) from None
        record = self._plane.managed(version.function_version_id)
        if record is None:
            return _json({"function": self._configured.version_json(version)})
        return _json({"function": self._function_json(record)})

    async def create_function(self, request: web.Request) -> web.StreamResponse:
        record = await self._plane.create(await _body(request))
        return _json({"function": record.function_json()})

    async def create_version(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        record = await self._plane.create(body, function_id=request.match_info["function_id"])
        return _json({"function": record.function_json()})

    async def update_version(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        record = await self._plane.update(*_ids(request), body)
        return _json({"function": self._function_json(record)})

    async def delete_version(self, request: web.Request) -> web.StreamResponse:
        await self._plane.delete(*_ids(request))
        return web.Response(status=204)

    # -- deployments --------------------------------------------------------------------------

    def _deployment_json(self, record: VersionRecord) -> dict[str, Any]:
        body = record.deployment_json()
        if self._reconciler is not None and record.deployment is not None:
            body["deploymentSpecifications"] = [
                {**spec, "instances": self._reconciler.counts(record, spec)}
                for spec in record.deployment.specifications
            ]
        return body

    async def deploy(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        record = await self._plane.deploy(*_ids(request), body)
        return _json({"deployment": self._deployment_json(record)})

    async def show_deployment(self, request: web.Request) -> web.StreamResponse:
        record = self._plane.deployment(*_ids(request))
        return _json({"deployment": self._deployment_json(record)})

    async def show_deployment_by_id(self, request: web.Request) -> web.StreamResponse:
        record = self._plane.by_deployment(request.match_info["deployment_id"])
        return _json({"deployment": self._deployment_json(record)})

    async def replace_deployment(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        record = await self._plane.replace_specifications(*_ids(request), body)
        return _json({"deployment": self._deployment_json(record)})

    async def patch_specification(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        spec = await self._plane.patch_specification(
            request.match_info["deployment_id"], request.match_info["gpu_specification_id"], body
        )
        return _json({"gpuSpecification": spec})

    async def undeploy(self, request: web.Request) -> web.StreamResponse:
        record = await self._plane.undeploy(*_ids(request))
        return _json({"function": record.function_json()})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """Prometheus text format (no bearer needed, as `/health`)."""
        assert self._metrics is not None
        self._autoscaler_export()
        return web.Response(body=self._metrics.exposition(), content_type="text/plain")

    def _autoscaler_export(self) -> None:
        autoscaler = None if self._reconciler is None else self._reconciler.autoscaler
        if autoscaler is not None:
            autoscaler.export()

    # -- catalogue ----------------------------------------------------------------------------

    async def supported_gpus(self, request: web.Request) -> web.StreamResponse:
        return _json(self._plane.catalog.supported_gpus_json())

    async def cluster_groups(self, request: web.Request) -> web.StreamResponse:
        return _json(self._plane.catalog.cluster_groups_json(self._plane.nca_id))


def _ids(request: web.Request) -> tuple[str, str]:
    return request.match_info["function_id"], request.match_info["function_version_id"]


async def _body(request: web.Request) -> object:
    """The JSON body; 415 for another content type, 400 for JSON that does not parse."""
    if request.content_type != "application/json":
        raise ControlError(
            415,
            f"Content-Type '{request.content_type or ''}' is not supported: use application/json",
        )
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        raise ControlError(400, f"Invalid request: malformed JSON body: {error}") from None


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")
