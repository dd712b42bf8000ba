"""A fake NVCF control-plane API on loopback for the `nvcf-sidecar function` client tests.

It answers the reference's shapes (functions, deployments, cluster groups) from memory, records
every call, and walks a deployed version through a scripted list of statuses, one per GET.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nvcf_sidecar.cli import main

CLUSTER_GROUPS: list[dict[str, Any]] = [
    {
        "id": "3c0e7e2a-1111-4a9b-8c1d-000000000001",
        "name": "local",
        "gpus": [
            {
                "name": "L40S",
                "instanceTypes": [
                    {"name": "LOCAL.GPU.L40S_2x", "description": "two", "default": False},
                    {"name": "LOCAL.GPU.L40S_1x", "description": "one", "default": True},
                ],
            },
            {
                "name": "CPU",
                "instanceTypes": [{"name": "LOCAL.CPU", "description": "cpu", "default": True}],
            },
        ],
    }
]
_NAME = re.compile(r"^[a-z0-9A-Z][a-z0-9A-Z\-_]*$")


def _problem(status: int, detail: str) -> web.Response:
    title = {400: "Bad Request", 404: "Not Found"}[status]
    return web.json_response(
        {"type": f"urn:test:{title.lower()}", "title": title, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


@dataclass
class FakeApi:
    """The fake API's memory: what was called, and what it answers next."""

    url: str = ""
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    status_script: list[str] = field(default_factory=lambda: ["DEPLOYING", "ACTIVE"])
    """Statuses a deployed version shows, one per GET of it; the last one stays."""
    health_info: list[dict[str, Any]] = field(default_factory=list)
    instances: dict[str, int] | None = None

    def add_version(self, name: str = "echo", function_id: str | None = None) -> dict[str, Any]:
        function = {
            "id": function_id or str(uuid.uuid4()),
            "versionId": str(uuid.uuid4()),
            "name": name,
            "status": "INACTIVE",
            "inferenceUrl": "/echo",
            "containerImage": "echo:1",
            "apiBodyFormat": "CUSTOM",
            "functionType": "DEFAULT",
            "description": name,
            "createdAt": "2026-01-01T00:00:00Z",
        }
        self.versions[function["versionId"]] = function
        return function

    def add_deployment(self, function: dict[str, Any], specs: list[dict[str, Any]]) -> None:
        function["status"] = "ACTIVE"
        self.status_script = ["ACTIVE"]
        self.deployments[function["versionId"]] = {
            "functionId": function["id"],
            "functionVersionId": function["versionId"],
            "deploymentId": str(uuid.uuid4()),
            "functionStatus": "ACTIVE",
            "deploymentSpecifications": [
                {"gpuSpecificationId": str(uuid.uuid4()), "maxRequestConcurrency": 1, **spec}
                for spec in specs
            ],
        }

    def calls_of(self, method: str, prefix: str = "") -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] == method and c[1].startswith(prefix)]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        base = "/v2/nvcf"
        version = base + "/functions/{fid}/versions/{fvid}"
        deployment = base + "/deployments/functions/{fid}/versions/{fvid}"
        app.router.add_post(base + "/functions", self._create)
        app.router.add_post(base + "/functions/{fid}/versions", self._create)
        app.router.add_get(base + "/functions", self._list)
        app.router.add_get(base + "/functions/{fid}/versions", self._list)
        app.router.add_get(version, self._get)
        app.router.add_put(version, self._update)
        app.router.add_delete(version, self._delete)
        app.router.add_post(deployment, self._deploy)
        app.router.add_get(deployment, self._get_deployment)
        app.router.add_delete(deployment, self._undeploy)
        app.router.add_patch(base + "/deployments/{did}/gpu-specifications/{sid}", self._patch)
        app.router.add_get(base + "/clusterGroups", self._cluster_groups)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.calls.append((request.method, request.path_qs, body))
        if request.headers.get("Authorization", "") != "Bearer test-token":
            return web.json_response({"title": "Unauthorized", "detail": "bad token"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def _version(self, request: web.Request) -> dict[str, Any] | None:
        function = self.versions.get(request.match_info["fvid"])
        return function if function and function["id"] == request.match_info["fid"] else None

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not _NAME.fullmatch(body.get("name", "")):
            return _problem(400, "Invalid request: 'name' does not match the pattern")
        function = self.add_version(body["name"], request.match_info.get("fid"))
        function.update({k: v for k, v in body.items() if k != "secrets"})
        return web.json_response({"function": function})

    async def _list(self, request: web.Request) -> web.Response:
        fid = request.match_info.get("fid")
        found = [f for f in self.versions.values() if fid is None or f["id"] == fid]
        if fid is not None and not found:
            return _problem(404, f"Function id '{fid}': Not found in account 'test'")
        return web.json_response({"functions": found})

    async def _get(self, request: web.Request) -> web.Response:
        function = self._version(request)
        if function is None:
            return _problem(404, "version not found")
        if function["versionId"] in self.deployments:
            function["status"] = self.status_script[0]
            if len(self.status_script) > 1:
                self.status_script.pop(0)
        return web.json_response({"function": function})

    async def _update(self, request: web.Request) -> web.Response:
        function = self._version(request)
        assert function is not None
        function.update(await request.json())
        return web.json_response({"function": function})

    async def _delete(self, request: web.Request) -> web.Response:
        if self.versions.pop(request.match_info["fvid"], None) is None:
            return _problem(404, "version not found")
        return web.Response(status=204)

    async def _deploy(self, request: web.Request) -> web.Response:
        function = self._version(request)
        assert function is not None
        specs = (await request.json())["deploymentSpecifications"]
        function["status"] = "DEPLOYING"
        deployment = {
            "functionId": function["id"],
            "functionVersionId": function["versionId"],
            "deploymentId": str(uuid.uuid4()),
            "functionStatus": "DEPLOYING",
            "deploymentSpecifications": [
                {"gpuSpecificationId": str(uuid.uuid4()), **spec} for spec in specs
            ],
        }
        self.deployments[function["versionId"]] = deployment
        return web.json_response({"deployment": deployment})

    async def _get_deployment(self, request: web.Request) -> web.Response:
        deployment = self.deployments.get(request.match_info["fvid"])
        if deployment is None:
            return _problem(404, "Deployment not found")
        answer = dict(
            deployment, functionStatus=self.versions[deployment["functionVersionId"]]["status"]
        )
        if self.health_info:
            answer["healthInfo"] = self.health_info
        if self.instances is not None:
            for spec in answer["deploymentSpecifications"]:
                spec["instances"] = self.instances
        return web.json_response({"deployment": answer})

    async def _undeploy(self, request: web.Request) -> web.Response:
        function = self._version(request)
        if function is None or self.deployments.pop(function["versionId"], None) is None:
            return _problem(404, "Deployment not found")
        function["status"] = "INACTIVE"
        return web.json_response({"function": function})

    async def _patch(self, request: web.Request) -> web.Response:
        for deployment in self.deployments.values():
            for spec in deployment["deploymentSpecifications"]:
                if spec["gpuSpecificationId"] == request.match_info["sid"]:
                    spec.update(await request.json())
                    return web.json_response({"gpuSpecification": spec})
        return _problem(404, "Unknown gpu-specification-id")

    async def _cluster_groups(self, request: web.Request) -> web.Response:
        return web.json_response({"clusterGroups": CLUSTER_GROUPS})


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApi]:
    api = FakeApi()
    async with TestServer(api.app(), host="127.0.0.1") as server:
        api.url = str(server.make_url("")).rstrip("/")
        yield api


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a CLI run: a fresh state file and the test token, in this process too."""
    for name in ("NVCF_TOKEN", "NVCF_API_KEY", "NVCF_BASE_HTTP_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NVCF_CLI_STATE", str(tmp_path / "cli.state"))
    monkeypatch.setenv("NVCF_TOKEN", "test-token")
    return dict(os.environ)


@dataclass(frozen=True)
class CliRun:
    status: int
    stdout: str
    stderr: str


CliRunner = Callable[..., Awaitable[CliRun]]


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> CliRunner:
    """Run `nvcf-sidecar ARGS` (the installed script next to this Python) as a subprocess."""

    async def run(*args: str) -> CliRun:
        script = Path(sys.executable).with_name("nvcf-sidecar")
        process = await asyncio.create_subprocess_exec(
            str(script),
            *args,
            env=cli_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return CliRun(process.returncode, stdout.decode(), stderr.decode())

    return run


@pytest.fixture
def call_cli(cli_env: dict[str, str]) -> Callable[..., Awaitable[int]]:
    """Run `nvcf-sidecar ARGS` in this process (a worker thread, so the fake API keeps
    answering); its exit status, argparse's included. Output goes to capsys."""

    def call(args: list[str]) -> int:
        try:
            return main(args)
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1

    async def run(*args: str) -> int:
        return await asyncio.wait_for(asyncio.to_thread(call, list(args)), 30)

    return run
