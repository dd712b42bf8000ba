"""One request through the sidecar in compatibility mode (reference §5.2 steps 5-9, §6, §7, §8).

Real servers on loopback: the container is a process (`servers/compat_data_container.py`), the
invocation service's attach endpoint and an object store (input assets, large-response uploads)
run in the test's event loop, and status polls travel over a real nats-server: the test plays the
platform by sending `rq_polling.<reqid>` requests, each with a fresh response token.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import orjson
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from harness.modules import load_module
from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.protocol import (
    WorkerInvokeFunctionRequest,
    attach_config,
    encode_invoke_request,
    polling_subject,
)
from nvcf_sidecar.worker.compat import (
    PROGRESS_ERROR_HEADER,
    CompatibilityServices,
    compatibility_wanted,
)
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.large import LargeResponseShipper
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.progress import ProgressMonitor
from nvcf_sidecar.worker.request import RequestRunner
from nvcf_sidecar.worker.sessions import HttpSessions

pytestmark = pytest.mark.nats

SERVERS = Path(__file__).parent / "servers"
attach_helpers = load_module(SERVERS / "data_path_attach.py")
compat_server = load_module(SERVERS / "compat_data_container.py")
invoke_request = attach_helpers.invoke_request

WAIT = 10.0
"""Bound on every wait that is expected to succeed."""
FEATURE_OFF = ("nvcf-feature-disable-worker-compatibility", "true")
WORKER_PROBLEM = "urn:nvcf-worker-service:problem-details:internal-server-error"
REQUEST_FAILED = "Internal error while making inference request"


# --- the platform's side: object store, upload URLs, polls -----------------------------------


@dataclass
class ObjectStore:
    """Presigned URLs on loopback: GET /asset/<id> serves `assets`, PUT /upload/<key> stores."""

    url: str = ""
    assets: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, tuple[str | None, bytes]] = field(default_factory=dict)
    """key -> (Content-Type, body) of every accepted PUT."""
    put_attempts: int = 0
    fail_uploads: bool = False

    async def get_asset(self, request: web.Request) -> web.Response:
        data = self.assets.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        return web.Response(body=data)

    async def put(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.put_attempts += 1
        if self.fail_uploads:
            return web.Response(status=500, text="store is down")
        self.uploads[request.match_info["key"]] = (request.headers.get("Content-Type"), body)
        return web.Response(status=200)

    def upload_url(self, key: str) -> str:
        return f"{self.url}/upload/{key}"

    def asset_url(self, asset_id: str) -> str:
        return f"{self.url}/asset/{asset_id}"


class FakeUploadUrls:
    """`UploadUrls` as the API would answer: fresh PUT URLs into the store, a download URL."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def refresh_large_upload_url(self, request_id: str) -> str:
        return self.store.upload_url(f"{request_id}-refreshed")

    async def large_response_download_url(self, request_id: str, nca_id: str) -> str:
        return download_url(request_id, nca_id)


def download_url(request_id: str, nca_id: str = "caller-nca") -> str:
    return f"https://results.example/{nca_id}/{request_id}"


