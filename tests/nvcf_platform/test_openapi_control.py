"""docs/openapi.yaml against the control-plane routes of a live platform (schemathesis).

Generated bodies, valid and invalid, of the function, version and deployment routes: every
answer must have a documented status code, content type and schema, and an invalid body must
be refused 4xx (a problem), never 500. A chained lifecycle with a real instance (the hello
example) checks the 200 answers of every route, the deployment with its `instances` counts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings

from nvcf_platform.service import PlatformService

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.nats

ROOT: Final = Path(__file__).resolve().parents[2]
DOCUMENT: Final = ROOT / "docs" / "openapi.yaml"
API_KEY: Final = "nvapi-test-key"  # the key of conftest.platform_settings
AUTH: Final = {"Authorization": f"Bearer {API_KEY}"}
IMAGE: Final = "nvcr.io/acme/hello:1.0"
HELLO: Final = {
    "name": "hello",
    "inferenceUrl": "/",
    "inferencePort": 8000,
    "containerImage": IMAGE,
}
MAX_EXAMPLES: Final = 30
"""Generated requests per operation and generation mode (bounded: the suite stays fast)."""
FUZZ_TIMEOUT: Final = 45.0

CONFORMANCE: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MODES: Final = {
    GenerationMode.POSITIVE: CONFORMANCE,
    GenerationMode.NEGATIVE: [*CONFORMANCE, negative_data_rejection],
}

StartPlatform = Callable[..., Awaitable[PlatformService]]


@pytest.fixture(scope="module")
def schema() -> Any:
    return schemathesis.openapi.from_path(DOCUMENT)


@pytest.fixture
def images_file(tmp_path: Path) -> Path:
    """The images catalog of test_lifecycle: IMAGE runs examples/byoc/hello/server.py."""
    path = tmp_path / "images.toml"
    server = ROOT / "examples" / "byoc" / "hello" / "server.py"
    path.write_text(
        f'[[images]]\nimage = "{IMAGE}"\n'
        f'command = ["{sys.executable}", "{server}", "--port", "{{port}}"]\n'
    )
    return path


def _operation(schema: Any, method: str, path: str) -> Any:
    return schema[path][method]


def _no_instances(body: Any) -> Any:
    """Generated bounds that would start instances ask for none (nothing else changes):
    a `minInstances` that is a valid count becomes 0, at the top or in each specification."""
    objects = [body] if isinstance(body, dict) else []
    if isinstance(body, dict) and isinstance(body.get("deploymentSpecifications"), list):
        objects += [s for s in body["deploymentSpecifications"] if isinstance(s, dict)]
    for item in objects:
        value = item.get("minInstances")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            item["minInstances"] = 0
    return body


def _fuzz(
    operation: Any,
    base_url: str,
    *,
    path_parameters: dict[str, str] | None = None,
    rewrite: Callable[[Any], Any] | None = None,
) -> dict[int, int]:
    """Send each generation mode's cases of `operation`; the status codes seen, counted."""
    seen: dict[int, int] = {}
    for mode, checks in MODES.items():
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
        _run(strategy, checks, base_url, rewrite, seen)
    return seen


def _run(
    strategy: Any,
    checks: list[Any],
    base_url: str,
    rewrite: Callable[[Any], Any] | None,
    seen: dict[int, int],
) -> None:
    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        if rewrite is not None and isinstance(case.body, dict | list):
            case.body = rewrite(case.body)
        response = case.call(base_url=base_url, headers=AUTH, timeout=15)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks)

    check()


async def _in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(function, *args, **kwargs), FUZZ_TIMEOUT)


