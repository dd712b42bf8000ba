"""One request through the sidecar in passthrough mode, against real servers on loopback.

The container is a real process (`servers/data_path_container.py`); the invocation service's
attach endpoint runs in the test's event loop (`servers/data_path_attach.py`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.modules import load_module
from nvcf_sidecar.protocol import H1_CONTENT_TYPE, OCTET_STREAM_CONTENT_TYPE, encode_request_head
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.request import RequestRunner
from nvcf_sidecar.worker.sessions import HttpSessions

SERVERS = Path(__file__).parent / "servers"
attach_helpers = load_module(SERVERS / "data_path_attach.py")
container_server = load_module(SERVERS / "data_path_container.py")
AttachServer = attach_helpers.AttachServer
ServedBody = attach_helpers.ServedBody
invoke_request = attach_helpers.invoke_request

FUNCTION_ID = "11111111-1111-1111-1111-111111111111"
VERSION_ID = "22222222-2222-2222-2222-222222222222"
KIB = 1024
MIB = 1024 * KIB


@dataclass
class Sidecar:
    config: WorkerConfig
    metrics: WorkerMetrics
    runner: RequestRunner


@pytest.fixture
async def make_sidecar(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    async with AsyncExitStack() as stack:

        async def make(port: int, **overrides: Any) -> Sidecar:
            config = WorkerConfig(
                function_id=FUNCTION_ID,
                function_version_id=VERSION_ID,
                grpc_url="http://127.0.0.1:1",
                function_name="echo-fn",
                inference_port=port,
                base_asset_dir=tmp_path / "assets",
                base_response_dir=tmp_path / "response",
                cloud_provider="AWS",
                instance_type="g5.xlarge",
                zone_name="us-west-2a",
                icms_environment="prod",
                nspect_id="NSPECT-1",
                **overrides,
            )
            sessions = await stack.enter_async_context(HttpSessions(config))
            metrics = WorkerMetrics()
            return Sidecar(config, metrics, RequestRunner(config, metrics, sessions))

        yield make


@pytest.fixture
async def sidecar(make_sidecar: Callable[..., Awaitable[Sidecar]], container: Any) -> Sidecar:
    return await make_sidecar(container.port)


async def _run(sidecar: Sidecar, attach_server: Any, request: Any) -> tuple[Outcome, Any]:
    """Run `request` and return its outcome and the POST attach the platform received."""
    token = request.statelessConfig.connectionConfigs[0].http1Config.responseAuthorizationToken
    attach_server.expect_response(token)
    outcome = await sidecar.runner.run(request)
    return outcome, await attach_server.response(token)


def _echo(post: Any) -> dict[str, Any]:
    head = post.head()
    assert head.status == 200, head
    document: dict[str, Any] = orjson.loads(head.body)
    return document


def _header(echo: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echo["headers"] if key.lower() == name.lower()]


async def test_container_receives_exactly_nvidias_headers_and_the_callers_safe_ones(
    sidecar: Sidecar, attach_server: Any, container: Any
) -> None:
    request = invoke_request(
        attach_server.url,
        "req-headers",
        path="/v1/infer?x=1&y=%2F",
        headers=[
            ("host", "api.nvcf.nvidia.com"),
            ("content-type", "application/json"),
            ("x-custom-id", "abc"),
            ("nvcf-reqid", "spoofed"),
            ("NVCF-LARGE-OUTPUT-DIR", "/etc"),
            ("nvcf-asset-dir", "/root"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("nvcf-invocation-region", "us-east-1"),
            ("nvcf-poll-seconds", "30"),
            ("user-agent", "curl/8.5.0"),
            ("x-custom-id", "def"),
        ],
        body=b'{"a":1}',
        request_time=time.time() - 10.2,
    )

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    echo = _echo(post)
    assert (echo["method"], echo["target"]) == ("POST", "/v1/infer?x=1&y=%2F")
    response_dir = str(sidecar.config.base_response_dir / "req-headers")
    assert echo["headers"] == [
        ["Host", f"127.0.0.1:{container.port}"],
        ["NVCF-REQID", "req-headers"],
        ["NVCF-SUB", "caller-subject"],
        ["NVCF-NCAID", "caller-nca"],
        ["NVCF-FUNCTION-NAME", "echo-fn"],
        ["NVCF-FUNCTION-ID", FUNCTION_ID],
        ["NVCF-FUNCTION-VERSION-ID", VERSION_ID],
        ["NVCF-ASSET-DIR", str(sidecar.config.base_asset_dir / "req-headers")],
        ["NVCF-LARGE-OUTPUT-DIR", response_dir],
        ["NVCF-MAX-RESPONSE-SIZE-BYTES", str(5 * MIB)],
        ["NVCF-NSPECTID", "NSPECT-1"],
        ["NVCF-BACKEND", "AWS"],
        ["NVCF-INSTANCETYPE", "g5.xlarge"],
        ["NVCF-REGION", "us-west-2a"],
        ["NVCF-ENV", "prod"],
        ["NVCF-INVOCATION-REGION", "us-east-1"],
        ["Content-Type", "application/json"],
        ["X-Custom-Id", "abc"],
        ["User-Agent", "curl/8.5.0"],
        ["X-Custom-Id", "def"],
        ["Nvcf-Poll-Seconds", "19"],  # 30 s asked, the item waited 10.2 s in the queue
        ["Content-Length", "7"],
    ]
    assert echo["body_prefix"] == '{"a":1}'


async def _body_case(
    sidecar: Sidecar,
    attach_server: Any,
    request_id: str,
    body: bytes,
    *,
    inline: int,
    declare_length: bool,
    method: str = "POST",
) -> dict[str, Any]:
    headers = [("content-length", str(len(body)))] if declare_length else []
    rest = body[inline:]
    token = f"{request_id}-rest" if len(body) > inline else None
    if token is not None:
        attach_server.serve_body(token, ServedBody(rest, with_length=declare_length))
    request = invoke_request(
        attach_server.url,
        request_id,
        method=method,
        headers=headers,
        body=body[:inline],
        request_token=token,
        response_token=f"{request_id}-response",
    )
    outcome, post = await _run(sidecar, attach_server, request)
    assert outcome is Outcome.DELIVERED
    echo = _echo(post)
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    if token is not None:
        assert [(get.token, get.accept) for get in attach_server.gets] == [
            (token, OCTET_STREAM_CONTENT_TYPE)
        ]
    return echo


async def test_an_empty_post_is_sent_with_content_length_zero(
    sidecar: Sidecar, attach_server: Any
) -> None:
    echo = await _body_case(
        sidecar, attach_server, "empty-post", b"", inline=0, declare_length=False
    )

    assert _header(echo, "content-length") == ["0"]
    assert _header(echo, "transfer-encoding") == []


async def test_an_empty_get_is_sent_without_body_framing(
    sidecar: Sidecar, attach_server: Any
) -> None:
    echo = await _body_case(
        sidecar, attach_server, "empty-get", b"", inline=0, declare_length=False, method="GET"
    )

    assert echo["method"] == "GET"
    assert _header(echo, "content-length") == []
    assert _header(echo, "transfer-encoding") == []


async def test_a_32_kib_inline_body_arrives_intact_without_get_attach(
    sidecar: Sidecar, attach_server: Any
) -> None:
    body = container_server.pattern_bytes(32 * KIB)

    echo = await _body_case(
        sidecar, attach_server, "inline", body, inline=32 * KIB, declare_length=True
    )

    assert _header(echo, "content-length") == [str(32 * KIB)]
    assert attach_server.gets == []


async def test_32_kib_plus_one_byte_comes_partly_from_get_attach(
    sidecar: Sidecar, attach_server: Any
) -> None:
    body = container_server.pattern_bytes(32 * KIB + 1)

    echo = await _body_case(
        sidecar, attach_server, "plus-one", body, inline=32 * KIB, declare_length=True
    )

    assert _header(echo, "content-length") == [str(32 * KIB + 1)]


@pytest.mark.parametrize("declare_length", [True, False])
async def test_a_5_mib_body_streams_through_get_attach(
    sidecar: Sidecar, attach_server: Any, declare_length: bool
) -> None:
    body = hashlib.sha256(b"seed").digest() * (5 * MIB // 32)

    echo = await _body_case(
        sidecar, attach_server, "five-mib", body, inline=32 * KIB, declare_length=declare_length
    )

    if declare_length:
        assert _header(echo, "content-length") == [str(5 * MIB)]
        assert _header(echo, "transfer-encoding") == []
    else:
        assert _header(echo, "content-length") == []
        assert _header(echo, "transfer-encoding") == ["chunked"]


async def test_stream_full_mode_takes_the_whole_request_from_get_attach(
    sidecar: Sidecar, attach_server: Any
) -> None:
    head = encode_request_head(
        "PUT",
        "/v1/full?x=1",
        [
            ("content-type", "text/plain"),
            ("content-length", "11"),
            ("nvcf-invocation-region", "eu-west-1"),
            ("nvcf-reqid", "spoofed"),
            ("x-custom", "abc"),
        ],
    )
    attach_server.serve_body(
        "full-rest", ServedBody(head + b"hello world", content_type=H1_CONTENT_TYPE, chunk_size=9)
    )
    request = invoke_request(
        attach_server.url, "stream-full", method="", path="", body=None, request_token="full-rest"
    )

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    assert attach_server.gets[0].accept == H1_CONTENT_TYPE
    echo = _echo(post)
    assert (echo["method"], echo["target"], echo["body_prefix"]) == (
        "PUT",
        "/v1/full?x=1",
        "hello world",
    )
    assert _header(echo, "NVCF-REQID") == ["stream-full"]
    assert _header(echo, "NVCF-INVOCATION-REGION") == ["eu-west-1"]
    assert _header(echo, "X-Custom") == ["abc"]
    assert _header(echo, "Content-Length") == ["11"]


async def test_post_attach_is_the_containers_response_byte_for_byte_minus_hop_headers(
    make_sidecar: Callable[..., Awaitable[Sidecar]], attach_server: Any, container: Any
) -> None:
    sidecar = await make_sidecar(container.raw_port)
    request = invoke_request(attach_server.url, "fixed", path="/fixed")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    expected = (
        b"HTTP/1.1 201 Made It\r\n"  # the container's own reason phrase is kept
        b"Content-Type: application/json\r\n"
        b"X-Trace-Id: abc123\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\n"
        b"Content-Length: 13\r\n"
        b"\r\n"
        b'{"answer":42}'
    )
    assert post.body == expected
    assert post.headers["Content-Length"] == str(len(expected))
    assert post.headers["Content-Type"] == H1_CONTENT_TYPE
    assert post.headers["Authorization"] == "Bearer response-token"
    assert "Transfer-Encoding" not in post.headers


async def test_sse_events_reach_the_platform_one_by_one_as_they_are_produced(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(
        attach_server.url,
        "sse",
        method="GET",
        path="/sse?n=100&delay=0.01",
        headers=[("accept", "text/event-stream")],
    )

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    head = post.head()
    assert head.status == 200
    assert [name.lower() for name, _ in head.headers].count("content-length") == 0
    assert "transfer-encoding" not in [name.lower() for name, _ in head.headers]
    assert post.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in post.headers
    assert head.body == b"".join(f"data: {index}\n\n".encode() for index in range(100))
    # Relayed as produced: many separate arrivals spread over the ~1 s the events took.
    # A buffering relay would deliver everything in one burst at the end.
    assert len(post.arrivals) >= 50
    assert post.arrivals[-1][0] - post.arrivals[0][0] >= 0.5


async def test_a_container_error_passes_through_unchanged(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(attach_server.url, "error", path="/error")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    head = post.head()
    assert (head.status, head.reason) == (500, "Internal Server Error")
    assert ("Content-Type", "application/json; charset=utf-8") in head.headers
    assert head.body == b'{"error": "model exploded"}'
    assert head.content_length() == len(head.body)


async def test_a_big_response_streams_with_its_exact_length(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(attach_server.url, "big", method="GET", path=f"/big?size={6 * MIB}")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    head = post.head()
    assert head.content_length() == 6 * MIB
    assert head.body == container_server.pattern_bytes(6 * MIB)
    assert int(post.headers["Content-Length"]) == len(post.body)


async def test_a_head_request_keeps_the_declared_length_but_sends_no_body(
    sidecar: Sidecar, attach_server: Any
) -> None:
    request = invoke_request(attach_server.url, "head", method="HEAD", path="/big?size=100")

    outcome, post = await _run(sidecar, attach_server, request)

    assert outcome is Outcome.DELIVERED
    head = post.head()
    assert head.content_length() == 100
    assert head.body == b""
    assert int(post.headers["Content-Length"]) == len(post.body)
