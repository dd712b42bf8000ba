"""Compatibility mode through the whole stack: progress, polling, large outputs, assets, exec.

Caller -> platform -> JetStream -> sidecar -> `servers/compat_container.py` and back, with the
scenarios of NVIDIA's polling, large-response, asset and error-code tests (reference §13) and
the places where we go beyond NVIDIA's worker (torn progress files, oversized progress, unsafe
output files).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.modules import load_module
from harness.ports import free_port
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

SERVERS = Path(__file__).parent / "servers"
CONTAINER = SERVERS / "compat_container.py"
pattern_bytes = load_module(CONTAINER).pattern_bytes
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    directory = tmp_path_factory.mktemp("compat-stack")
    port = free_port()
    spec = FunctionSpec(
        command=[sys.executable, str(CONTAINER), str(port)],
        inference_port=port,
        name="compat",
        default_invocation_path="/invoke",
        max_request_concurrency=8,
    )
    local = LocalStack([spec], work_dir=directory / "stack")
    local.start(timeout=60)
    try:
        yield local
    finally:
        local.stop()
        for process in local.processes():
            sys.stdout.write(f"\n----- {process.name} -----\n{process.log_tail(40)}\n")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=100), trust_env=False, auto_decompress=False
    ) as session:
        yield session


class Answer:
    def __init__(self, response: aiohttp.ClientResponse, body: bytes) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Caller:
    """Invokes the stack's one function and follows status polls like an NVCF client."""

    def __init__(self, stack: LocalStack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.function_id = stack.functions[0].function_id
        self.version_id = stack.functions[0].version_id

    def headers(self, **extra: str) -> dict[str, str]:
        return {**self.stack.auth_headers, **extra}

    async def invoke(self, body: bytes = b"{}", **headers: str) -> Answer:
        async with self.http.post(
            self.stack.invoke_url(self.function_id),
            data=body,
            headers=self.headers(**headers),
            allow_redirects=False,
        ) as response:
            return Answer(response, await response.read())

    async def status(self, request_id: str, **headers: str) -> Answer:
        url = f"{self.stack.base_url}/v2/nvcf/pexec/status/{request_id}"
        async with self.http.get(
            url, headers=self.headers(**headers), allow_redirects=False
        ) as response:
            return Answer(response, await response.read())

    async def follow(self, first: Answer, *, limit: int = 40, **headers: str) -> list[Answer]:
        """Every answer from `first` on, polling while it is a 202 (bounded)."""
        answers = [first]
        request_id = first.headers["nvcf-reqid"]
        while answers[-1].status == 202:
            assert len(answers) < limit, "too many 202s"
            answers.append(await self.status(request_id, **headers))
        return answers

    async def download(self, location: str) -> tuple[bytes, str]:
        async with self.http.get(location) as response:
            assert response.status == 200, await response.read()
            return await response.read(), response.headers["Content-Type"]


@pytest.fixture
def caller(stack: LocalStack, http: aiohttp.ClientSession) -> Caller:
    return Caller(stack, http)


def progress_answers(answers: list[Answer]) -> list[tuple[int, Any]]:
    return [
        (int(a.headers["NVCF-PERCENT-COMPLETE"]), a.json())
        for a in answers
        if a.status == 202 and "NVCF-PERCENT-COMPLETE" in a.headers
    ]


async def test_three_progress_writes_are_three_202s_in_order(caller: Caller) -> None:
    first = await caller.invoke(**{"X-E2e-Action": "progress", "NVCF-POLL-SECONDS": "5"})
    answers = await caller.follow(first)
    assert [a.status for a in answers][-1] == 200
    assert answers[-1].json() == {"done": True, "steps": 3}
    assert progress_answers(answers) == [
        (25, {"step": 1, "text": "x" * 100}),
        (50, {"step": 2, "text": "x" * 200}),
        (75, {"step": 3, "text": "x" * 300}),
    ]
    for answer in answers[:-1]:
        assert answer.headers["nvcf-status"] == "in-progress"
        assert answer.headers["Content-Type"] == "application/json"
    assert answers[-1].headers["nvcf-status"] == "fulfilled"


async def test_in_place_writer_never_yields_a_torn_answer(caller: Caller) -> None:
    headers = {
        "X-E2e-Action": "progress",
        "X-E2e-Writer": "inplace",
        "X-E2e-Steps": "6",
        "X-E2e-Rewrites": "40",
        "X-E2e-Interval-Ms": "150",
        "NVCF-POLL-SECONDS": "5",
    }
    answers = await caller.follow(await caller.invoke(**headers))
    assert answers[-1].status == 200
    seen = progress_answers(answers)
    assert seen, "no progress relayed"
    percents = [percent for percent, _ in seen]
    assert percents == sorted(percents)
    for percent, body in seen:
        step = body["step"]
        assert body == {"step": step, "text": "x" * (step * 100)}
        assert percent == step * 100 // 7
    assert all("NVCF-PROGRESS-ERROR" not in a.headers for a in answers)


async def test_oversized_progress_is_reported_not_relayed(caller: Caller) -> None:
    first = await caller.invoke(
        **{"X-E2e-Action": "big-progress", "X-E2e-Seconds": "2.5", "NVCF-POLL-SECONDS": "1"}
    )
    answers = await caller.follow(first)
    assert answers[-1].status == 200
    assert answers[-1].json() == {"ok": 1}
    assert not progress_answers(answers)
    reported = [a.headers.get("NVCF-PROGRESS-ERROR") for a in answers if a.status == 202]
    assert any(text and "250000" in text for text in reported), reported
    assert all(len(a.body) < 1000 for a in answers)


async def test_generated_202_then_result_held_then_fetched_once(caller: Caller) -> None:
    first = await caller.invoke(
        **{"X-E2e-Action": "sleep", "X-E2e-Seconds": "2", "NVCF-POLL-SECONDS": "1"}
    )
    assert first.status == 202
    assert first.headers["Content-Length"] == "0"
    assert first.headers["nvcf-status"] == "in-progress"
    request_id = first.headers["nvcf-reqid"]
    await asyncio.sleep(3)  # nobody polls: the worker holds the result
    final = await caller.status(request_id)
    assert final.status == 200, final.body
    assert final.json() == {"slept": 2.0}
    assert final.headers["nvcf-reqid"] == request_id
    again = await caller.status(request_id)
    assert again.status == 404
    assert again.headers["Content-Type"] == "application/problem+json"


async def test_unknown_request_id_is_404(caller: Caller) -> None:
    answer = await caller.status("3f1c7f7e-3f0c-4f8c-9a43-6f1b2f0a9d11")
    assert answer.status == 404


@pytest.mark.parametrize("status", [500, 422])
async def test_container_error_becomes_problem_json(caller: Caller, status: int) -> None:
    answer = await caller.invoke(**{"X-E2e-Action": "error", "X-E2e-Status": str(status)})
    assert answer.status == status
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status
    assert problem["detail"] == "model exploded"
    assert problem["type"].startswith("urn:inference-service:problem-details:")
    assert answer.headers["nvcf-status"] == "errored"


async def test_body_over_5_mib_arrives_as_zip_behind_302(caller: Caller) -> None:
    length = 6 * MIB + 123
    answer = await caller.invoke(
        **{"X-E2e-Action": "large-body", "X-E2e-Length": str(length), "NVCF-POLL-SECONDS": "30"}
    )
    assert answer.status == 302, answer.body
    assert answer.headers["nvcf-status"] == "fulfilled"
    request_id = answer.headers["nvcf-reqid"]
    data, content_type = await caller.download(answer.headers["Location"])
    assert content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [f"{request_id}.response"]
        assert archive.read(f"{request_id}.response") == pattern_bytes(length)


async def test_output_files_ship_safely_as_zip(caller: Caller) -> None:
    answer = await caller.invoke(**{"X-E2e-Action": "outputs", "NVCF-POLL-SECONDS": "30"})
    assert answer.status == 302, answer.body
    request_id = answer.headers["nvcf-reqid"]
    data, _ = await caller.download(answer.headers["Location"])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        assert names[0] == f"{request_id}.response"
        assert sorted(names[1:]) == ["result.json", "sub/data.bin"]
        assert json.loads(archive.read(names[0])) == {"written": ["result.json", "sub/data.bin"]}
        assert json.loads(archive.read("result.json")) == {"answer": 42}
        assert archive.read("sub/data.bin") == pattern_bytes(MIB)


async def test_nvidia_helper_pattern_works_unmodified(caller: Caller) -> None:
    first = await caller.invoke(**{"X-E2e-Action": "nvidia-helpers", "NVCF-POLL-SECONDS": "5"})
    answers = await caller.follow(first)
    assert [p for p, _ in progress_answers(answers)] == [25, 50, 75]
    assert [body for _, body in progress_answers(answers)] == [{"p": 25}, {"p": 50}, {"p": 75}]
    final = answers[-1]
    assert final.status == 302
    data, _ = await caller.download(final.headers["Location"])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        request_id = final.headers["nvcf-reqid"]
        assert archive.namelist() == [f"{request_id}.response", "image.png"]
        assert archive.read("image.png") == b"\x89PNG\r\n" + bytes(range(256)) * 64


async def test_container_driven_202s_are_polled_through_the_container(caller: Caller) -> None:
    headers = {"X-E2e-Action": "accepted", "X-E2e-Polls": "3", "NVCF-POLL-SECONDS": "5"}
    answers = await caller.follow(await caller.invoke(**headers), **headers)
    assert [a.status for a in answers] == [202, 202, 202, 200]
    assert [a.json() for a in answers[:3]] == [{"left": 3}, {"left": 2}, {"left": 1}]
    assert answers[-1].json()["polled"] == 3


async def test_container_driven_202s_in_passthrough(caller: Caller) -> None:
    headers = {
        "X-E2e-Action": "accepted",
        "X-E2e-Polls": "2",
        "nvcf-feature-disable-worker-compatibility": "true",
    }
    answers = await caller.follow(await caller.invoke(**headers), **headers)
    assert [a.status for a in answers] == [202, 202, 200]
    assert answers[-1].json()["polled"] == 2


async def test_exec_wraps_the_answer(caller: Caller) -> None:
    url = f"{caller.stack.base_url}/v2/nvcf/exec/functions/{caller.function_id}"
    document = {"requestHeader": {"pollDurationSeconds": 10}, "requestBody": {"x": [1, 2]}}
    async with caller.http.post(url, json=document, headers=caller.headers()) as response:
        assert response.status == 200, await response.read()
        wrapped = await response.json()
    assert wrapped["status"] == "fulfilled"
    assert wrapped["percentComplete"] == 100
    assert wrapped["response"] == {"body": {"x": [1, 2]}}
    assert None not in wrapped.values()


async def test_input_assets_reach_the_container(caller: Caller) -> None:
    base = caller.stack.base_url
    contents = [b"first asset " * 1000, bytes(range(256)) * 4096]
    ids = []
    for data in contents:
        async with caller.http.post(
            f"{base}/v2/nvcf/assets",
            json={"contentType": "application/octet-stream", "description": "e2e"},
            headers=caller.headers(),
        ) as response:
            assert response.status == 200, await response.read()
            created = await response.json()
        async with caller.http.put(
            created["uploadUrl"], data=data, headers={"Content-Type": "application/octet-stream"}
        ) as response:
            assert response.status == 200, await response.read()
        ids.append(created["assetId"])
    async with caller.http.post(
        caller.stack.invoke_url(caller.function_id),
        data=b"{}",
        headers=[
            *caller.headers(**{"X-E2e-Action": "assets"}).items(),
            ("NVCF-INPUT-ASSET-REFERENCES", ids[0]),
            ("NVCF-INPUT-ASSET-REFERENCES", f" , {ids[1]}"),
        ],
    ) as response:
        assert response.status == 200, await response.read()
        seen = await response.json()
    assert seen["ids"] == ",".join(ids)
    assert seen["files"] == {
        i: hashlib.sha256(d).hexdigest() for i, d in zip(ids, contents, strict=True)
    }
    asset_root = caller.stack.asset_dir(caller.version_id)
    for _ in range(100):  # removed once the answer is delivered (bounded wait)
        if not any(asset_root.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert list(asset_root.iterdir()) == []


async def test_missing_asset_is_404(caller: Caller) -> None:
    missing = "0b1e6f5e-6c4b-4f57-9d2c-1f0e7a1b2c3d"
    answer = await caller.invoke(
        **{"X-E2e-Action": "assets", "NVCF-INPUT-ASSET-REFERENCES": missing}
    )
    assert answer.status == 404
    assert answer.json()["detail"] == f"NotFound error: failed to find asset {missing}"


@pytest.mark.timeout(300)
async def test_large_output_of_hundreds_of_mb_is_byte_identical(caller: Caller) -> None:
    length = 200 * MIB
    answer = await caller.invoke(
        **{"X-E2e-Action": "outputs", "X-E2e-Length": str(length), "NVCF-POLL-SECONDS": "120"}
    )
    assert answer.status == 302, answer.body
    zipped = Path(caller.stack.work_dir) / "download.zip"
    async with caller.http.get(answer.headers["Location"]) as response:
        assert response.status == 200
        with zipped.open("wb") as file:
            async for chunk in response.content.iter_chunked(MIB):
                file.write(chunk)
    size = zipped.stat().st_size
    with zipfile.ZipFile(zipped) as archive:
        entry = hashlib.sha256()
        with archive.open("sub/data.bin") as member:
            while block := member.read(MIB):
                entry.update(block)
    zipped.unlink()
    assert entry.hexdigest() == hashlib.sha256(pattern_bytes(length)).hexdigest()
    sidecar = caller.stack.sidecars(caller.version_id)[0]
    peak_kib = _peak_rss_kib(sidecar.pid)
    assert peak_kib < 200 * 1024, f"sidecar peak RSS {peak_kib} KiB while shipping {size} bytes"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")