@pytest.fixture
async def store() -> AsyncIterator[ObjectStore]:
    state = ObjectStore()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/asset/{id}", state.get_asset)
    app.router.add_put("/upload/{key}", state.put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    state.url = f"http://{LOOPBACK}:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def compat_container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with compat_server.launch(tmp_path_factory.mktemp("logs") / "container.log") as process:
        yield process


@pytest.fixture
async def platform_nc(nats_server: Any) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


# --- the sidecar under test --------------------------------------------------------------------


@dataclass
class Sidecar:
    config: WorkerConfig
    metrics: WorkerMetrics
    runner: RequestRunner
    nats: NATS
    """The sidecar's own NATS connection (status polls arrive on it)."""

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def accepted(self, source: str) -> float:
        return self.sample("nvcf_worker_accepted_answers_total", source=source)

    def polls_taken(self) -> float:
        return self.sample("nvcf_worker_polls_total", result="taken")


@pytest.fixture
async def make_sidecar(
    tmp_path: Path, nats_server: Any, store: ObjectStore, compat_container: Any
) -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    async with AsyncExitStack() as stack:
        worker_nc = await nats.connect(nats_server.url)
        stack.push_async_callback(worker_nc.close)

        async def make(*, compat: bool = True, **overrides: Any) -> Sidecar:
            settings: dict[str, Any] = {
                "inference_port": compat_container.port,
                "base_asset_dir": tmp_path / "assets",
                "base_response_dir": tmp_path / "response",
                **overrides,
            }
            config = WorkerConfig(
                function_id="11111111-1111-1111-1111-111111111111",
                function_version_id="22222222-2222-2222-2222-222222222222",
                grpc_url="http://127.0.0.1:1",
                **settings,
            )
            sessions = await stack.enter_async_context(HttpSessions(config))
            metrics = WorkerMetrics()
            services = None
            if compat:
                monitor = await stack.enter_async_context(
                    ProgressMonitor(config.base_response_dir, metrics)
                )
                shipper = LargeResponseShipper(
                    sessions.transfer, FakeUploadUrls(store), metrics, initial_backoff=0.01
                )
                services = CompatibilityServices(monitor, worker_nc, shipper)
            runner = RequestRunner(config, metrics, sessions, services)
            return Sidecar(config, metrics, runner, worker_nc)

        yield make


@pytest.fixture
async def sidecar(make_sidecar: Callable[..., Awaitable[Sidecar]]) -> Sidecar:
    return await make_sidecar()


# --- helpers -----------------------------------------------------------------------------------


def new_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


def token_of(request: WorkerInvokeFunctionRequest) -> str:
    return str(request.statelessConfig.connectionConfigs[0].http1Config.responseAuthorizationToken)


def start(sidecar: Sidecar, attach_server: Any, request: Any) -> asyncio.Task[Outcome]:
    """Run `request` in the background; its first answer is awaited with `attach_server.response`."""
    attach_server.expect_response(token_of(request))
    return asyncio.create_task(sidecar.runner.run(request))


async def finish(task: asyncio.Task[Outcome], within: float = WAIT) -> Outcome:
    async with asyncio.timeout(within):
        return await task


async def run(sidecar: Sidecar, attach_server: Any, request: Any) -> tuple[Outcome, Any]:
    """Run `request` to its end; its outcome and the single answer the platform received."""
    task = start(sidecar, attach_server, request)
    outcome = await finish(task)
    return outcome, await attach_server.response(token_of(request))


async def poll(
    nc: NATS,
    attach_server: Any,
    request_id: str,
    *,
    path: str = "/status-default",
    poll_seconds: int | None = None,
) -> str:
    """Play the platform's status poll; returns the poll's response token (already expected)."""
    token = f"poll-{uuid.uuid4().hex}"
    item = WorkerInvokeFunctionRequest(requestId=request_id, requestMethod="GET", requestPath=path)
    item.requestTime.GetCurrentTime()
    if poll_seconds is not None:
        item.requestHeaders.add(key="nvcf-poll-seconds", value=str(poll_seconds))
    item.statelessConfig.CopyFrom(attach_config(attach_server.url, token))
    attach_server.expect_response(token)
    reply = await nc.request(polling_subject(request_id), encode_invoke_request(item), timeout=5)
    assert reply.data == b""  # taken at once, before it is served
    return token


async def container_get(container: Any, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{container.port}{path}") as response,
    ):
        return await response.json()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def container_state(container: Any, key: str) -> dict[str, bool]:
    state: dict[str, bool] = await container_get(container, f"/state/{key}")
    return state


def json_body(post: Any, status: int = 200) -> Any:
    head = post.head()
    assert head.status == status, head
    assert head.content_length() == len(head.body)
    return orjson.loads(head.body)


def problem(post: Any, status: int = 500) -> dict[str, Any]:
    head = post.head()
    assert head.status == status, head
    assert ("Content-Type", "application/problem+json") in head.headers
    assert head.content_length() == len(head.body)
    document: dict[str, Any] = orjson.loads(head.body)
    return document


def header(post: Any, name: str) -> list[str]:
    return [value for key, value in post.head().headers if key.lower() == name.lower()]


def echoed(echo: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echo["headers"] if key.lower() == name.lower()]


# --- mode selection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "disabled", "wanted"),
    [
        ([], False, True),
        ([("Accept", "application/json")], False, True),
        ([("Accept", "text/event-stream")], False, False),
        ([("accept", "Text/Event-Stream ; charset=utf-8")], False, False),
        ([("accept", "application/json, text/event-stream")], False, True),
        ([("accept", "text/event-streams")], False, True),
        ([FEATURE_OFF], False, False),
        ([("NVCF-Feature-Disable-Worker-Compatibility", "true")], False, False),
        ([("nvcf-feature-disable-worker-compatibility", "false")], False, True),
        ([("nvcf-feature-disable-worker-compatibility", "TRUE")], False, True),
        ([], True, False),
    ],
)
def test_compatibility_wanted(caller: list[tuple[str, str]], disabled: bool, wanted: bool) -> None:
    assert compatibility_wanted(caller, disabled) is wanted


