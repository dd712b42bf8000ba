"""docs/openapi.yaml: a valid OpenAPI document that matches the platform's router and answers.

The structural check compares every documented path and method with the running application's
routes; schemathesis then sends generated requests to the safe GET routes of a live platform.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from nvcf_platform.service import PlatformService

# Both come with the dev extra; without them the contract cannot be checked.
spec_validator = pytest.importorskip("openapi_spec_validator")
spec_readers = pytest.importorskip("openapi_spec_validator.readers")
schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.nats

DOCUMENT: Final = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
METHODS: Final = frozenset({"get", "put", "post", "delete", "head", "patch", "options"})
MAX_EXAMPLES: Final = 8
"""Generated requests per fuzzed operation (bounded: this is a smoke test of the contract)."""


def _document() -> dict[str, Any]:
    document, _ = spec_readers.read_from_filename(str(DOCUMENT))
    return dict(document)


def _shape(path: str) -> str:
    """A route path with its parameter names erased (`{function_id}` and `{functionId}` match)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_document_is_valid_openapi() -> None:
    document = _document()
    spec_validator.validate(document)
    assert document["openapi"].startswith("3.")


async def test_every_route_is_documented_and_every_documented_route_exists(
    platform: PlatformService,
) -> None:
    routed = {
        (route.method.lower(), _shape(route.resource.canonical))
        for route in platform.app.router.routes()
        if route.resource is not None
    }
    documented = {
        (method, _shape(path))
        for path, item in _document()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routed - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - routed == set(), "documented routes the platform does not serve"


def _safe_operations(schema: Any) -> list[Any]:
    """GET operations callers use (internal attach and object routes are left out)."""
    document = _document()
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        internal = document["paths"][operation.path].get("x-internal", False)
        if operation.method.upper() == "GET" and not internal:
            operations.append(operation)
    return operations


def _fuzz(operations: list[Any], base_url: str, api_key: str) -> list[str]:
    """Run each operation's generated cases against the live server; returns what was covered."""
    covered = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(
                base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=15
            )
            assert response.status_code < 500, (case.formatted_path, response.text)
            case.validate_response(response)

        check()
        covered.append(f"{operation.method.upper()} {operation.path}")
    return covered


async def test_safe_get_routes_answer_as_documented(platform: PlatformService) -> None:
    schema = schemathesis.openapi.from_path(DOCUMENT)
    operations = _safe_operations(schema)
    covered = await asyncio.wait_for(
        asyncio.to_thread(_fuzz, operations, platform.base_url, platform.settings.api_keys[0]),
        timeout=100,
    )
    assert "GET /v2/nvcf/functions" in covered
    assert "GET /v2/nvcf/queues/{requestId}/position" in covered
    assert "GET /health" in covered
    assert "GET /v2/nvcf/clusterGroups" in covered
    assert "GET /v2/nvcf/deployments/{deploymentId}" in covered
    assert "GET /metrics" in covered
    assert len(covered) == 17
