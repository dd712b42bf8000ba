"""The function lifecycle through the API with real instances: register, deploy (DEPLOYING ->
ACTIVE), invoke, undeploy (INACTIVE, invocations refused), delete; state kept across restarts."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import nats
import pytest

pytestmark = pytest.mark.nats

HELLO = {
    "name": "hello",
    "inferenceUrl": "/",
    "inferencePort": 8000,
    "healthUri": "/v2/health/ready",
    "containerImage": "nvcr.io/acme/hello:1.0",
}
CPU_SPEC = {"gpu": "CPU", "instanceType": "LOCAL.CPU", "minInstances": 1, "maxInstances": 2}


async def test_register_deploy_invoke_undeploy_delete(api: Any) -> None:
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
    status, body = await api.call("GET", f"/v2/nvcf/queues/functions/{fid}")
    assert status == 200, body
    assert body["queues"] == [
        {
            "functionVersionId": fvid,
            "functionName": "hello",
            "functionStatus": "ACTIVE",
            "queueDepth": 0,
        }
    ]

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


async def test_a_platform_restart_keeps_functions_and_deployments(api_factory: Any) -> None:
    first = await api_factory()
    fid, fvid = await first.create(HELLO)
    other_fid, other_fvid = await first.create(HELLO)
    await first.deploy(fid, fvid, CPU_SPEC)
    await first.wait_status(fid, fvid, "ACTIVE")
    await first.platform.__aexit__(None, None, None)  # instances stop with it

    second = await api_factory()
    assert await second.status(other_fid, other_fvid) == "INACTIVE"
    await second.wait_status(fid, fvid, "ACTIVE")
    status, body = await second.pexec(fid, {"again": True})
    assert status == 200, body
    assert body["echo"] == {"again": True}


async def test_calls_by_function_id_reach_every_deployed_version(
    api: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    fid, v1 = await api.create(function_body(env_image))
    _, v2 = await api.create(function_body(env_image), function_id=fid)
    _, v3 = await api.create(function_body(env_image), function_id=fid)  # never deployed
    await api.deploy(fid, v1, cpu_spec)
    await api.deploy(fid, v2, cpu_spec)
    await api.wait_status(fid, v1, "ACTIVE")
    await api.wait_status(fid, v2, "ACTIVE")

    reached = set()
    for _ in range(40):
        status, body = await api.pexec(fid, {})
        assert status == 200, body
        reached.add(body["env"]["NVCF_FUNCTION_VERSION_ID"])
        if reached == {v1, v2}:
            break
    assert reached == {v1, v2}
    status, body = await api.pexec(fid, {}, fvid=v3)
    assert status == 404, body


async def test_undeploy_lets_the_request_in_flight_finish(
    api: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    fid, fvid = await api.create(function_body(env_image))
    await api.deploy(fid, fvid, cpu_spec)
    await api.wait_status(fid, fvid, "ACTIVE")
    slow = asyncio.create_task(api.pexec(fid, {"sleep": 2}))
    await _request_started(api, fvid)

    status, body = await api.call("DELETE", api.deployment_path(fid, fvid))
    assert status == 200, body
    assert body["function"]["status"] == "INACTIVE"
    status, body = await asyncio.wait_for(slow, 30)
    assert status == 200, body
    await api.wait_deployment_gone(fid, fvid)
    assert not [
        s for s in api.platform.control.backend.instances(fvid) if str(s.state) != "TERMINATED"
    ]


async def test_patch_and_put_change_the_instance_count(
    api: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    fid, fvid = await api.create(function_body(env_image))
    deployment = await api.deploy(fid, fvid, cpu_spec)
    spec_id = deployment["deploymentSpecifications"][0]["gpuSpecificationId"]
    await api.wait_status(fid, fvid, "ACTIVE")

    path = f"/v2/nvcf/deployments/{deployment['deploymentId']}/gpu-specifications/{spec_id}"
    status, body = await api.call("PATCH", path, {"minInstances": 2})
    assert status == 200, body
    assert body["gpuSpecification"]["minInstances"] == 2
    await api.wait_counts(fid, fvid, {"desired": 2, "ready": 2, "starting": 0})

    update = {
        "deploymentSpecifications": [
            {"gpuSpecificationId": spec_id, "minInstances": 1, "maxInstances": 1}
        ]
    }
    status, body = await api.call("PUT", api.deployment_path(fid, fvid), update)
    assert status == 200, body
    await api.wait_counts(fid, fvid, {"desired": 1, "ready": 1, "starting": 0})


async def test_deploy_refusals_name_the_problem(
    api: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    fid, fvid = await api.create(function_body(env_image))
    path = api.deployment_path(fid, fvid)
    status, body = await api.call(
        "POST", path, {"deploymentSpecifications": [{**cpu_spec, "gpu": "H100"}]}
    )
    assert status == 400
    assert body["detail"] == f"Function id '{fid}', version '{fvid}': Invalid GPU 'H100' specified"
    assert body["title"] == "Bad Request"
    assert body["instance"] == path

    unknown_fid, unknown_fvid = await api.create(function_body("nvcr.io/acme/unknown:2.0"))
    status, body = await api.call(
        "POST",
        api.deployment_path(unknown_fid, unknown_fvid),
        {"deploymentSpecifications": [cpu_spec]},
    )
    assert status == 400
    assert "image 'nvcr.io/acme/unknown:2.0' is not in the local image catalog" in body["detail"]
    assert await api.status(unknown_fid, unknown_fvid) == "INACTIVE"

    await api.deploy(fid, fvid, cpu_spec)
    status, body = await api.call("POST", path, {"deploymentSpecifications": [cpu_spec]})
    assert status == 400
    assert "use PATCH endpoint to update gpu-specification" in body["detail"]
    status, body = await api.call(
        "GET", "/v2/nvcf/deployments/00000000-0000-4000-8000-000000000000"
    )
    assert status == 404
    assert (
        body["detail"]
        == "Deployment id '00000000-0000-4000-8000-000000000000': Deployment not found"
    )


async def test_an_image_on_a_fixed_port_deploys_one_instance_at_a_time(
    api: Any, function_body: Any, cpu_spec: dict[str, Any]
) -> None:
    one = {**cpu_spec, "maxInstances": 1}
    fid, first = await api.create(function_body("nvcr.io/acme/fixed:1.0"))
    status, body = await api.call(
        "POST", api.deployment_path(fid, first), {"deploymentSpecifications": [cpu_spec]}
    )
    assert status == 400
    assert "listens on its fixed port" in body["detail"]
    assert "maxInstances 2 cannot run; deploy with maxInstances 1" in body["detail"]

    deployment = await api.deploy(fid, first, one)
    await api.wait_status(fid, first, "ACTIVE")
    status, answer = await api.pexec(fid, {"hello": "fixed"})
    assert (status, answer["echo"]) == (200, {"hello": "fixed"})
    spec_id = deployment["deploymentSpecifications"][0]["gpuSpecificationId"]
    path = f"/v2/nvcf/deployments/{deployment['deploymentId']}/gpu-specifications/{spec_id}"
    status, body = await api.call("PATCH", path, {"maxInstances": 2})
    assert status == 400, body  # nor can an update raise the bound
    assert "listens on its fixed port" in body["detail"]

    # A second version of the image cannot start while the first holds the port.
    _, second = await api.create(function_body("nvcr.io/acme/fixed:1.0"), function_id=fid)
    await api.deploy(fid, second, one)
    await api.wait_status(fid, second, "ERROR")
    status, answer = await api.call("GET", api.deployment_path(fid, second))
    (health,) = answer["deployment"]["healthInfo"]
    assert "listens on its fixed port" in health["error"]
    assert f"of function version {first} holds" in health["error"]
    assert await api.status(fid, first) == "ACTIVE"

    # Once the first is undeployed, the second deploys again.
    status, _ = await api.call("DELETE", api.deployment_path(fid, first))
    assert status == 200
    await api.wait_deployment_gone(fid, first)
    status, _ = await api.call("DELETE", api.deployment_path(fid, second))
    assert status == 200
    await api.wait_deployment_gone(fid, second)
    await api.deploy(fid, second, one)
    await api.wait_status(fid, second, "ACTIVE")
    status, answer = await api.pexec(fid, {"hello": "again"})
    assert (status, answer["echo"]) == (200, {"hello": "again"})


async def test_a_create_body_may_pin_the_ids_and_taken_ones_are_409(
    api: Any, function_body: Any
) -> None:
    fid, first, second = (str(uuid.uuid4()) for _ in range(3))
    status, answer = await api.call(
        "POST", "/v2/nvcf/functions", {**function_body(), "id": fid.upper(), "versionId": first}
    )
    assert status == 200, answer
    assert (answer["function"]["id"], answer["function"]["versionId"]) == (fid, first)
    status, answer = await api.call(
        "POST", f"/v2/nvcf/functions/{fid}/versions", {**function_body(), "versionId": second}
    )
    assert status == 200, answer
    assert (answer["function"]["id"], answer["function"]["versionId"]) == (fid, second)

    status, answer = await api.call("POST", "/v2/nvcf/functions", {**function_body(), "id": fid})
    assert status == 409
    assert answer["detail"] == f"Function id '{fid}': already exists in account 'local-nca'"
    status, answer = await api.call(
        "POST", f"/v2/nvcf/functions/{fid}/versions", {**function_body(), "versionId": first}
    )
    assert status == 409
    assert answer["detail"] == (
        f"Function version id '{first}': already exists in account 'local-nca'"
    )
    status, answer = await api.call("POST", "/v2/nvcf/functions", {**function_body(), "id": "x"})
    assert status == 400
    assert answer["detail"] == "Invalid request: 'id' must be a UUID, not 'x'"
    # A new version's body: `id` is ignored, but still has to be a UUID (as documented).
    status, answer = await api.call(
        "POST", f"/v2/nvcf/functions/{fid}/versions", {**function_body(), "id": "g" + fid[1:]}
    )
    assert status == 400
    assert answer["detail"] == f"Invalid request: 'id' must be a UUID, not {'g' + fid[1:]!r}"
    other = str(uuid.uuid4())
    status, answer = await api.call(
        "POST", f"/v2/nvcf/functions/{fid}/versions", {**function_body(), "id": other}
    )
    assert status == 200, answer
    assert answer["function"]["id"] == fid
    third = answer["function"]["versionId"]
    listed = await api.call("GET", f"/v2/nvcf/functions/{fid}/versions")
    assert sorted(v["versionId"] for v in listed[1]["functions"]) == sorted([first, second, third])


async def test_bodies_must_be_json(api: Any) -> None:
    async with api.session.post(
        api.base + "/v2/nvcf/functions",
        data=b"name=x",
        headers={**api.headers, "Content-Type": "text/plain"},
    ) as response:
        assert response.status == 415
        assert response.content_type == "application/problem+json"
    async with api.session.post(
        api.base + "/v2/nvcf/functions",
        data=b"{",
        headers={**api.headers, "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
    async with api.session.post(api.base + "/v2/nvcf/functions", json={"name": "x"}) as response:
        assert response.status == 401  # no bearer


async def _request_started(api: Any, fvid: str, limit: float = 20.0) -> None:
    """Wait until the version's env_server logged `request started` (bounded)."""
    backend = api.platform.control.backend
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for status in backend.instances(fvid):
            log = backend.work_dir / "instances" / status.instance_id / "server.log"
            if log.exists() and "request started" in log.read_text():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no instance of {fvid} started the request within {limit} s")


