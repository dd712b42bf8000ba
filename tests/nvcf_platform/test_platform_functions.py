"""Function-version status from instance readiness, and NVCF's function listing routes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from nvcf_platform.control.functions import FunctionStatus, next_status
from nvcf_platform.control.registry import FunctionVersion, Registry, canonical_uuid
from nvcf_platform.errors import ConfigError
from nvcf_platform.service import PlatformService
from nvcf_platform.settings import PlatformSettings
from nvcf_sidecar.protocol import WorkerConnect, WorkerStub

FUNCTION_ID = "5b0c6a1e-7d2f-4c3b-8a9e-1f2e3d4c5b6a"
PROBED_VERSION = "5b0c6a1e-0000-4000-8000-000000000001"
IDLE_VERSION = "5b0c6a1e-0000-4000-8000-000000000002"
OTHER_FUNCTION_ID = "7c1d7b2f-8e3a-4d4c-9baf-2a3f4e5d6c7b"
OTHER_VERSION = "7c1d7b2f-0000-4000-8000-000000000003"
API_KEY = "nvapi-functions"
WAIT = 10.0

ACTIVE, DEPLOYING, DEGRADING, DEGRADED, ERROR, INACTIVE = (
    FunctionStatus.ACTIVE,
    FunctionStatus.DEPLOYING,
    FunctionStatus.DEGRADING,
    FunctionStatus.DEGRADED,
    FunctionStatus.ERROR,
    FunctionStatus.INACTIVE,
)

pytestmark = pytest.mark.nats


# --- pure logic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "ready", "minimum", "elapsed", "expected"),
    [
        (DEPLOYING, 0, 2, 0.0, DEPLOYING),
        (DEPLOYING, 1, 2, 0.0, DEPLOYING),
        (DEPLOYING, 2, 2, 0.0, ACTIVE),
        (DEPLOYING, 1, 2, 10.0, ERROR),
        (ERROR, 0, 2, 10.0, ERROR),
        (ERROR, 2, 2, 10.0, ACTIVE),
        (ACTIVE, 3, 2, 10.0, ACTIVE),
        (ACTIVE, 1, 2, 10.0, DEGRADING),
        (ACTIVE, 0, 2, 10.0, DEGRADED),
        (DEGRADING, 0, 2, 10.0, DEGRADED),
        (DEGRADED, 1, 2, 10.0, DEGRADING),
        (DEGRADED, 2, 2, 10.0, ACTIVE),
        (DEPLOYING, 0, 0, 0.0, ACTIVE),  # zero-scaled: ACTIVE without instances
        (ACTIVE, 0, 0, 0.0, ACTIVE),
    ],
)
def test_next_status_follows_nvcf_life_cycle(
    current: FunctionStatus, ready: int, minimum: int, elapsed: float, expected: FunctionStatus
) -> None:
    status = next_status(
        current, ready=ready, min_instances=minimum, deploying_for=elapsed, deploy_timeout=5.0
    )
    assert status is expected


def test_registry_reads_instance_health_urls() -> None:
    registry = Registry.from_mapping(_registry_document(["http://127.0.0.1:1/v1/health/ready"]))
    version = registry.version(FUNCTION_ID, PROBED_VERSION)
    assert version.instance_health_urls == ("http://127.0.0.1:1/v1/health/ready",)
    assert registry.version(FUNCTION_ID, IDLE_VERSION).instance_health_urls == ()


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ("http://127.0.0.1:1/", r"instance_health_urls: must be an array"),
        (["ftp://127.0.0.1/x"], r"instance_health_urls\[0\]: 'ftp://127.0.0.1/x' is not"),
        (["http://127.0.0.1/", "http:///nohost"], r"instance_health_urls\[1\]"),
        (["http://127.0.0.1:99999/"], r"instance_health_urls\[0\]"),
        ([5], r"instance_health_urls\[0\]: 5 is not"),
    ],
)
def test_registry_rejects_bad_instance_health_urls(urls: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Registry.from_mapping(_registry_document(urls))


_CANONICAL_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.mark.parametrize(
    "text",
    [
        _CANONICAL_ID,
        _CANONICAL_ID.upper(),
        _CANONICAL_ID.replace("-", ""),
        "{" + _CANONICAL_ID + "}",
        "urn:uuid:" + _CANONICAL_ID,
    ],
)
def test_every_uuid_form_the_service_takes_becomes_the_canonical_one(text: str) -> None:
    assert canonical_uuid(text) == _CANONICAL_ID


@pytest.mark.parametrize(
    "text",
    ["", "hello", _CANONICAL_ID[:-1], _CANONICAL_ID + "0", "0a1b2c3d4e5f-4a6b-8c7d-9e0f1a2b3c4d"],
)
def test_anything_else_is_not_a_uuid(text: str) -> None:
    assert canonical_uuid(text) is None


def test_probe_settings_come_from_the_environment() -> None:
    settings = PlatformSettings.from_env(
        {"NVCF_PLATFORM_HEALTH_PROBE_INTERVAL": "0.5", "NVCF_PLATFORM_DEPLOY_TIMEOUT": "30"}
    )
    assert (settings.health_probe_interval, settings.deploy_timeout) == (0.5, 30.0)
    assert (PlatformSettings().health_probe_interval, PlatformSettings().deploy_timeout) == (
        2.0,
        900.0,
    )
    with pytest.raises(ConfigError, match="deploy_timeout"):
        PlatformSettings.from_env({"NVCF_PLATFORM_DEPLOY_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="NVCF_PLATFORM_HEALTH_PROBE_INTERVAL"):
        PlatformSettings.from_env({"NVCF_PLATFORM_HEALTH_PROBE_INTERVAL": "soon"})


# --- fixtures ------------------------------------------------------------------------------------


class Readiness:
    """Fake sidecar readiness endpoints (`/ready/<n>`) whose answers the test flips."""

    def __init__(self) -> None:
        self.ready: dict[int, bool] = {}
        self.base_url = ""

    def url(self, number: int) -> str:
        self.ready.setdefault(number, False)
        return f"{self.base_url}/ready/{number}"

    def set(self, **states: bool) -> None:
        for name, ready in states.items():
            self.ready[int(name.removeprefix("i"))] = ready

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(
            status=200 if self.ready.get(int(request.match_info["number"])) else 503
        )


@pytest.fixture
async def readiness() -> AsyncIterator[Readiness]:
    server = Readiness()
    app = web.Application()
    app.router.add_get("/ready/{number}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base_url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def start(
    platform_settings: PlatformSettings,
) -> AsyncIterator[Callable[..., Any]]:
    """`await start(urls, min_instances=, **settings)` -> a platform with the test registry."""
    stack = contextlib.AsyncExitStack()

    async def run(urls: list[str], *, min_instances: int = 1, **overrides: Any) -> PlatformService:
        settings = dataclasses.replace(
            platform_settings,
            api_keys=(API_KEY,),
            health_probe_interval=overrides.pop("health_probe_interval", 0.05),
            **overrides,
        )
        registry = Registry.from_mapping(_registry_document(urls, min_instances))
        return await stack.enter_async_context(PlatformService(settings, registry))

    async with stack:
        yield run


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _registry_document(urls: Any, min_instances: int = 1) -> dict[str, Any]:
    return {
        "functions": [
            {
                "id": FUNCTION_ID,
                "name": "probed",
                "default_invocation_path": "/infer",
                "versions": [
                    {
                        "id": PROBED_VERSION,
                        "min_instances": min_instances,
                        "instance_health_urls": urls,
                    },
                    {"id": IDLE_VERSION},
                ],
            },
            {"id": OTHER_FUNCTION_ID, "name": "other", "versions": [{"id": OTHER_VERSION}]},
        ]
    }


def _version(platform: PlatformService, version_id: str = PROBED_VERSION) -> FunctionVersion:
    return platform.registry.version(FUNCTION_ID, version_id)


async def _wait_status(platform: PlatformService, expected: FunctionStatus) -> None:
    states = platform.function_states
    async with asyncio.timeout(WAIT):
        while states.status(_version(platform)) is not expected:
            await states.wait_rounds()


async def _rounds(platform: PlatformService) -> None:
    """Wait for two probe rounds: the second began after the caller's change."""
    async with asyncio.timeout(WAIT):
        await platform.function_states.wait_rounds(2)