async def test_an_event_stream_is_relayed_in_passthrough_even_with_compatibility_services(
    sidecar: Sidecar, attach_server: Any
) -> None:
    # Slower than the 1 s budget: compatibility mode would answer a generated 202.
    request = invoke_request(
        attach_server.url,
        new_id("sse"),
        method="GET",
        path="/sse?n=3&delay=0.6",
        headers=[("accept", "text/event-stream; charset=utf-8"), ("nvcf-poll-seconds", "1")],
    )

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    head = post.head()
    assert head.status == 200
    assert head.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert sidecar.accepted("generated") == 0


@pytest.mark.parametrize(
    ("headers", "content_type"),
    [
        ([], ["application/json"]),
        ([("content-type", "text/plain")], ["text/plain"]),
        ([FEATURE_OFF, ("content-type", "text/plain")], ["text/plain"]),
    ],
    ids=["compat-default", "compat-callers-own", "passthrough-callers-own"],
)
async def test_a_missing_content_type_becomes_json_in_compatibility_mode(
    sidecar: Sidecar,
    attach_server: Any,
    headers: list[tuple[str, str]],
    content_type: list[str],
) -> None:
    request = invoke_request(attach_server.url, new_id("ctype"), headers=headers, body=b"{}")

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert echoed(json_body(post), "content-type") == content_type


async def test_no_content_type_is_added_when_the_sidecar_runs_with_compatibility_disabled(
    make_sidecar: Callable[..., Awaitable[Sidecar]], attach_server: Any
) -> None:
    sidecar = await make_sidecar(compatibility_disabled=True)
    request = invoke_request(attach_server.url, new_id("ctype-off"), body=b"{}")

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert echoed(json_body(post), "content-type") == []


@pytest.mark.parametrize(
    "headers", [[FEATURE_OFF], [("accept", "text/event-stream")]], ids=["tlb", "sse"]
)
async def test_a_missing_content_type_becomes_json_for_passthrough_requests_too(
    sidecar: Sidecar, attach_server: Any, headers: list[tuple[str, str]]
) -> None:
    request = invoke_request(attach_server.url, new_id("ctype-pt"), headers=headers, body=b"{}")

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert echoed(json_body(post), "content-type") == ["application/json"]


# --- final answers, container errors, a budget already spent -----------------------------------


async def test_a_final_answer_within_the_budget_is_answered_200_with_its_body(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request_id = new_id("final")
    request = invoke_request(attach_server.url, request_id, path="/echo?x=1", body=b'{"a":1}')

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    echo = json_body(post)
    assert (echo["method"], echo["target"], echo["body_length"]) == ("POST", "/echo?x=1", 7)
    assert header(post, "content-type") == ["application/json; charset=utf-8"]
    assert [record.token for record in attach_server.posts] == [token_of(request)]
    assert sidecar.accepted("generated") == sidecar.accepted("progress") == 0
    assert not (sidecar.config.base_response_dir / request_id).exists()


@pytest.mark.parametrize(
    ("query", "status", "reason", "detail"),
    [
        ("status=404&message=no+such+model", 404, "not-found", "no such model"),
        ("status=500&message=model+exploded", 500, "internal-server-error", "model exploded"),
        ("status=503", 503, "service-unavailable", "Inference error"),
    ],
)
async def test_container_errors_become_inference_service_problems(
    sidecar: Sidecar, attach_server: Any, query: str, status: int, reason: str, detail: str
) -> None:
    request = invoke_request(attach_server.url, new_id("error"), path=f"/error?{query}")

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    document = problem(post, status)
    assert document["type"] == f"urn:inference-service:problem-details:{reason}"
    assert (document["status"], document["detail"]) == (status, detail)


async def test_a_work_item_too_far_in_the_past_fails_without_calling_the_container(
    sidecar: Sidecar, attach_server: Any, compat_container: Any
) -> None:
    request_id = new_id("past")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=60",
        headers=[("nvcf-poll-seconds", "5")],
        request_time=time.time() - 10,
    )

    outcome, post = await run(sidecar, attach_server, request)  # bounded: far below the 60 s

    assert outcome is Outcome.EXPIRED
    assert problem(post) == {
        "type": WORKER_PROBLEM,
        "title": "Internal Server Error",
        "status": 500,
        "detail": REQUEST_FAILED,
    }
    assert sidecar.accepted("generated") == 0
    state = await container_state(compat_container, request_id)
    assert not state["started"]  # too late is never executed


