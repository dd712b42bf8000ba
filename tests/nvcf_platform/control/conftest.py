"""Fixtures of the control-plane tests: a platform with a local image catalog, and `Api`, the
control-plane and invocation routes as a caller uses them (bounded waits on statuses)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.ports import free_port
from nvcf_platform.service import PlatformService

ROOT = Path(__file__).resolve().parents[3]
API_KEY = "nvapi-test-key"  # the key of ../conftest.platform_settings
HELLO_IMAGE = "nvcr.io/acme/hello:1.0"
ENV_IMAGE = "nvcr.io/acme/env:1.0"
FIXED_IMAGE = "nvcr.io/acme/fixed:1.0"
"""The hello example always on one port (its catalog entry's `port`)."""
"""tests/nvcf_platform/backends/env_server.py: reports its env, sleeps on request, can refuse
to start while a file exists (TEST_EXIT_IF_EXISTS)."""
CPU_SPEC = {"gpu": "CPU", "instanceType": "LOCAL.CPU", "minInstances": 1, "maxInstances": 2}


def function_body(image: str = HELLO_IMAGE, **fields: Any) -> dict[str, Any]:
    return {
        "name": "hello",
        "inferenceUrl": "/",
        "inferencePort": 8000,
        "healthUri": "/v2/health/ready",
        "containerImage": image,
        **fields,
    }


@pytest.fixture
def images_file(tmp_path: Path) -> Path:
    python = sys.executable
    hello = ROOT / "examples/byoc/hello/server.py"
    env_server = ROOT / "tests/nvcf_platform/backends/env_server.py"
    path = tmp_path / "images.toml"
    fixed = free_port()
    path.write_text(
        f'[[images]]\nimage = "{HELLO_IMAGE}"\n'
        f'command = ["{python}", "{hello}", "--port", "{{port}}"]\n'
        f'[[images]]\nimage = "{ENV_IMAGE}"\n'
        f'command = ["{python}", "{env_server}", "--port", "{{port}}"]\n'
        f'[[images]]\nimage = "{FIXED_IMAGE}"\n'
        f'command = ["{python}", "{hello}", "--port", "{fixed}"]\nport = {fixed}\n'
    )
    return path


class Api:
    """One platform's control-plane and invocation routes."""

    def __init__(self, platform: PlatformService, session: aiohttp.ClientSession) -> None:
        self.platform = platform
        self.base = platform.base_url
        self.session = session
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers
        ) as response:
            data = await response.read()
            return response.status, (await response.json(content_type=None)) if data else None

    async def create(self, body: dict[str, Any], function_id: str | None = None) -> tuple[str, str]:
        path = "/v2/nvcf/functions" + (f"/{function_id}/versions" if function_id else "")
        status, answer = await self.call("POST", path, body)
        assert status == 200, answer
        return answer["function"]["id"], answer["function"]["versionId"]

    async def deploy(self, fid: str, fvid: str, *specs: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.call(
            "POST", deployment_path(fid, fvid), {"deploymentSpecifications": list(specs)}
        )
        assert status == 200, answer
        return dict(answer["deployment"])

    async def status(self, fid: str, fvid: str) -> str:
        status, answer = await self.call("GET", f"/v2/nvcf/functions/{fid}/versions/{fvid}")
        assert status == 200, answer
        return str(answer["function"]["status"])

    async def wait_status(self, fid: str, fvid: str, wanted: str, limit: float = 60.0) -> list[str]:
        """Poll the version until `wanted`; the statuses seen, in order (bounded)."""
        seen: list[str] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            current = await self.status(fid, fvid)
            if not seen or seen[-1] != current:
                seen.append(current)
            if current == wanted:
                return seen
            await asyncio.sleep(0.1)
        raise AssertionError(f"status {wanted} not reached within {limit} s; saw {seen}")

    deployment_path = staticmethod(lambda fid, fvid: deployment_path(fid, fvid))

    async def wait_counts(
        self, fid: str, fvid: str, wanted: dict[str, int], limit: float = 60.0
    ) -> None:
        """Poll the deployment until its (only) specification's instance counts are `wanted`."""
        deadline = time.monotonic() + limit
        counts = None
        while time.monotonic() < deadline:
            status, answer = await self.call("GET", deployment_path(fid, fvid))
            assert status == 200, answer
            counts = answer["deployment"]["deploymentSpecifications"][0]["instances"]
            if counts == wanted:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"instance counts {wanted} not reached within {limit} s: {counts}")

    async def wait_deployment_gone(self, fid: str, fvid: str, limit: float = 30.0) -> None:
        """Poll until an undeployed version's deployment is removed (bounded)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status, _ = await self.call("GET", deployment_path(fid, fvid))
            if status == 404:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the deployment of {fvid} was not removed within {limit} s")

    async def pexec(self, fid: str, body: Any, fvid: str | None = None) -> tuple[int, Any]:
        path = f"/v2/nvcf/pexec/functions/{fid}" + (f"/versions/{fvid}" if fvid else "")
        return await self.call("POST", path, body)


def deployment_path(fid: str, fvid: str) -> str:
    return f"/v2/nvcf/deployments/functions/{fid}/versions/{fvid}"


@pytest.fixture(name="function_body")
def function_body_fixture() -> Callable[..., dict[str, Any]]:
    return function_body


@pytest.fixture
def env_image() -> str:
    return ENV_IMAGE


@pytest.fixture
def cpu_spec() -> dict[str, Any]:
    return dict(CPU_SPEC)


@pytest.fixture
async def api_factory(
    start_platform: Callable[..., Awaitable[PlatformService]], images_file: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """`await api_factory(**settings)`: a platform with the test image catalog, fast reconcile."""
    async with aiohttp.ClientSession() as session:

        async def make(**settings: Any) -> Api:
            settings.setdefault("images_path", images_file)
            settings.setdefault("instances_dir", tmp_path / "instances")
            settings.setdefault("reconcile_interval", 0.1)
            platform = await start_platform(**settings)
            return Api(platform, session)

        yield make


@pytest.fixture
async def api(api_factory: Callable[..., Awaitable[Api]]) -> Api:
    return await api_factory()