async def _get(
    session: aiohttp.ClientSession, platform: PlatformService, path: str, key: str | None = API_KEY
) -> tuple[int, str, Any]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with session.get(platform.base_url + path, headers=headers) as response:
        body = await response.read()
        kind = response.content_type
        return (
            response.status,
            kind,
            (await response.json(content_type=None) if "json" in kind else body),
        )


async def _listed_status(session: aiohttp.ClientSession, platform: PlatformService) -> str:
    status, _, body = await _get(session, platform, f"/v2/nvcf/functions/{FUNCTION_ID}/versions")
    assert status == 200
    return str(next(f["status"] for f in body["functions"] if f["versionId"] == PROBED_VERSION))


# --- status from readiness -----------------------------------------------------------------------


async def test_version_goes_active_degrading_degraded_and_back_with_its_instances(
    start: Any, readiness: Readiness, session: aiohttp.ClientSession
) -> None:
    platform = await start([readiness.url(0), readiness.url(1)], min_instances=2)
    await _rounds(platform)
    assert await _listed_status(session, platform) == "DEPLOYING"
    readiness.set(i0=True)
    await _rounds(platform)
    assert await _listed_status(session, platform) == "DEPLOYING"  # 1 of 2 is not enough

    readiness.set(i1=True)
    await _wait_status(platform, ACTIVE)
    assert await _listed_status(session, platform) == "ACTIVE"
    assert platform.function_states.ready_instances(_version(platform)) == 2

    readiness.set(i0=False)
    await _wait_status(platform, DEGRADING)
    assert await _listed_status(session, platform) == "DEGRADING"
    readiness.set(i1=False)
    await _wait_status(platform, DEGRADED)
    assert await _listed_status(session, platform) == "DEGRADED"
    readiness.set(i1=True)
    await _wait_status(platform, DEGRADING)
    readiness.set(i0=True)
    await _wait_status(platform, ACTIVE)
    assert await _listed_status(session, platform) == "ACTIVE"