# --- generated 202s and polls ------------------------------------------------------------------


async def test_budget_expiry_sends_an_empty_202_and_polls_get_the_final_answer(
    sidecar: Sidecar, attach_server: Any, platform_nc: NATS
) -> None:
    request_id = new_id("expiry")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=4",
        headers=[("nvcf-poll-seconds", "1")],
    )
    task = start(sidecar, attach_server, request)

    first = await attach_server.response(token_of(request))
    assert first.head().status == 202
    assert first.head().body == b""
    assert first.head().content_length() == 0
    # A poll with a 1 s budget while the container still works: another empty 202.
    second_token = await poll(platform_nc, attach_server, request_id, poll_seconds=1)
    second = await attach_server.response(second_token)
    assert (second.head().status, second.head().body) == (202, b"")
    third_token = await poll(platform_nc, attach_server, request_id, poll_seconds=10)
    third = await attach_server.response(third_token)

    assert await finish(task) is Outcome.DELIVERED
    assert json_body(third) == {"slept": 4.0}
    assert sidecar.accepted("generated") == 2
    assert sidecar.polls_taken() == 2
    assert len(attach_server.posts) == 3
    assert not (sidecar.config.base_response_dir / request_id).exists()


async def test_a_final_answer_is_held_until_the_next_poll(
    sidecar: Sidecar, attach_server: Any, platform_nc: NATS, compat_container: Any
) -> None:
    request_id = new_id("held")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=1.5",
        headers=[("nvcf-poll-seconds", "1")],
    )
    task = start(sidecar, attach_server, request)
    assert (await attach_server.response(token_of(request))).head().status == 202

    async def finished() -> bool:
        return (await container_state(compat_container, request_id))["finished"]

    await until(finished, "the container's final answer")
    await asyncio.sleep(0.3)
    assert len(attach_server.posts) == 1  # nobody polled: the answer waits
    assert not task.done()
    token = await poll(platform_nc, attach_server, request_id, poll_seconds=5)

    assert await finish(task) is Outcome.DELIVERED
    assert json_body(await attach_server.response(token)) == {"slept": 1.5}
    assert sidecar.polls_taken() == 1


async def test_no_poll_in_time_cancels_the_request_and_stops_the_container(
    sidecar: Sidecar, attach_server: Any, platform_nc: NATS, compat_container: Any
) -> None:
    # NVCF-POLL-SECONDS 1: the wait for the next poll is max(2 x 1, 10) = 10 s.
    request_id = new_id("gone")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=60",
        headers=[("nvcf-poll-seconds", "1")],
    )
    task = start(sidecar, attach_server, request)
    assert (await attach_server.response(token_of(request))).head().status == 202

    assert await finish(task, within=15.0) is Outcome.CANCELLED

    async def disconnected() -> bool:
        return (await container_state(compat_container, request_id))["disconnected"]

    await until(disconnected, "the container call to be stopped")
    assert not (sidecar.config.base_response_dir / request_id).exists()
    with pytest.raises(nats.errors.NoRespondersError):  # no longer subscribed
        await platform_nc.request(polling_subject(request_id), b"", timeout=2)


async def test_a_refused_202_with_budget_left_is_an_attach_error(
    sidecar: Sidecar, attach_server: Any, compat_container: Any
) -> None:
    request_id = new_id("refused")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=60",
        headers=[("nvcf-poll-seconds", "1")],
        response_token="never-expected",
    )

    outcome = await finish(asyncio.create_task(sidecar.runner.run(request)))

    assert outcome is Outcome.ATTACH_ERROR
    assert [(post.token, post.status) for post in attach_server.posts] == [("never-expected", 401)]
    assert sidecar.sample("nvcf_worker_attach_errors_total", direction="post") == 1

    async def disconnected() -> bool:
        return (await container_state(compat_container, request_id))["disconnected"]

    await until(disconnected, "the container call to be stopped")


