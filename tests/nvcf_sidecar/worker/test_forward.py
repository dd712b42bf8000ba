"""What the container receives: worker headers, anti-spoofing, names, URL, body, error sorting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from nvcf_sidecar.protocol import PollBudget, WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.forward import (
    ForwardedBody,
    RequestBodyTooShort,
    canonical_header_name,
    container_failure_problem,
    container_headers,
    container_url,
    first_header,
    request_target_path,
    worker_headers,
)

CONFIG = WorkerConfig(
    function_id="11111111-1111-1111-1111-111111111111",
    function_version_id="22222222-2222-2222-2222-222222222222",
    grpc_url="http://127.0.0.1:1",
    function_name="echo-fn",
    cloud_provider="NGN",
    instance_type="g5.xlarge",
    zone_name="us-west-2a",
    icms_environment="prod",
    nspect_id="NSPECT-1234",
)
WORKER = [("NVCF-REQID", "req-1")]
POLL = PollBudget(target=30.0, shifted=19.7)


def _request(*asset_ids: str) -> WorkerInvokeFunctionRequest:
    request = WorkerInvokeFunctionRequest(
        requestId="req-1", subject="sub-1", ncaId="nca-1", maxDirectResponseSizeBytes=5242880
    )
    for asset_id in asset_ids:
        request.inputAssetReference.add(assetId=asset_id)
    return request


def test_worker_headers_are_nvidias_literal_upper_case_names_and_values() -> None:
    headers = worker_headers(
        CONFIG, _request(), asset_dir="/assets/req-1", response_dir="/response/req-1"
    )

    assert headers == [
        ("NVCF-REQID", "req-1"),
        ("NVCF-SUB", "sub-1"),
        ("NVCF-NCAID", "nca-1"),
        ("NVCF-FUNCTION-NAME", "echo-fn"),
        ("NVCF-FUNCTION-ID", "11111111-1111-1111-1111-111111111111"),
        ("NVCF-FUNCTION-VERSION-ID", "22222222-2222-2222-2222-222222222222"),
        ("NVCF-ASSET-DIR", "/assets/req-1"),
        ("NVCF-LARGE-OUTPUT-DIR", "/response/req-1"),
        ("NVCF-MAX-RESPONSE-SIZE-BYTES", "5242880"),
        ("NVCF-NSPECTID", "NSPECT-1234"),
        ("NVCF-BACKEND", "GFN"),  # NGN is reported as GFN, like NVIDIA's worker
        ("NVCF-INSTANCETYPE", "g5.xlarge"),
        ("NVCF-REGION", "us-west-2a"),
        ("NVCF-ENV", "prod"),
    ]


def test_asset_ids_header_only_when_the_request_has_assets() -> None:
    headers = worker_headers(CONFIG, _request("a1", "a2"), asset_dir="/a", response_dir="/r")

    assert headers[-1] == ("NVCF-FUNCTION-ASSET-IDS", "a1,a2")
    assert len(headers) == 15


def test_caller_copies_of_worker_owned_headers_never_pass_in_any_case() -> None:
    caller = [
        ("nvcf-reqid", "spoofed"),
        ("NVCF-LARGE-OUTPUT-DIR", "/etc"),
        ("Nvcf-Asset-Dir", "/root"),
        ("nvcf-function-asset-ids", "x"),
        ("nVcF-bAcKeNd", "x"),
        ("x-kept", "1"),
    ]

    headers = container_headers(WORKER, caller, POLL)

    assert headers == [("NVCF-REQID", "req-1"), ("X-Kept", "1"), ("Nvcf-Poll-Seconds", "19")]


def test_hop_by_hop_host_and_length_headers_are_dropped() -> None:
    caller = [
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "Basic eA=="),
        ("proxy-connection", "keep-alive"),
        ("trailer", "x"),
        ("host", "api.nvcf.nvidia.com"),
        ("content-length", "12"),
        ("content-type", "application/json"),
    ]

    headers = container_headers(WORKER, caller, POLL)

    assert headers == [
        ("NVCF-REQID", "req-1"),
        ("Content-Type", "application/json"),
        ("Nvcf-Poll-Seconds", "19"),
    ]


def test_invocation_region_is_forwarded_under_its_literal_name_last_value_wins() -> None:
    caller = [("nvcf-invocation-region", "us-east-1"), ("NVCF-Invocation-Region", "eu-west-1")]

    headers = container_headers(WORKER, caller, POLL)

    assert ("NVCF-INVOCATION-REGION", "eu-west-1") in headers
    assert [name for name, _ in headers if name.lower() == "nvcf-invocation-region"] == [
        "NVCF-INVOCATION-REGION"
    ]


def test_poll_seconds_is_replaced_by_the_shifted_budget() -> None:
    caller = [("nvcf-poll-seconds", "30"), ("NVCF-POLL-SECONDS", "45")]

    headers = container_headers(WORKER, caller, PollBudget(target=30.0, shifted=-1.5))

    assert [(n, v) for n, v in headers if n.lower() == "nvcf-poll-seconds"] == [
        ("Nvcf-Poll-Seconds", "-1")
    ]


def test_caller_headers_keep_order_and_duplicates_in_gos_canonical_spelling() -> None:
    caller = [("x-custom-id", "1"), ("accept", "text/event-stream"), ("X-CUSTOM-ID", "2")]

    headers = container_headers(WORKER, caller, POLL)

    assert headers[1:-1] == [
        ("X-Custom-Id", "1"),
        ("Accept", "text/event-stream"),
        ("X-Custom-Id", "2"),
    ]


def test_default_content_type_only_fills_a_missing_one() -> None:
    with_type = container_headers(
        WORKER, [("content-type", "text/plain")], POLL, default_content_type="application/json"
    )
    without = container_headers(WORKER, [], POLL, default_content_type="application/json")

    assert first_header(with_type, "content-type") == "text/plain"
    assert ("Content-Type", "application/json") in without


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("x-custom-id", "X-Custom-Id"),
        ("CONTENT-TYPE", "Content-Type"),
        ("x_under_score", "X_under_score"),
        ("a--b", "A--B"),
        ("9lives", "9lives"),
        ("bad name", "bad name"),  # not a token: unchanged, as Go does
        ("x-ünicode", "x-ünicode"),
    ],
)
def test_canonical_header_name_matches_go(name: str, canonical: str) -> None:
    assert canonical_header_name(name) == canonical


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("", "http://127.0.0.1:8000/"),
        ("/", "http://127.0.0.1:8000/"),
        ("/v1/chat?stream=1&x=%2F", "http://127.0.0.1:8000/v1/chat?stream=1&x=%2F"),
        ("/a//b/../c?q", "http://127.0.0.1:8000/a//b/../c?q"),
        ("?only=query", "http://127.0.0.1:8000/?only=query"),
        ("v1/infer", "http://127.0.0.1:8000/v1/infer"),
        ("/a b/é", "http://127.0.0.1:8000/a%20b/%C3%A9"),
    ],
)
def test_container_url_keeps_path_and_query_verbatim(path: str, url: str) -> None:
    assert container_url("http://127.0.0.1:8000", path) == url


def test_stream_full_targets_become_paths() -> None:
    assert request_target_path("/v1/x?y=1") == "/v1/x?y=1"
    assert request_target_path("http://fn.example.com/v1/x?y=%20") == "/v1/x?y=%20"


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ClientOSError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        aiohttp.ServerTimeoutError("read timed out"),
    ],
)
def test_connection_failures_are_inference_connection_problems(error: Exception) -> None:
    assert container_failure_problem(error) == (
        "inference-connection",
        "Inference connection error while making inference request",
    )


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("bad"),
        ValueError("x"),
    ],
)
def test_other_failures_are_worker_problems(error: Exception) -> None:
    assert container_failure_problem(error) == (
        "nvcf-worker-service",
        "Internal error while making inference request",
    )


async def _chunks(*chunks: bytes, fail: Exception | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise fail


async def test_forwarded_body_is_inline_then_the_rest() -> None:
    body = ForwardedBody(b"inline", _chunks(b"-a", b"", b"-b"), declared_length=10)

    assert [chunk async for chunk in body] == [b"inline", b"-a", b"-b"]
    assert body.sent == 10
    assert body.error is None


async def test_forwarded_body_shorter_than_declared_fails_instead_of_hanging() -> None:
    body = ForwardedBody(b"inline", _chunks(b"-a"), declared_length=100)

    with pytest.raises(RequestBodyTooShort, match="after 8 bytes"):
        _ = [chunk async for chunk in body]
    assert isinstance(body.error, RequestBodyTooShort)


async def test_forwarded_body_remembers_a_failed_source() -> None:
    failure = ConnectionResetError("GET attach broke")
    body = ForwardedBody(b"", _chunks(b"x", fail=failure), declared_length=None)

    with pytest.raises(ConnectionResetError):
        _ = [chunk async for chunk in body]
    assert body.error is failure
