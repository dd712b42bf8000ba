"""The exec JSON wrapper and input assets end to end: NVIDIA's test_exec and test_assets scenarios.

A real nats-server, the platform in-process and conftest's mock worker. Input assets and large
response URLs come from a small in-memory object store (`FakeObjects`), the only stand-in here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.modules import load_module
from nvcf_platform.errors import AssetNotFound
from nvcf_platform.invocation.exec import InvalidExecRequest, parse_exec_request
from nvcf_platform.invocation.invocation import (
    InvalidAssetReference,
    ObjectLinks,
    parse_asset_references,
)
from nvcf_platform.service import PlatformService
from nvcf_sidecar.protocol import InputAssetReference

pytestmark = pytest.mark.nats

PollingJob = load_module(Path(__file__).with_name("platform_mock_worker.py")).PollingJob

WAIT = 30.0
NIL_UUID = "00000000-0000-0000-0000-000000000000"
ASSETS = [str(uuid.uuid4()) for _ in range(4)]


def header_values(item: Any, name: str) -> list[str]:
    return [kv.value for kv in item.requestHeaders if kv.key == name]


async def json_of(response: Any) -> Any:
    return orjson.loads(await response.read())


async def queued(observer: Any, ids: Any) -> int:
    return int((await observer.jetstream().stream_info(ids.stream)).state.messages)


# --- the wrapper ---------------------------------------------------------------------------------


async def test_exec_wraps_a_200_json_answer_with_percent_complete_and_no_nulls(
    caller: Any, start_worker: Any, ids: Any
) -> None:
    worker = await start_worker()  # echo: 200 text/plain with the request body
    async with caller.exec({"requestBody": {"b": 1, "a": [1, None, "x"]}}) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert "nvcf-status" not in response.headers
        answer = await json_of(response)
    (item,) = worker.items
    assert answer == {
        "reqId": item.requestId,
        "status": "fulfilled",
        "percentComplete": 100,
        "response": {"a": [1, None, "x"], "b": 1},
    }
    assert item.requestMethod == "POST"
    assert item.requestPath == ids.invocation_path
    assert item.requestBody == b'{"a":[1,null,"x"],"b":1}'  # re-serialised, keys sorted
    assert [(kv.key, kv.value) for kv in item.requestHeaders] == [
        ("content-type", "application/json"),
        ("nvcf-invocation-region", ids.region),
    ]


async def test_exec_poll_duration_becomes_the_poll_header(caller: Any, start_worker: Any) -> None:
    worker = await start_worker()
    payload = {"requestHeader": {"pollDurationSeconds": 5}, "requestBody": "text"}
    async with caller.exec(payload) as response:
        assert response.status == 200
        assert (await json_of(response))["response"] == "text"
    (item,) = worker.items
    assert header_values(item, "nvcf-poll-seconds") == ["5"]
    assert item.requestBody == b'"text"'


async def test_exec_202_then_exec_status_fetches_the_result_once(
    caller: Any, start_worker: Any
) -> None:
    job = PollingJob((200, [("Content-Type", "application/json")], b'{"done": true}'), percent="50")
    worker = await start_worker(job)
    payload = {"requestHeader": {"pollDurationSeconds": 1}, "requestBody": {"job": 1}}
    async with caller.exec(payload) as response:
        assert response.status == 202
        answer = await json_of(response)
    request_id = worker.items[0].requestId
    assert answer == {"reqId": request_id, "status": "in-progress"}  # no percentComplete
    assert await caller.platform.tracking.lookup(request_id) is not None
    job.finish()
    async with caller.exec_status(request_id) as response:
        assert response.status == 200
        assert await json_of(response) == {
            "reqId": request_id,
            "status": "fulfilled",
            "percentComplete": 100,
            "response": {"done": True},
        }
    (poll,) = worker.polls
    assert [(kv.key, kv.value) for kv in poll.requestHeaders] == [
        ("nvcf-invocation-region", caller.platform.settings.region)
    ]
    async with caller.exec_status(request_id) as response:
        assert response.status == 404
        assert await json_of(response) == {"reqId": NIL_UUID, "status": "errored", "errorCode": 404}


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'{"requestHeader": {}}',
        b'{"requestHeader": 5, "requestBody": 1}',
        b'{"requestHeader": {"pollDurationSeconds": "5"}, "requestBody": 1}',
        b'{"requestHeader": {"pollDurationSeconds": 1.5}, "requestBody": 1}',
        b'{"requestHeader": {"pollDurationSeconds": -1}, "requestBody": 1}',
        b'{"requestHeader": {"pollDurationSeconds": 3601}, "requestBody": 1}',
        b'{"requestHeader": {"inputAssetReferences": "x"}, "requestBody": 1}',
        b'{"requestHeader": {"inputAssetReferences": ["not-a-uuid"]}, "requestBody": 1}',
    ],
)
async def test_bad_exec_body_is_400_and_queues_nothing(
    caller: Any, observer: Any, ids: Any, body: bytes
) -> None:
    async with caller.exec(body) as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        problem = await json_of(response)
        assert problem["status"] == 400
        assert problem["detail"]
    assert await queued(observer, ids) == 0


async def test_exec_body_over_2_mb_is_400(caller: Any, observer: Any, ids: Any) -> None:
    body = orjson.dumps({"requestBody": "x" * (2 * 1024 * 1024)})
    async with caller.exec(body) as response:
        assert response.status == 400
        assert "length limit exceeded" in (await json_of(response))["detail"]
    assert await queued(observer, ids) == 0


async def test_exec_body_beyond_the_inline_part_reaches_the_worker_over_get_attach(
    caller: Any, start_worker: Any
) -> None:
    worker = await start_worker()
    text = "y" * (100 * 1024)
    async with caller.exec({"requestBody": text}) as response:
        assert response.status == 200
        assert (await json_of(response))["response"] == text
    (item,) = worker.items
    assert len(item.requestBody) == 32 * 1024
    assert worker.get_attach[item.requestId][0] == 200


async def test_exec_302_is_200_with_the_response_reference(caller: Any, start_worker: Any) -> None:
    async def large(item: Any, body: bytes, worker: Any) -> Any:
        return 302, [("Location", "http://objects.test/results/x.zip")], b""

    worker = await start_worker(large)
    async with caller.exec({"requestBody": {}}) as response:
        assert response.status == 200
        assert await json_of(response) == {
            "reqId": worker.items[0].requestId,
            "status": "fulfilled",
            "responseReference": "http://objects.test/results/x.zip",
            "percentComplete": 100,
        }


async def test_exec_worker_error_is_wrapped_with_its_error_code(
    caller: Any, start_worker: Any
) -> None:
    async def failing(item: Any, body: bytes, worker: Any) -> Any:
        problem = b'{"status": 500, "title": "Internal Server Error"}'
        return 500, [("Content-Type", "application/problem+json")], problem

    worker = await start_worker(failing)
    async with caller.exec({"requestBody": 1}) as response:
        assert response.status == 500
        assert await json_of(response) == {
            "reqId": worker.items[0].requestId,
            "status": "errored",
            "errorCode": 500,
        }


async def test_exec_200_that_is_not_json_is_500_problem(caller: Any, start_worker: Any) -> None:
    async def text(item: Any, body: bytes, worker: Any) -> Any:
        return 200, [("Content-Type", "text/plain")], b"plain words"

    worker = await start_worker(text)
    async with caller.exec({"requestBody": 1}) as response:
        assert response.status == 500
        assert response.content_type == "application/problem+json"
        detail = (await json_of(response))["detail"]
        assert f"invalid json in response body for request_id: {worker.items[0].requestId}" in (
            detail
        )
    await worker.wait_for(handled=1, within=WAIT)
    assert worker.post_results[worker.items[0].requestId][0][0] == 200


async def test_exec_without_a_worker_is_a_wrapped_504(caller: Any) -> None:
    payload = {"requestHeader": {"pollDurationSeconds": 1}, "requestBody": 1}
    async with caller.exec(payload) as response:
        assert response.status == 504
        answer = await json_of(response)
    assert answer["status"] == "errored"
    assert answer["errorCode"] == 504
    assert str(uuid.UUID(answer["reqId"])) == answer["reqId"] != NIL_UUID
    assert set(answer) == {"reqId", "status", "errorCode"}


async def test_exec_auth_and_unknown_function_problems_pass_through_unwrapped(
    caller: Any, ids: Any
) -> None:
    async with caller.exec({"requestBody": 1}, api_key="wrong") as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
    async with caller.exec({"requestBody": 1}, function_id=str(uuid.uuid4())) as response:
        assert response.status == 404
        assert (await json_of(response))["detail"] == "function not found"
    async with caller.exec_status("not-a-uuid") as response:
        assert response.status == 400
    async with caller.exec_status(str(uuid.uuid4()), api_key="wrong") as response:
        assert response.status == 401


def test_parse_exec_request_shapes() -> None:
    parsed = parse_exec_request(
        b'{"requestHeader": {"inputAssetReferences": ["%s"], "pollDurationSeconds": 0},'
        b' "requestBody": null, "extra": 1}' % ASSETS[0].upper().encode()
    )
    assert parsed.body == b"null"
    assert parsed.poll_seconds == "0"
    assert parsed.asset_ids == (ASSETS[0],)
    assert parse_exec_request(b'{"requestHeader": null, "requestBody": 2}').poll_seconds is None
    with pytest.raises(InvalidExecRequest, match="missing field `requestBody`"):
        parse_exec_request(b"{}")
    with pytest.raises(InvalidAssetReference):
        parse_exec_request(b'{"requestHeader": {"inputAssetReferences": ["x"]}, "requestBody": 1}')


# --- input assets and large responses (a fake object store) --------------------------------------


class FakeObjects:
    """An in-memory `ObjectLinks`: known asset ids, deterministic URLs, every call recorded."""

    def __init__(self, known: Sequence[str]) -> None:
        self.known = set(known)
        self.asset_calls: list[tuple[str, list[str]]] = []

    async def asset_references(
        self, nca_id: str, asset_ids: Sequence[str]
    ) -> list[InputAssetReference]:
        self.asset_calls.append((nca_id, list(asset_ids)))
        references = []
        for asset_id in asset_ids:
            if asset_id not in self.known:
                raise AssetNotFound(asset_id)
            references.append(
                InputAssetReference(
                    assetId=asset_id,
                    reference=f"http://objects.test/assets/{nca_id}/{asset_id}",
                    contentType="image/png",
                )
            )
        return references

    def large_response_upload_url(self, nca_id: str, request_id: str) -> str:
        return f"http://objects.test/results/{nca_id}/{request_id}?signed"


@pytest.fixture
def objects() -> FakeObjects:
    return FakeObjects(ASSETS)


@pytest.fixture
async def objects_caller(
    platform_settings: Any, registry: Any, objects: FakeObjects, caller_factory: Any
) -> AsyncIterator[Any]:
    """A caller of a platform whose work items get assets and URLs from `objects`."""
    links: ObjectLinks = objects
    async with contextlib.AsyncExitStack() as stack:
        platform = await stack.enter_async_context(
            PlatformService(dataclasses.replace(platform_settings), registry, objects=links)
        )
        yield await caller_factory(platform)


async def test_asset_header_values_become_input_asset_references_and_a_large_url_is_set(
    objects_caller: Any, start_worker: Any, objects: FakeObjects
) -> None:
    worker = await start_worker()
    headers = [
        ("NVCF-INPUT-ASSET-REFERENCES", f"{ASSETS[0]}, {ASSETS[1].upper()}"),
        ("NVCF-INPUT-ASSET-REFERENCES", f" ,{ASSETS[2]},,{ASSETS[3]} "),
    ]
    async with objects_caller.pexec(b"x", headers=headers) as response:
        assert response.status == 200
        request_id = response.headers["nvcf-reqid"]
    (item,) = worker.items
    assert [ref.assetId for ref in item.inputAssetReference] == ASSETS
    assert (
        item.inputAssetReference[0].reference == f"http://objects.test/assets/local-nca/{ASSETS[0]}"
    )
    assert item.inputAssetReference[0].contentType == "image/png"
    assert item.largeResponseUrl == f"http://objects.test/results/local-nca/{request_id}?signed"
    assert objects.asset_calls == [("local-nca", ASSETS)]


async def test_empty_asset_header_means_no_assets(objects_caller: Any, start_worker: Any) -> None:
    worker = await start_worker()
    async with objects_caller.pexec(b"x", headers={"NVCF-INPUT-ASSET-REFERENCES": ""}) as response:
        assert response.status == 200
    assert list(worker.items[0].inputAssetReference) == []
    assert worker.items[0].largeResponseUrl.startswith("http://objects.test/results/")


async def test_missing_asset_is_404_problem_and_nothing_is_queued(
    objects_caller: Any, observer: Any, ids: Any
) -> None:
    missing = str(uuid.uuid4())
    headers = {"NVCF-INPUT-ASSET-REFERENCES": f"{ASSETS[0]},{missing}"}
    async with objects_caller.pexec(b"x", headers=headers) as response:
        assert response.status == 404
        assert (await json_of(response))[
            "detail"
        ] == f"NotFound error: failed to find asset {missing}"
    payload = {"requestHeader": {"inputAssetReferences": [missing]}, "requestBody": 1}
    async with objects_caller.exec(payload) as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
    assert await queued(observer, ids) == 0
    assert len(objects_caller.platform.tokens) == 0


async def test_asset_header_that_is_not_a_uuid_is_400(objects_caller: Any, objects: Any) -> None:
    headers = {"NVCF-INPUT-ASSET-REFERENCES": f"{ASSETS[0]}, not-a-uuid"}
    async with objects_caller.pexec(b"x", headers=headers) as response:
        assert response.status == 400
        assert "not-a-uuid" in (await json_of(response))["detail"]
    assert objects.asset_calls == []


async def test_exec_asset_references_reach_the_work_item(
    objects_caller: Any, start_worker: Any
) -> None:
    worker = await start_worker()
    payload = {"requestHeader": {"inputAssetReferences": ASSETS[:2]}, "requestBody": 1}
    async with objects_caller.exec(payload) as response:
        assert response.status == 200
    assert [ref.assetId for ref in worker.items[0].inputAssetReference] == ASSETS[:2]


async def test_poll_items_carry_no_assets_and_no_large_url(
    objects_caller: Any, start_worker: Any
) -> None:
    job = PollingJob((200, [], b"done"))
    worker = await start_worker(job)
    headers = {"NVCF-POLL-SECONDS": "1", "NVCF-INPUT-ASSET-REFERENCES": ASSETS[0]}
    async with objects_caller.pexec(b"x", headers=headers) as response:
        assert response.status == 202
        request_id = response.headers["nvcf-reqid"]
    job.finish()
    async with objects_caller.status(request_id, headers=headers) as response:
        assert response.status == 200
    assert len(worker.items[0].inputAssetReference) == 1
    (poll,) = worker.polls
    assert list(poll.inputAssetReference) == []
    assert poll.largeResponseUrl == ""


def test_parse_asset_references() -> None:
    values = [f"{ASSETS[0]} , {ASSETS[0]}".encode(), b"", b" , ", "caf\u00e9".encode()]
    assert parse_asset_references(values) == [ASSETS[0], ASSETS[0]]  # non-ASCII value ignored
    with pytest.raises(InvalidAssetReference, match="'nope'"):
        parse_asset_references([b"nope"])