async def test_a_refused_202_is_not_counted_as_accepted(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request_id = new_id("refused-count")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=60",
        headers=[("nvcf-poll-seconds", "1")],
        response_token="never-expected",
    )

    outcome = await finish(asyncio.create_task(sidecar.runner.run(request)))

    assert outcome is Outcome.ATTACH_ERROR
    assert sidecar.accepted("generated") == 0


async def test_a_refused_202_with_the_budget_spent_still_waits_briefly_for_a_poll(
    sidecar: Sidecar, attach_server: Any, platform_nc: NATS
) -> None:
    # Budget 1 s, work item 1.5 s old: -0.5 s left (not too late), so the 202 leaves at once.
    # An IS without the liveness route (NVIDIA's), so the old item is not checked before it runs.
    attach_server.liveness = False
    request_id = new_id("grace")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=0.5",
        headers=[("nvcf-poll-seconds", "1")],
        response_token="platform-gave-up",
        request_time=time.time() - 1.5,
    )
    task = asyncio.create_task(sidecar.runner.run(request))

    async def refused() -> bool:
        return bool(attach_server.posts)

    await until(refused, "the 202 to be refused")
    token = await poll(platform_nc, attach_server, request_id, poll_seconds=10)

    assert await finish(task) is Outcome.DELIVERED
    assert json_body(await attach_server.response(token)) == {"slept": 0.5}


async def test_a_202_nobody_could_poll_is_replaced_by_a_500_problem(
    sidecar: Sidecar, attach_server: Any, compat_container: Any
) -> None:
    await sidecar.nats.close()  # no subscription to rq_polling.<reqid> is possible
    request_id = new_id("no-polls")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=60",
        headers=[("nvcf-poll-seconds", "1")],
    )

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert problem(post)["type"] == WORKER_PROBLEM
    assert problem(post)["detail"] == REQUEST_FAILED
    assert sidecar.accepted("generated") == 0

    async def disconnected() -> bool:
        return (await container_state(compat_container, request_id))["disconnected"]

    await until(disconnected, "the container call to be stopped")


async def test_cancelling_while_waiting_for_a_poll_stops_everything(
    sidecar: Sidecar, attach_server: Any, platform_nc: NATS, compat_container: Any
) -> None:
    request_id = new_id("cancel")
    request = invoke_request(
        attach_server.url,
        request_id,
        path=f"/sleep?id={request_id}&seconds=60",
        headers=[("nvcf-poll-seconds", "1")],
    )
    task = start(sidecar, attach_server, request)
    assert (await attach_server.response(token_of(request))).head().status == 202

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finish(task)

    async def disconnected() -> bool:
        return (await container_state(compat_container, request_id))["disconnected"]

    await until(disconnected, "the container call to be stopped")
    assert not (sidecar.config.base_response_dir / request_id).exists()
    with pytest.raises(nats.errors.NoRespondersError):
        await platform_nc.request(polling_subject(request_id), b"", timeout=2)


# --- progress ------------------------------------------------------------------------------------


async def test_a_progress_file_answers_202_with_its_percent_and_a_poll_gets_the_final(
    sidecar: Sidecar, attach_server: Any, platform_nc: NATS
) -> None:
    request_id = new_id("progress")
    request = invoke_request(attach_server.url, request_id, path="/progress?percent=40&seconds=2")
    task = start(sidecar, attach_server, request)

    first = await attach_server.response(token_of(request))
    assert first.head().status == 202
    assert header(first, "NVCF-PERCENT-COMPLETE") == ["40"]
    assert header(first, "Content-Type") == ["application/json"]
    assert json_body(first, 202) == {"step": 40}
    token = await poll(platform_nc, attach_server, request_id, poll_seconds=10)

    assert await finish(task) is Outcome.DELIVERED
    assert json_body(await attach_server.response(token)) == {"done": True}
    assert sidecar.sample("nvcf_worker_progress_updates_total") == 1
    assert sidecar.accepted("progress") == 1
    assert sidecar.polls_taken() == 1


