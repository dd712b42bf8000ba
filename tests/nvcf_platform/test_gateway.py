"""The gateway form's routing rules: which function (and version) a header or a Host names.

The end-to-end behaviour (any method and path reaching the container, 202s, SSE, errors) is in
`tests/e2e/test_e2e_gateway.py`.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from nvcf_platform.invocation.gateway import (
    FunctionRouting,
    function_routing,
    routing_from_headers,
    routing_from_host,
)

FID = "0f8e6b62-5a6f-4c0e-9d0a-1b2c3d4e5f60"
FVID = "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (f"{FID}.invocation.example.com", FunctionRouting(FID)),
        (f"{FID}", FunctionRouting(FID)),
        (f"{FID}:8080", FunctionRouting(FID)),
        (f"{FID.upper()}.invocation.local", FunctionRouting(FID)),
        (f"{FVID}.{FID}.invocation.local", FunctionRouting(FID, FVID)),
        (f"{FVID}.{FID}", FunctionRouting(FID, FVID)),
        (f"{FID}.not-a-uuid.invocation.local", FunctionRouting(FID)),
        ("invocation.local", None),
        ("127.0.0.1:8080", None),
        (f"x{FID}.local", None),
        (f"not-a-uuid.{FID}.local", None),
        (FID.replace("-", ""), None),  # only the hyphenated form counts in a host name
    ],
)
def test_a_host_starting_with_a_uuid_names_a_function_version_first(
    host: str, expected: FunctionRouting | None
) -> None:
    assert routing_from_host(host) == expected


@pytest.mark.parametrize(
    ("function_id", "version_id", "expected"),
    [
        (FID, None, FunctionRouting(FID)),
        (FID, FVID, FunctionRouting(FID, FVID)),
        (FID.replace("-", ""), f"{{{FVID}}}", FunctionRouting(FID, FVID)),
        (f"urn:uuid:{FID}", "not-a-uuid", FunctionRouting(FID)),
        ("not-a-uuid", FVID, None),
        (None, FVID, None),
    ],
)
def test_function_id_headers_take_any_uuid_form_and_ignore_a_bad_version(
    function_id: str | None, version_id: str | None, expected: FunctionRouting | None
) -> None:
    assert routing_from_headers(function_id, version_id) == expected


def test_the_function_id_header_beats_the_host() -> None:
    other = "22222222-3333-4444-8555-666666666666"
    request = make_mocked_request(
        "GET", "/x?y=1", headers={"Host": f"{other}.invocation.local", "function-id": FID}
    )
    assert function_routing(request) == FunctionRouting(FID)


def test_a_bad_function_id_header_leaves_the_host_to_route() -> None:
    request = make_mocked_request(
        "GET", "/x", headers={"Host": f"{FVID}.{FID}.local", "function-id": "nope"}
    )
    assert function_routing(request) == FunctionRouting(FID, FVID)


def test_without_a_routing_header_or_host_the_path_router_serves() -> None:
    request = make_mocked_request("GET", "/health", headers={"Host": "127.0.0.1:8080"})
    assert function_routing(request) is None
    assert function_routing(make_mocked_request("GET", "/health", headers={})) is None