async def test_version_never_ready_is_error_after_the_deploy_timeout(
    start: Any, readiness: Readiness, session: aiohttp.ClientSession
) -> None:
    with socket.socket() as sock:  # a port nothing listens on: an unreachable instance
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/health/ready"
    platform = await start([dead, readiness.url(0)], min_instances=1, deploy_timeout=0.3)
    await _wait_status(platform, ERROR)
    assert await _listed_status(session, platform) == "ERROR"
    readiness.set(i0=True)  # a late instance still brings the version up
    await _wait_status(platform, ACTIVE)
    assert platform.function_states.ready_instances(_version(platform)) == 1


async def test_version_without_health_urls_is_inactive_until_a_worker_connects(
    start: Any, readiness: Readiness, session: aiohttp.ClientSession
) -> None:
    platform = await start([readiness.url(0)])
    idle = _version(platform, IDLE_VERSION)
    assert platform.function_states.status(idle) is INACTIVE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.grpc_port}") as channel:
        request = WorkerConnect(
            instanceId="worker-7", functionId=FUNCTION_ID, functionVersionId=IDLE_VERSION
        )
        await WorkerStub(channel).ConnectOnce(
            request, metadata=(("authorization", "Bearer t"),), timeout=10
        )
    status, _, body = await _get(
        session, platform, f"/v2/nvcf/functions/{FUNCTION_ID}/versions/{IDLE_VERSION}"
    )
    assert status == 200
    function = body["function"]
    assert function["status"] == "ACTIVE"
    [instance] = function["activeInstances"]
    assert instance["instanceId"] == "worker-7"
    assert instance["functionVersionId"] == IDLE_VERSION
    assert instance["instanceStatus"] == "ACTIVE"
    assert instance["location"] == platform.settings.region
    assert abs(_unix(instance["instanceCreatedAt"]) - time.time()) < 60