async def test_a_rejected_progress_file_is_reported_on_the_next_answer(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(
        attach_server.url, new_id("big-progress"), path="/big-progress?seconds=3"
    )

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert json_body(post) == {"ok": 1}
    [error] = header(post, PROGRESS_ERROR_HEADER)
    assert "exceeds the 250000-byte limit" in error
    assert sidecar.sample("nvcf_worker_progress_rejected_total", reason="too_large") == 1
    assert sidecar.sample("nvcf_worker_progress_updates_total") == 0


# --- large responses -----------------------------------------------------------------------------


def zip_entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("with_url", [True, False], ids=["given-url", "refreshed-url"])
async def test_a_body_over_the_direct_limit_ships_as_a_zip_and_answers_302(
    sidecar: Sidecar, attach_server: Any, store: ObjectStore, with_url: bool
) -> None:
    request_id = new_id("large")
    request = invoke_request(attach_server.url, request_id, path="/big?size=5000")
    request.maxDirectResponseSizeBytes = 1000
    if with_url:
        request.largeResponseUrl = store.upload_url(request_id)
    key = request_id if with_url else f"{request_id}-refreshed"

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    head = post.head()
    assert (head.status, head.body, head.content_length()) == (302, b"", 0)
    assert header(post, "Location") == [download_url(request_id)]
    content_type, data = store.uploads[key]
    assert content_type == "application/zip"
    assert zip_entries(data) == {f"{request_id}.response": compat_server.pattern_bytes(5000)}
    assert sidecar.sample("nvcf_worker_large_responses_total", result="uploaded") == 1


async def test_output_files_ship_with_the_body_as_a_zip(
    sidecar: Sidecar, attach_server: Any, store: ObjectStore
) -> None:
    request_id = new_id("outputs")
    request = invoke_request(attach_server.url, request_id, path="/outputs")
    request.largeResponseUrl = store.upload_url(request_id)

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert post.head().status == 302
    assert header(post, "Location") == [download_url(request_id)]
    entries = zip_entries(store.uploads[request_id][1])
    assert orjson.loads(entries.pop(f"{request_id}.response")) == {
        "written": sorted(compat_server.OUTPUT_FILES)
    }
    assert entries == compat_server.OUTPUT_FILES
    assert not (sidecar.config.base_response_dir / request_id).exists()


async def test_a_large_response_that_cannot_be_uploaded_is_a_500_problem(
    sidecar: Sidecar, attach_server: Any, store: ObjectStore
) -> None:
    store.fail_uploads = True
    request_id = new_id("upload-fails")
    request = invoke_request(attach_server.url, request_id, path="/big?size=5000")
    request.maxDirectResponseSizeBytes = 1000
    request.largeResponseUrl = store.upload_url(request_id)

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert problem(post)["type"] == WORKER_PROBLEM
    assert problem(post)["detail"] == REQUEST_FAILED
    assert store.put_attempts >= 2  # retried before giving up
    assert store.uploads == {}
    assert sidecar.sample("nvcf_worker_large_responses_total", result="failed") == 1


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/big?size=5000", compat_server.pattern_bytes(5000)),
        ("/outputs", json.dumps({"written": sorted(compat_server.OUTPUT_FILES)}).encode()),
        ("/progress?percent=40&seconds=0.5", b'{"done": true}'),
    ],
    ids=["large-body", "output-files", "progress"],
)
async def test_passthrough_relays_the_body_and_ignores_outputs_and_progress(
    sidecar: Sidecar, attach_server: Any, store: ObjectStore, path: str, expected: bytes
) -> None:
    request_id = new_id("passthrough")
    request = invoke_request(attach_server.url, request_id, path=path, headers=[FEATURE_OFF])
    request.maxDirectResponseSizeBytes = 1000
    request.largeResponseUrl = store.upload_url(request_id)

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    head = post.head()
    assert (head.status, head.body) == (200, expected)
    assert header(post, "NVCF-PERCENT-COMPLETE") == []
    assert store.put_attempts == 0
    assert sidecar.accepted("progress") == 0
    assert not (sidecar.config.base_response_dir / request_id).exists()