class Caller:
    """Explicit requests whose answers are validated against the document."""

    def __init__(self, schema: Any, base_url: str) -> None:
        self.schema = schema
        self.base_url = base_url

    def call(
        self,
        method: str,
        template: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        /,
        **path_parameters: str,
    ) -> tuple[int, Any]:
        """`method template` with `path_parameters` (and `headers` instead of the API key's);
        its answer must conform to the document."""
        operation = _operation(self.schema, method, template)
        kwargs: dict[str, Any] = {"path_parameters": path_parameters}
        if body is not None:
            kwargs["body"] = body
            kwargs["media_type"] = "application/json"
        case = operation.Case(**kwargs)
        response = case.call(
            base_url=self.base_url, headers=AUTH if headers is None else headers, timeout=15
        )
        case.validate_response(response, checks=CONFORMANCE)
        content_type = response.headers.get("content-type", [""])[0]
        if content_type.endswith("json"):
            return response.status_code, response.json()
        return response.status_code, response.text

    def raw(self, template: str, data: bytes, content_type: str) -> tuple[int, Any]:
        """POST `data` as it is (a body schemathesis would not send); the answer must conform."""
        case = _operation(self.schema, "POST", template).Case(
            body={}, media_type="application/json"
        )
        response = requests.post(
            self.base_url + template,
            data=data,
            headers={**AUTH, "Content-Type": content_type},
            timeout=15,
        )
        case.validate_response(response, checks=CONFORMANCE)
        return response.status_code, response.json()

    def wait_status(self, fid: str, fvid: str, wanted: str, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        status = None
        while time.monotonic() < deadline:
            code, body = self.call(
                "GET",
                "/v2/nvcf/functions/{functionId}/versions/{functionVersionId}",
                functionId=fid,
                functionVersionId=fvid,
            )
            assert code == 200, body
            status = body["function"]["status"]
            if status == wanted:
                return
            time.sleep(0.2)
        raise AssertionError(f"{wanted} not reached in {limit} s (last {status})")


def _catalog_spec(caller: Caller, minimum: int) -> dict[str, Any]:
    """A specification of this machine's default GPU and instance type."""
    code, body = caller.call("GET", "/v2/nvcf/clusterGroups")
    assert code == 200, body
    gpu = body["clusterGroups"][0]["gpus"][0]
    instance_type = next(it for it in gpu["instanceTypes"] if it["default"])
    return {
        "gpu": gpu["name"],
        "instanceType": instance_type["name"],
        "minInstances": minimum,
        "maxInstances": max(minimum, 1),
    }


# -- generated bodies -------------------------------------------------------------------------


def _runnable(body: Any) -> Any:
    """A create body naming no image, models or chart runs IMAGE (so 200 is reachable)."""
    if isinstance(body, dict) and all(body.get(k) is None for k in RUNNABLE_KEYS):
        body["containerImage"] = IMAGE
    return body


RUNNABLE_KEYS: Final = ("containerImage", "models", "helmChart")
ANSWERED: Final = {200, 400, 401}
"""401: schemathesis also sends cases with a generated (wrong) bearer."""
CREATE_ANSWERED: Final = ANSWERED | {409}
"""409: a generated `id` or `versionId` (the ids a create may pin) drawn twice."""


async def test_create_function_answers_as_documented(
    platform: PlatformService, schema: Any
) -> None:
    operation = _operation(schema, "POST", "/v2/nvcf/functions")
    seen = await _in_thread(_fuzz, operation, platform.base_url, rewrite=_runnable)
    assert 200 in seen, seen
    assert 400 in seen, seen
    assert set(seen) <= CREATE_ANSWERED, seen


def _version_routes(caller: Caller) -> None:
    code, body = caller.call("POST", "/v2/nvcf/functions", HELLO)
    assert code == 200, body
    ids = {"functionId": body["function"]["id"]}
    versions = "/v2/nvcf/functions/{functionId}/versions"
    operation = _operation(caller.schema, "POST", versions)
    seen = _fuzz(operation, caller.base_url, path_parameters=ids, rewrite=_runnable)
    assert 200 in seen, seen
    assert set(seen) <= CREATE_ANSWERED, seen
    ids["functionVersionId"] = body["function"]["versionId"]
    operation = _operation(caller.schema, "PUT", versions + "/{functionVersionId}")
    seen = _fuzz(operation, caller.base_url, path_parameters=ids)
    assert 400 in seen, seen
    assert set(seen) <= ANSWERED, seen


async def test_version_routes_answer_as_documented(platform: PlatformService, schema: Any) -> None:
    await _in_thread(_version_routes, Caller(schema, platform.base_url))


def _deployment_routes(caller: Caller) -> None:
    path = "/v2/nvcf/deployments/functions/{functionId}/versions/{functionVersionId}"
    spec = _catalog_spec(caller, 0)

    def catalog_gpu(body: Any) -> Any:
        """Half of the generated specifications name the catalogue's GPU (200 is reachable)."""
        items = body.get("deploymentSpecifications") if isinstance(body, dict) else None
        for item in items if isinstance(items, list) else ():
            minimum = item.get("minInstances") if isinstance(item, dict) else None
            if isinstance(minimum, int) and minimum % 2 == 0:
                item.update(gpu=spec["gpu"], instanceType=spec["instanceType"])
                item.pop("backend", None)
        return _no_instances(body)

    fresh = _create(caller)
    seen = _fuzz(
        _operation(caller.schema, "POST", path),
        caller.base_url,
        path_parameters=fresh,
        rewrite=catalog_gpu,
    )
    assert 400 in seen, seen
    assert set(seen) <= ANSWERED, seen

    # A deployment of its own (scale to zero: ACTIVE at once) for PUT and PATCH.
    ids = _create(caller)
    code, body = caller.call("POST", path, {"deploymentSpecifications": [spec]}, **ids)
    assert code == 200, body
    assert body["deployment"]["functionStatus"] == "ACTIVE"
    deployment = body["deployment"]
    operation = _operation(caller.schema, "PUT", path)
    seen = _fuzz(operation, caller.base_url, path_parameters=ids, rewrite=_no_instances)
    assert 400 in seen, seen
    assert set(seen) <= ANSWERED, seen
    patch = "/v2/nvcf/deployments/{deploymentId}/gpu-specifications/{gpuSpecificationId}"
    specification = {
        "deploymentId": deployment["deploymentId"],
        "gpuSpecificationId": deployment["deploymentSpecifications"][0]["gpuSpecificationId"],
    }
    operation = _operation(caller.schema, "PATCH", patch)
    seen = _fuzz(operation, caller.base_url, path_parameters=specification, rewrite=_no_instances)
    assert 400 in seen, seen
    assert set(seen) <= ANSWERED, seen
    for version in (fresh, ids):
        code, body = caller.call("GET", path, **version)
        if code == 200:
            specs = body["deployment"]["deploymentSpecifications"]
            assert all(s["instances"]["ready"] + s["instances"]["starting"] == 0 for s in specs)
            code, body = caller.call("DELETE", path, **version)
            assert code == 200, body


def _create(caller: Caller) -> dict[str, str]:
    code, body = caller.call("POST", "/v2/nvcf/functions", HELLO)
    assert code == 200, body
    return {
        "functionId": body["function"]["id"],
        "functionVersionId": body["function"]["versionId"],
    }


async def test_deployment_routes_answer_as_documented(
    start_platform: StartPlatform, images_file: Path, tmp_path: Path, schema: Any
) -> None:
    """Generated deploy, PUT and PATCH bodies (no instance is ever asked for: min 0)."""
    platform = await start_platform(
        reconcile_interval=0.2, images_path=images_file, instances_dir=tmp_path / "instances"
    )
    await _in_thread(_deployment_routes, Caller(schema, platform.base_url))


# -- a chained lifecycle with a real instance -------------------------------------------------


def _lifecycle(caller: Caller) -> None:
    functions = "/v2/nvcf/functions"
    version = functions + "/{functionId}/versions/{functionVersionId}"
    deployment = "/v2/nvcf/deployments/functions/{functionId}/versions/{functionVersionId}"

    assert caller.call("GET", functions, None, {})[0] == 401
    assert caller.call("GET", functions, None, {"Authorization": "Bearer nope"})[0] == 401
    code, body = caller.raw(functions, b'{"name": "x"', "application/json")
    assert code == 400, body
    assert body["detail"].startswith("Invalid request: malformed JSON"), body
    code, body = caller.raw(functions, b"name=x", "text/plain")
    assert code == 415, body
    assert body["title"] == "Unsupported Media Type", body
    code, body = caller.call(
        "POST", functions, {**HELLO, "tags": ["a"], "secrets": [{"name": "s", "value": "v"}]}
    )
    assert code == 200, body
    ids = {"functionId": body["function"]["id"], "functionVersionId": body["function"]["versionId"]}
    code, body = caller.call("POST", functions + "/{functionId}/versions", HELLO, **ids)
    assert code == 200, body
    second = {"functionId": ids["functionId"], "functionVersionId": body["function"]["versionId"]}
    for route in (functions, functions + "/ids", "/v2/nvcf/supportedGpus"):
        assert caller.call("GET", route)[0] == 200
    assert caller.call("GET", functions + "/{functionId}/versions", **ids)[0] == 200
    assert caller.call("GET", deployment, **ids)[0] == 404

    code, body = caller.call(
        "POST", deployment, {"deploymentSpecifications": [_catalog_spec(caller, 1)]}, **ids
    )
    assert code == 200, body
    assert body["deployment"]["functionStatus"] == "DEPLOYING"
    deployment_id = body["deployment"]["deploymentId"]
    spec_id = body["deployment"]["deploymentSpecifications"][0]["gpuSpecificationId"]
    caller.wait_status(ids["functionId"], ids["functionVersionId"], "ACTIVE")
    code, body = caller.call("GET", version, **ids)
    assert code == 200, body
    assert body["function"]["activeInstances"], body
    code, body = caller.call(
        "GET", "/v2/nvcf/deployments/{deploymentId}", deploymentId=deployment_id
    )
    assert code == 200, body
    assert body["deployment"]["deploymentSpecifications"][0]["instances"]["ready"] == 1
    code, body = caller.call(
        "PATCH",
        "/v2/nvcf/deployments/{deploymentId}/gpu-specifications/{gpuSpecificationId}",
        {"maxInstances": 2},
        deploymentId=deployment_id,
        gpuSpecificationId=spec_id,
    )
    assert code == 200, body
    assert body["gpuSpecification"]["maxInstances"] == 2, body
    code, body = caller.call(
        "PUT",
        deployment,
        {"deploymentSpecifications": [{"minInstances": 1, "maxInstances": 1}]},
        **ids,
    )
    assert code == 200, body
    code, body = caller.call("PUT", version, {"tags": ["b"]}, **ids)
    assert code == 200, body
    assert body["function"]["tags"] == ["b"], body
    code, body = caller.call("PUT", version, {"tags": []}, **ids)
    assert code == 200, body
    assert "tags" not in body["function"], body  # NVIDIA omits empty tags
    assert (
        caller.call(
            "POST", deployment, {"deploymentSpecifications": [_catalog_spec(caller, 0)]}, **ids
        )[0]
        == 400
    )

    code, body = caller.call("DELETE", deployment, **ids)
    assert code == 200, body
    assert body["function"]["status"] == "INACTIVE", body
    for target in (ids, second):
        assert caller.call("DELETE", version, **target)[0] == 204
        assert caller.call("GET", version, **target)[0] == 404
    assert caller.call("GET", deployment, **ids)[0] == 404
    assert (
        caller.call("GET", "/v2/nvcf/deployments/{deploymentId}", deploymentId=deployment_id)[0]
        == 404
    )


async def test_lifecycle_answers_as_documented(
    start_platform: StartPlatform, images_file: Path, tmp_path: Path, schema: Any
) -> None:
    platform = await start_platform(
        reconcile_interval=0.2, images_path=images_file, instances_dir=tmp_path / "instances"
    )
    await _in_thread(_lifecycle, Caller(schema, platform.base_url))
