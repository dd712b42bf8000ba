"""HTTP calls of `nvcf-sidecar function`: NVCF's control-plane routes, one method each.

Synchronous `urllib.request` keeps the command's import cheap; answers are JSON objects, refusals
become `ApiError` (from the problem+json body) and unreachable servers `PlatformUnreachable`.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import quote, urlencode

from nvcf_platform.cli.errors import ApiError, CliError, DeploymentTimedOut, PlatformUnreachable

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT_SECONDS",
    "ApiClient",
    "JsonObject",
    "wait_until_deployed",
]

JsonObject = dict[str, Any]
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 30.0
_FINAL_STATUSES: Final = frozenset({"ACTIVE", "ERROR", "INACTIVE"})
"""Where a deploy's wait ends: deployed, failed, or undeployed by someone meanwhile."""


def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


@dataclass(frozen=True)
class ApiClient:
    """NVCF's functions and deployments API at `base_url`, called with bearer `token`."""

    base_url: str
    token: str
    timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS

    # Functions and versions (reference §2, §3).

    def create_function(self, body: JsonObject, function_id: str | None = None) -> JsonObject:
        """POST a new function, or a new version of `function_id`; the answer's `function`."""
        path = "/v2/nvcf/functions"
        if function_id is not None:
            path += f"/{_path(function_id)}/versions"
        return _member(self.request("POST", path, body), "function")

    def list_functions(self) -> JsonObject:
        """`{"functions": [...]}`: every version the caller may see."""
        return self.request("GET", "/v2/nvcf/functions")

    def list_versions(self, function_id: str) -> JsonObject:
        """`{"functions": [...]}`: the versions of one function."""
        return self.request("GET", f"/v2/nvcf/functions/{_path(function_id)}/versions")

    def get_version(self, function_id: str, version_id: str) -> JsonObject:
        """One version's `function` object (its `status` is the deployment's progress)."""
        path = f"/v2/nvcf/functions/{_path(function_id, 'versions', version_id)}"
        return _member(self.request("GET", path), "function")

    def update_version(self, function_id: str, version_id: str, body: JsonObject) -> JsonObject:
        """PUT tags (and the rest of NVCF's update body); the updated `function`."""
        path = f"/v2/nvcf/functions/{_path(function_id, 'versions', version_id)}"
        return _member(self.request("PUT", path, body), "function")

    def delete_version(self, function_id: str, version_id: str) -> None:
        """DELETE a version, deployed or not (204)."""
        self.request("DELETE", f"/v2/nvcf/functions/{_path(function_id, 'versions', version_id)}")

    # Deployments (reference §4, §9).

    def create_deployment(self, function_id: str, version_id: str, body: JsonObject) -> JsonObject:
        """POST a deployment; the answer's `deployment`."""
        path = f"/v2/nvcf/deployments/functions/{_path(function_id, 'versions', version_id)}"
        return _member(self.request("POST", path, body), "deployment")

    def get_deployment(self, function_id: str, version_id: str) -> JsonObject:
        """The version's `deployment` object."""
        path = f"/v2/nvcf/deployments/functions/{_path(function_id, 'versions', version_id)}"
        return _member(self.request("GET", path), "deployment")

    def update_gpu_specification(
        self, deployment_id: str, gpu_specification_id: str, body: JsonObject
    ) -> JsonObject:
        """PATCH one GPU specification of a deployment; the answer's `gpuSpecification`."""
        path = f"/v2/nvcf/deployments/{_path(deployment_id, 'gpu-specifications')}"
        path += f"/{_path(gpu_specification_id)}"
        return _member(self.request("PATCH", path, body), "gpuSpecification")

    def delete_deployment(self, function_id: str, version_id: str, *, graceful: bool) -> JsonObject:
        """DELETE (undeploy) a version's deployment; the answer's `function`, INACTIVE."""
        path = f"/v2/nvcf/deployments/functions/{_path(function_id, 'versions', version_id)}"
        query = {"graceful": "true" if graceful else "false"}
        return _member(self.request("DELETE", path, query=query), "function")

    def list_cluster_groups(self) -> list[JsonObject]:
        """The cluster groups, with the GPUs and instance types a deployment may name."""
        groups = self.request("GET", "/v2/nvcf/clusterGroups").get("clusterGroups")
        if not isinstance(groups, list):
            raise CliError("the answer of GET /v2/nvcf/clusterGroups has no 'clusterGroups' list")
        return [group for group in groups if isinstance(group, dict)]

    # The wire.

    def request(
        self,
        method: str,
        path: str,
        body: JsonObject | None = None,
        query: dict[str, str] | None = None,
    ) -> JsonObject:
        """Send one call; the JSON object answered (`{}` for an empty answer such as 204).

        Raises `ApiError` for an error status, `PlatformUnreachable` when nothing answers.
        """
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw: bytes = response.read()
        except urllib.error.HTTPError as error:
            with error:
                raise _api_error(error.code, error.read()) from None
        except urllib.error.URLError as error:
            raise PlatformUnreachable(self.base_url, _reason(error.reason)) from None
        except TimeoutError:
            raise PlatformUnreachable(
                self.base_url, f"no answer to {method} {path} within {self.timeout:g} s"
            ) from None
        except OSError as error:  # e.g. a connection reset while reading the answer
            raise PlatformUnreachable(self.base_url, _reason(error)) from None
        if not raw.strip():
            return {}
        try:
            answer = json.loads(raw)
        except ValueError:
            raise CliError(f"the answer of {method} {url} is not JSON: {raw[:200]!r}") from None
        if not isinstance(answer, dict):
            raise CliError(f"the answer of {method} {url} is not a JSON object")
        return answer


def wait_until_deployed(
    client: ApiClient,
    function_id: str,
    version_id: str,
    *,
    interval: float,
    timeout: float,
    last_status: str | None,
    report: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll the version's status every `interval` s until ACTIVE, ERROR or INACTIVE; return it.

    `report` is called once per status change (starting from `last_status`, already shown).
    Raises `DeploymentTimedOut` when `timeout` seconds pass first.
    """
    deadline = clock() + timeout
    while True:
        status = str(client.get_version(function_id, version_id).get("status", "UNKNOWN"))
        if status != last_status:
            report(status)
            last_status = status
        if status in _FINAL_STATUSES:
            return status
        remaining = deadline - clock()
        if remaining <= 0:
            raise DeploymentTimedOut(
                f"version {version_id} of function {function_id} is still {status} after "
                f"{timeout:g} s (--timeout); the deployment goes on: "
                "see `nvcf-sidecar function deploy get`"
            )
        sleep(min(interval, remaining))


def _member(answer: JsonObject, key: str) -> JsonObject:
    value = answer.get(key)
    if not isinstance(value, dict):
        raise CliError(f"the API's answer has no {key!r} object: {json.dumps(answer)[:200]}")
    return value


def _api_error(status: int, raw: bytes) -> ApiError:
    """The problem details of an error answer; the raw text when the body is not problem+json."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    try:
        problem = json.loads(raw)
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        title = problem.get("title") or phrase
        detail = problem.get("detail") or problem.get("message") or ""
        return ApiError(status, str(title), str(detail))
    return ApiError(status, phrase, raw.decode(errors="replace").strip()[:500])


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"unknown host: {reason.strerror}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
