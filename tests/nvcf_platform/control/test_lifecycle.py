"""The function lifecycle through the API with real instances: register, deploy (DEPLOYING ->
ACTIVE), invoke, undeploy (INACTIVE, invocations refused), delete; state kept across restarts."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nvcf_platform.service import PlatformService

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parents[3]
API_KEY = "nvapi-test-key"  # the key of conftest.platform_settings
IMAGE = "nvcr.io/acme/hello:1.0"
HELLO = {
    "name": "hello",
    "inferenceUrl": "/",
    "inferencePort": 8000,
    "healthUri": "/v2/health/ready",
    "containerImage": IMAGE,
}
CPU_SPEC = {"gpu": "CPU", "instanceType": "LOCAL.CPU", "minInstances": 1, "maxInstances": 2}


@pytest.fixture
def images_file(tmp_path: Path) -> Path:
    path = tmp_path / "images.toml"
    path.write_text(
        f'[[images]]\nimage = "{IMAGE}"\n'
        f'command = ["{sys.executable}", "{ROOT / "examples/byoc/hello/server.py"}",'
        ' "--port", "{port}"]\n'
    )
    return path


class Api:
    """The control-plane and invocation routes of one platform, as a caller uses them."""

    def __init__(self, platform: PlatformService, session: aiohttp.ClientSession) -> None:
        self.base = platform.base_url
        self.session = session
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers
        ) as response:
            data = await response.read()
            return response.status, (await response.json(content_type=None)) if data else None

    async def wait_status(self, fid: str, fvid: str, wanted: str, limit: float = 60.0) -> list[str]:
        """Poll the version until `wanted`; the statuses seen, in order (bounded)."""
        seen: list[str] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status, body = await self.call("GET", f"/v2/nvcf/functions/{fid}/versions/{fvid}")
            assert status == 200, body
            current = body["function"]["status"]
            if not seen or seen[-1] != current:
                seen.append(current)
            if current == wanted:
                return seen
            await asyncio.sleep(0.2)
        raise AssertionError(f"status {wanted} not reached within {limit} s; saw {seen}")

    async def pexec(self, fid: str, body: Any, fvid: str | None = None) -> tuple[int, Any]:
        path = f"/v2/nvcf/pexec/functions/{fid}" + (f"/versions/{fvid}" if fvid else "")
        return await self.call("POST", path, body)


@pytest.fixture
async def api_factory(
    start_platform: Callable[..., Awaitable[PlatformService]],
) -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    async with aiohttp.ClientSession() as session:

        async def make(**settings: Any) -> Api:
            platform = await start_platform(reconcile_interval=0.2, **settings)
            return Api(platform, session)

        yield make


async def test_register_deploy_invoke_undeploy_delete(
    api_factory: Callable[..., Awaitable[Api]], images_file: Path, tmp_path: Path
) -> None:
    api = await api_factory(images_path=images_file, instances_dir=tmp_path / "instances")
    status, body = await api.call("POST", "/v2/nvcf/functions", HELLO)
    assert status == 200, body
    function = body["function"]
    fid, fvid = function["id"], function["versionId"]
    assert function["status"] == "INACTIVE"
    assert function["description"] == "hello"
    assert function["health"]["uri"] == "/v2/health/ready"

    status, body = await api.pexec(fid, {"x": 1})
    assert status == 404, body  # not deployed

    path = f"/v2/nvcf/deployments/functions/{fid}/versions/{fvid}"
    status, body = await api.call("POST", path, {"deploymentSpecifications": [CPU_SPEC]})
    assert status == 200, body
    deployment = body["deployment"]
    assert deployment["functionStatus"] == "DEPLOYING"
    assert deployment["deploymentSpecifications"][0]["gpuSpecificationId"]
    seen = await api.wait_status(fid, fvid, "ACTIVE")
    assert seen[-1] == "ACTIVE"

    status, body = await api.pexec(fid, {"hello": "world"})
    assert status == 200, body
    assert body["echo"] == {"hello": "world"}

    status, body = await api.call("GET", path)
    assert status == 200
    counts = body["deployment"]["deploymentSpecifications"][0]["instances"]
    assert counts == {"desired": 1, "ready": 1, "starting": 0}

    status, body = await api.call("DELETE", path)
    assert status == 200, body
    assert body["function"]["status"] == "INACTIVE"
    status, body = await api.pexec(fid, {"x": 1})
    assert status == 404, body

    status, body = await api.call("DELETE", f"/v2/nvcf/functions/{fid}/versions/{fvid}")
    assert status == 204, body
    status, body = await api.call("GET", f"/v2/nvcf/functions/{fid}/versions/{fvid}")
    assert status == 404
