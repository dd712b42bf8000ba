"""The gateway form's routing rules, and its place in the application (before the path router).

The end-to-end behaviour (any method and path reaching the container, 202s, SSE, errors) is in
`tests/e2e/test_e2e_gateway.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from nvcf_platform.invocation.app import build_application
from nvcf_platform.invocation.drain import CallerDrain
from nvcf_platform.invocation.gateway import (
    FunctionRouting,
    InvocationGateway,
    function_routing,
    routing_from_headers,
    routing_from_host,
)
from nvcf_platform.invocation.nats_link import NatsLink

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


class _Link:
    """What the application reads of the NATS link: whether it is up."""

    up = True


class _HeldGateway(InvocationGateway):
    """A gateway whose answers wait for `release`, recording what it was asked to serve."""

    def __init__(self) -> None:
        self.served: list[FunctionRouting] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def serve(self, request: web.Request, routing: FunctionRouting) -> web.StreamResponse:
        self.served.append(routing)
        self.entered.set()
        async with asyncio.timeout(10):
            await self.release.wait()
        return web.Response(text=f"served {request.method} {request.raw_path}")


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Any]]:
    link, drain, gateway = _Link(), CallerDrain(), _HeldGateway()
    app = build_application([], [], cast(NatsLink, link), drain, gateway=gateway)
    async with TestClient(TestServer(app)) as client:
        yield client, (link, drain, gateway)


async def test_the_gateway_answers_before_the_path_router_and_needs_authorization(
    served: tuple[TestClient[web.Request, web.Application], Any],
) -> None:
    client, (_link, _drain, gateway) = served
    gateway.release.set()
    async with client.get("/health", headers={"function-id": FID}) as response:
        assert response.status == 401
        assert await response.text() == "Header of type `authorization` was missing"
    headers = {"function-id": FID, "Authorization": "Bearer k"}
    async with client.request("OPTIONS", "/health?x=1", headers=headers) as response:
        assert (response.status, await response.text()) == (200, "served OPTIONS /health?x=1")
    async with client.get("/health") as response:  # no routing: the path router's /health
        assert (response.status, await response.json()) == (200, {"status": "OK"})
    assert gateway.served == [FunctionRouting(FID)]


async def test_gateway_requests_are_refused_while_nats_is_down(
    served: tuple[TestClient[web.Request, web.Application], Any],
) -> None:
    client, (link, _drain, gateway) = served
    link.up = False
    headers = {"function-id": FID, "Authorization": "Bearer k"}
    async with client.get("/x", headers=headers) as response:
        assert response.status == 503
        assert response.headers["Retry-After"]
    assert gateway.served == []


async def test_gateway_requests_are_counted_and_refused_by_the_drain(
    served: tuple[TestClient[web.Request, web.Application], Any],
) -> None:
    client, (_link, drain, gateway) = served
    headers = {"function-id": FID, "Authorization": "Bearer k"}
    first = asyncio.create_task(client.get("/slow", headers=headers))
    async with asyncio.timeout(10):
        await gateway.entered.wait()
    assert drain.in_progress == 1
    draining = asyncio.create_task(drain.drain(10))
    await asyncio.sleep(0)
    async with client.get("/late", headers=headers) as late:
        assert late.status == 503
    gateway.release.set()
    async with asyncio.timeout(10):
        response = await first
        assert response.status == 200
        response.release()
        assert await draining is True
