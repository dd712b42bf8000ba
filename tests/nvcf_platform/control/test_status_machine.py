"""NVCF's status machine (reference §5) with real instances: a start failure ends in ERROR with
the instance's log in healthInfo, a crashed instance makes the version DEGRADING, losing every
instance DEGRADED (invocations refused 400), a deploy that never gets ready times out to ERROR."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from nvcf_platform.backends import LocalBackend

pytestmark = pytest.mark.nats


def _env(**variables: str) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in variables.items()]


def _backend(api: Any) -> LocalBackend:
    backend: LocalBackend = api.platform.control.backend
    return backend


def _kill_servers(api: Any, version_id: str) -> list[int]:
    """SIGKILL the inference server of every live instance of the version; their pids."""
    backend = _backend(api)
    killed = []
    for status in backend.instances(version_id):
        if str(status.state) in {"STARTING", "RUNNING"}:
            pid = backend.instance(status.instance_id).server.pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


async def test_with_no_instance_restarts_a_crashed_server_fails_its_instance_at_once(
    api_factory: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    api = await api_factory(instance_restarts=0)
    fid, fvid = await api.create(function_body(env_image))
    await api.deploy(fid, fvid, {**cpu_spec, "maxInstances": 1})
    await api.wait_status(fid, fvid, "ACTIVE")
    (first,) = [s for s in _backend(api).instances(fvid) if str(s.state) == "RUNNING"]

    _kill_servers(api, fvid)
    # No restart in place: the instance is FAILED at once, and the reconciler replaces it.
    replacement = None
    for _ in range(300):
        states = {s.instance_id: s for s in _backend(api).instances(fvid)}
        old = states.get(first.instance_id)
        assert old is None or old.restarts == 0
        others = [s for key, s in states.items() if key != first.instance_id]
        if others and str(others[0].state) == "RUNNING":
            replacement = others[0]
            break
        await asyncio.sleep(0.1)
    assert replacement is not None, "no replacement instance within 30 s"
    ended = {s.instance_id: s for s in _backend(api).instances(fvid)}.get(first.instance_id)
    assert ended is None or (str(ended.state), ended.restarts) in {
        ("FAILED", 0),
        ("TERMINATED", 0),
    }
    await api.wait_status(fid, fvid, "ACTIVE", limit=30)


async def test_a_version_whose_instances_cannot_start_is_in_error_until_undeployed(
    api: Any, tmp_path: Path, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    flag = tmp_path / "refuse"
    flag.touch()
    body = function_body(env_image, containerEnvironment=_env(TEST_EXIT_IF_EXISTS=str(flag)))
    fid, fvid = await api.create(body)
    await api.deploy(fid, fvid, cpu_spec)

    seen = await api.wait_status(fid, fvid, "ERROR")
    assert seen == ["DEPLOYING", "ERROR"]
    status, answer = await api.call("GET", api.deployment_path(fid, fvid))
    assert status == 200
    (health,) = answer["deployment"]["healthInfo"]
    assert health["gpu"] == "CPU"
    assert health["instanceType"] == "LOCAL.CPU"
    assert "refusing to start (TEST_EXIT_IF_EXISTS)" in health["error"]
    status, answer = await api.pexec(fid, {})
    assert status == 404, answer
    status, answer = await api.call(
        "POST", api.deployment_path(fid, fvid), {"deploymentSpecifications": [cpu_spec]}
    )
    assert status == 400
    assert answer["detail"].endswith("Function already has a deployment with errors")

    status, answer = await api.call("DELETE", api.deployment_path(fid, fvid))
    assert status == 200, answer
    assert answer["function"]["status"] == "INACTIVE"
    flag.unlink()
    await api.wait_deployment_gone(fid, fvid)
    await api.deploy(fid, fvid, cpu_spec)
    assert (await api.wait_status(fid, fvid, "ACTIVE"))[-1] == "ACTIVE"


async def test_a_crashed_instance_makes_the_version_degrading_until_it_is_back(
    api: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    fid, fvid = await api.create(function_body(env_image))
    await api.deploy(fid, fvid, {**cpu_spec, "minInstances": 2, "maxInstances": 2})
    await api.wait_status(fid, fvid, "ACTIVE")
    backend = _backend(api)
    first = next(s for s in backend.instances(fvid) if str(s.state) == "RUNNING")
    pid = backend.instance(first.instance_id).server.pid
    assert pid is not None

    os.killpg(pid, signal.SIGKILL)
    seen = await api.wait_status(fid, fvid, "DEGRADING", limit=10)
    status, answer = await api.pexec(fid, {})
    assert status == 200, answer  # DEGRADING is invocable, and one instance serves
    seen += await api.wait_status(fid, fvid, "ACTIVE")
    assert seen[0] == "ACTIVE"
    assert "DEGRADING" in seen


async def test_losing_every_instance_makes_the_version_degraded_and_refused(
    api: Any, tmp_path: Path, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    flag = tmp_path / "refuse"
    body = function_body(env_image, containerEnvironment=_env(TEST_EXIT_IF_EXISTS=str(flag)))
    fid, fvid = await api.create(body)
    await api.deploy(fid, fvid, cpu_spec)
    await api.wait_status(fid, fvid, "ACTIVE")

    flag.touch()
    assert _kill_servers(api, fvid)
    await api.wait_status(fid, fvid, "DEGRADED", limit=30)
    status, answer = await api.pexec(fid, {})
    assert status == 400, answer
    assert answer["detail"] == f"Function id '{fid}': DEGRADED function cannot be invoked"

    flag.unlink()
    seen = await api.wait_status(fid, fvid, "ACTIVE", limit=60)
    assert seen[0] == "DEGRADED"
    status, answer = await api.pexec(fid, {})
    assert status == 200, answer


async def test_a_deployment_never_ready_times_out_into_error(
    api_factory: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    api = await api_factory(deploy_timeout=2.0)
    fid, fvid = await api.create(
        function_body(env_image, containerEnvironment=_env(TEST_UNHEALTHY="1"))
    )
    await api.deploy(fid, fvid, cpu_spec)

    assert await api.wait_status(fid, fvid, "ERROR", limit=20) == ["DEPLOYING", "ERROR"]
    _, answer = await api.call("GET", api.deployment_path(fid, fvid))
    assert "deployment not ready within 2 s" in answer["deployment"]["healthInfo"][0]["error"]
    assert not [s for s in _backend(api).instances(fvid) if str(s.state) in {"STARTING", "RUNNING"}]


async def test_a_deployment_of_min_zero_is_active_at_once(
    api: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    fid, fvid = await api.create(function_body(env_image))
    deployment = await api.deploy(fid, fvid, {**cpu_spec, "minInstances": 0})
    assert deployment["functionStatus"] == "ACTIVE"
    assert await api.status(fid, fvid) == "ACTIVE"