def _unix(instant: str) -> float:
    return datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()


# --- routes --------------------------------------------------------------------------------------


async def test_list_functions_has_one_entry_per_version_in_nvcf_shape(
    start: Any, readiness: Readiness, session: aiohttp.ClientSession
) -> None:
    platform = await start([readiness.url(0)], min_instances=1)
    status, kind, body = await _get(session, platform, "/v2/nvcf/functions")
    assert (status, kind) == (200, "application/json")
    entries = body["functions"]
    assert [(f["id"], f["versionId"]) for f in entries] == [
        (FUNCTION_ID, PROBED_VERSION),
        (FUNCTION_ID, IDLE_VERSION),
        (OTHER_FUNCTION_ID, OTHER_VERSION),
    ]
    probed, idle, other = entries
    assert probed["name"] == "probed"
    assert probed["ncaId"] == platform.settings.nca_id
    assert probed["inferenceUrl"] == "/infer"
    assert probed["functionType"] == "DEFAULT"
    assert probed["minInstances"] == 1
    assert probed["status"] in {"DEPLOYING", "ERROR"}  # never ready here
    assert probed["createdAt"].endswith("Z")
    assert abs(_unix(probed["createdAt"]) - time.time()) < 60
    assert "activeInstances" not in probed
    assert (idle["status"], other["status"]) == ("INACTIVE", "INACTIVE")
    assert other["inferenceUrl"] == "/"

    status, _, body = await _get(
        session, platform, f"/v2/nvcf/functions/{OTHER_FUNCTION_ID}/versions"
    )
    assert status == 200
    assert [f["versionId"] for f in body["functions"]] == [OTHER_VERSION]


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (
            f"/v2/nvcf/functions/{OTHER_VERSION}/versions",
            f"Function id '{OTHER_VERSION}': Not found in account 'local-nca'",
        ),
        ("/v2/nvcf/functions/not-a-uuid/versions", "Function id 'not-a-uuid': Not found"),
        (
            f"/v2/nvcf/functions/{OTHER_FUNCTION_ID}/versions/{PROBED_VERSION}",
            f"Function id '{OTHER_FUNCTION_ID}', version '{PROBED_VERSION}': Not found",
        ),
        (
            f"/v2/nvcf/functions/{OTHER_VERSION}/versions/{OTHER_VERSION}",
            f"Function id '{OTHER_VERSION}': Not found",
        ),
    ],
)
async def test_unknown_function_or_version_is_a_404_problem(
    start: Any, readiness: Readiness, session: aiohttp.ClientSession, path: str, detail: str
) -> None:
    platform = await start([readiness.url(0)])
    status, kind, body = await _get(session, platform, path)
    assert (status, kind) == (404, "application/problem+json")
    assert body["status"] == 404
    assert body["detail"].startswith(detail)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/nvcf/functions",
        f"/v2/nvcf/functions/{FUNCTION_ID}/versions",
        f"/v2/nvcf/functions/{FUNCTION_ID}/versions/{PROBED_VERSION}",
    ],
)
async def test_functions_routes_need_an_accepted_bearer(
    start: Any, readiness: Readiness, session: aiohttp.ClientSession, path: str
) -> None:
    platform = await start([readiness.url(0)])
    status, kind, body = await _get(session, platform, path, key="wrong-key")
    assert (status, kind, body["detail"]) == (
        401,
        "application/problem+json",
        "client is unauthorized",
    )
    status, _, text = await _get(session, platform, path, key=None)
    assert (status, text) == (401, b"Header of type `authorization` was missing")