async def test_functions_and_deployments_outlive_a_nats_server_restart(
    api_factory: Any, nats_server: Any, function_body: Any, env_image: str, cpu_spec: dict[str, Any]
) -> None:
    first = await api_factory()
    fid, fvid = await first.create(function_body(env_image, tags=["kept"]))
    await first.deploy(fid, fvid, cpu_spec)
    await first.wait_status(fid, fvid, "ACTIVE")
    await first.platform.__aexit__(None, None, None)
    nats_server.stop()
    nats_server.start()  # same store directory: the KV bucket is on disk

    second = await api_factory()
    status, body = await second.call("GET", f"/v2/nvcf/functions/{fid}/versions/{fvid}")
    assert status == 200, body
    assert body["function"]["tags"] == ["kept"]
    await second.wait_status(fid, fvid, "ACTIVE")
    status, body = await second.pexec(fid, {})
    assert status == 200, body


async def test_changes_while_nats_is_down_get_503_and_reads_still_answer(
    api: Any, nats_server: Any, function_body: Any, env_image: str
) -> None:
    fid, fvid = await api.create(function_body(env_image))
    nats_server.stop()
    await _until(lambda: not api.platform.link.up, 20)

    async with api.session.post(
        api.base + "/v2/nvcf/functions", json=function_body(env_image), headers=api.headers
    ) as response:
        body = await response.json(content_type=None)
        assert response.status == 503, body
        assert response.headers["Retry-After"] == "5"
    assert body["detail"] == "the control state (NATS KV) is unavailable: NATS is not connected"
    status, body = await api.call("GET", f"/v2/nvcf/functions/{fid}/versions/{fvid}")
    assert status == 200, body  # served from memory

    nats_server.start()
    await _until(lambda: api.platform.link.up, 30)
    await api.create(function_body(env_image))


async def _until(condition: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit} s"
        await asyncio.sleep(0.05)


async def test_an_unreadable_stored_record_is_skipped_and_the_rest_load(
    api_factory: Any, nats_server: Any, function_body: Any, env_image: str, caplog: Any
) -> None:
    first = await api_factory()
    fid, fvid = await first.create(function_body(env_image))
    await first.platform.__aexit__(None, None, None)
    client = await nats.connect(nats_server.url)
    try:
        bucket = await client.jetstream().key_value("nvcf_control")
        await bucket.put("versions.broken", b"{not json")
    finally:
        await client.close()

    second = await api_factory()
    assert await second.status(fid, fvid) == "INACTIVE"
    assert any(r.message == "unreadable control record skipped" for r in caplog.records)
