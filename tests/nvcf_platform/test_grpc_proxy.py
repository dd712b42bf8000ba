"""The gRPC proxy's own answers, on real loopback sockets: the dial-back listener's refusals
(reference nvcf-grpc-sessions §3) and the refusals of a caller's first request (§5), read back
with `hpack` and the proxy's own frame reader."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import hpack
import pytest

from nvcf_platform.control.registry import FunctionVersion
from nvcf_platform.invocation.exchange import refused
from nvcf_platform.invocation.grpc_proxy import GrpcProxy
from nvcf_platform.invocation.h2frames import PREFACE, read_frame
from nvcf_platform.invocation.invocation import CallerIdentity

FUNCTION_ID = "8f3c3b0e-6d8e-4f0a-9c55-2f1e8b7a6d01"


class _NoQueue:
    async def publish(self, *_: Any) -> None:
        raise AssertionError("no work item may be published for a refused call")


def _resolve(function_id: str, version_id: str | None) -> FunctionVersion:
    raise refused(404, f"Function id '{function_id}': not found")


@pytest.fixture
async def proxy() -> AsyncIterator[GrpcProxy]:
    running = GrpcProxy(
        callers=CallerIdentity(("good-key",), "nca", "subject"),
        resolve=_resolve,
        queue=_NoQueue(),  # type: ignore[arg-type]
        region="local",
    )
    await running.start("127.0.0.1", 0, 0)
    yield running
    await running.stop()


async def dial(proxy: GrpcProxy, head: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.tunnel_port)
    writer.write(head.encode())
    answer = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ("", "401", "HTTP CONNECT request is missing auth"),
        ("Authorization: Bearer t\r\n", "400", "HTTP CONNECT request is missing request id"),
        (
            "Authorization: Bearer t\r\nX-Request-ID: not-a-uuid\r\n",
            "400",
            "HTTP CONNECT request has an invalid request id",
        ),
        (
            f"Authorization: Bearer unknown\r\nX-Request-ID: {uuid.uuid4()}\r\n",
            "403",
            "HTTP CONNECT request is missing valid auth",
        ),
    ],
)
async def test_a_dial_back_without_a_valid_token_is_refused_as_nvidia_refuses_it(
    proxy: GrpcProxy, headers: str, status: str, reason: str
) -> None:
    answer = await dial(proxy, f"CONNECT /v1/proxy HTTP/1.1\r\nHost: p\r\n{headers}\r\n")
    assert answer.startswith(f"HTTP/1.1 {status} {reason}\r\n")
    assert answer.endswith(reason)


async def first_request(proxy: GrpcProxy, headers: list[tuple[str, str]]) -> list[Any]:
    """Send a preface, SETTINGS and one HEADERS; return the frames the proxy answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.client_port)
    block = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/echo.Echo/Unary"),
         (":authority", "proxy"), *headers]
    )  # fmt: skip
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    head = len(block).to_bytes(3, "big") + b"\x01\x04" + (1).to_bytes(4, "big")
    writer.write(PREFACE + settings + head + block)
    frames = []
    try:
        while True:
            frames.append(await asyncio.wait_for(read_frame(reader), 10))
    except asyncio.IncompleteReadError:
        pass
    writer.close()
    return frames


def decoded(frame: Any) -> dict[str, str]:
    return {
        bytes(k).decode(): bytes(v).decode()
        for k, v in hpack.Decoder().decode(frame.payload, raw=True)
    }


async def test_a_grpc_caller_without_function_id_gets_invalid_argument_in_one_headers_frame(
    proxy: GrpcProxy,
) -> None:
    frames = await first_request(
        proxy, [("content-type", "application/grpc"), ("authorization", "Bearer good-key")]
    )
    kinds = [frame.kind for frame in frames]
    assert kinds == [4, 1, 7]  # the proxy's SETTINGS, the trailers-only answer, GOAWAY
    answer = frames[1]
    assert answer.flags & 0x1  # END_STREAM: trailers only
    assert decoded(answer) == {
        ":status": "200",
        "content-type": "application/grpc",
        "grpc-status": "3",
        "grpc-message": "no function-id was passed in the metadata",
    }


async def test_a_caller_that_is_not_grpc_gets_the_http_status_and_a_text_body(
    proxy: GrpcProxy,
) -> None:
    frames = await first_request(proxy, [("content-type", "application/grpc+proto")])
    assert [frame.kind for frame in frames] == [4, 1, 0, 7]
    assert decoded(frames[1])[":status"] == "401"
    assert frames[2].payload == b"no authorization was passed in the metadata"


async def test_an_unknown_function_is_not_found_and_publishes_nothing(proxy: GrpcProxy) -> None:
    frames = await first_request(
        proxy,
        [("content-type", "application/grpc"), ("authorization", "Bearer good-key"),
         ("function-id", FUNCTION_ID)],
    )  # fmt: skip
    answer = decoded(frames[1])
    assert answer["grpc-status"] == "5"
    assert answer["grpc-message"].startswith("failed to open stateful work request: Function id")


async def test_bytes_that_are_not_http2_are_dropped(proxy: GrpcProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.client_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # only its SETTINGS, then closed