# --- container-driven 202s -----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [[], [FEATURE_OFF]], ids=["compatibility", "passthrough"])
async def test_a_container_202_sends_each_poll_to_the_container_until_it_answers(
    sidecar: Sidecar,
    attach_server: Any,
    platform_nc: NATS,
    compat_container: Any,
    headers: list[tuple[str, str]],
) -> None:
    request_id = new_id("container-202")
    request = invoke_request(
        attach_server.url, request_id, path="/accepted?polls=2", headers=headers
    )
    task = start(sidecar, attach_server, request)

    answers = [await attach_server.response(token_of(request))]
    for _ in range(2):
        token = await poll(
            platform_nc, attach_server, request_id, path="/accepted?polls=2&from=poll"
        )
        answers.append(await attach_server.response(token))

    assert await finish(task) is Outcome.DELIVERED
    assert [
        json_body(answer, status) for answer, status in zip(answers, [202, 202, 200], strict=True)
    ] == [
        {"hit": 1},
        {"hit": 2},
        {"hit": 3, "done": True},
    ]
    assert await container_get(compat_container, f"/hits/{request_id}") == [
        ["POST", "/accepted?polls=2"],
        ["GET", "/accepted?polls=2&from=poll"],
        ["GET", "/accepted?polls=2&from=poll"],
    ]
    assert sidecar.accepted("container") == 2
    assert sidecar.accepted("generated") == 0
    assert sidecar.polls_taken() == 2


async def test_outputs_written_after_a_container_202_ship_with_the_final_answer(
    sidecar: Sidecar,
    attach_server: Any,
    platform_nc: NATS,
    compat_container: Any,
    store: ObjectStore,
) -> None:
    # A 202 keeps the response directory (a final answer's empty one goes at once): the
    # container writes its outputs there while it answers the poll.
    request_id = new_id("container-202-outputs")
    request = invoke_request(attach_server.url, request_id, path="/accepted?polls=1")
    request.largeResponseUrl = store.upload_url(request_id)
    task = start(sidecar, attach_server, request)

    first = await attach_server.response(token_of(request))
    token = await poll(platform_nc, attach_server, request_id, path="/accepted?polls=1&outputs=1")
    final = await attach_server.response(token)

    assert await finish(task) is Outcome.DELIVERED
    assert json_body(first, 202) == {"hit": 1}
    assert final.head().status == 302
    entries = zip_entries(store.uploads[request_id][1])
    assert orjson.loads(entries.pop(f"{request_id}.response")) == {"hit": 2, "done": True}
    assert entries == compat_server.OUTPUT_FILES
    assert not (sidecar.config.base_response_dir / request_id).exists()


# --- input assets --------------------------------------------------------------------------------


async def test_input_assets_are_downloaded_for_the_container_and_removed_after(
    sidecar: Sidecar, attach_server: Any, store: ObjectStore
) -> None:
    request_id = new_id("assets")
    store.assets.update({"asset-a": b"alpha", "asset-b": b"bravo"})
    request = invoke_request(attach_server.url, request_id, path="/echo")
    for asset_id in ("asset-a", "asset-b"):
        request.inputAssetReference.add(assetId=asset_id, reference=store.asset_url(asset_id))

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    echo = json_body(post)
    assert echo["asset_ids"] == "asset-a,asset-b"
    assert echo["assets"] == {"asset-a": "alpha", "asset-b": "bravo"}
    assert echoed(echo, "NVCF-ASSET-DIR") == [str(sidecar.config.base_asset_dir / request_id)]
    assert not (sidecar.config.base_asset_dir / request_id).exists()
    assert sidecar.sample("nvcf_worker_asset_downloads_total", result="success") == 2


async def test_a_missing_asset_fails_the_request_before_the_container_is_called(
    sidecar: Sidecar, attach_server: Any, store: ObjectStore, compat_container: Any
) -> None:
    request_id = new_id("asset-404")
    store.assets["present"] = b"here"
    request = invoke_request(attach_server.url, request_id, path="/echo")
    for asset_id in ("present", "missing"):
        request.inputAssetReference.add(assetId=asset_id, reference=store.asset_url(asset_id))

    outcome, post = await run(sidecar, attach_server, request)

    assert outcome is Outcome.WORKER_ERROR
    assert problem(post) == {
        "type": WORKER_PROBLEM,
        "title": "Internal Server Error",
        "status": 500,
        "detail": "Internal error while downloading assets",
    }
    assert await container_get(compat_container, f"/hits/{request_id}") == []
    assert not (sidecar.config.base_asset_dir / request_id).exists()
    assert sidecar.sample("nvcf_worker_asset_downloads_total", result="failure") == 1
