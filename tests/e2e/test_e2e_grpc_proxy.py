"""gRPC functions through the platform's gRPC entry point (reference nvcf-grpc-sessions §5):
a grpcio client with `authorization` and `function-id` metadata calls the platform's proxy
port; the platform publishes a session item, the real sidecar dials back, and the calls reach a
real grpcio server. Refusals come back as gRPC statuses, as NVIDIA's proxy gives them.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from nvcf_platform.devstack.stack import FunctionSpec, LocalStack, free_port

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

SERVER = Path(__file__).resolve().parent / "servers" / "grpc_echo.py"
OPTIONS = [("grpc.enable_http_proxy", 0)]


@pytest.fixture
def grpc_function(start_stack: Callable[..., LocalStack]) -> tuple[LocalStack, FunctionSpec]:
    port = free_port()
    spec = FunctionSpec(
        command=[sys.executable, str(SERVER), str(port)],
        inference_port=port,
        name="grpc-echo",
        default_invocation_path="/grpc",
        max_request_concurrency=4,
    )
    stack = start_stack([spec], platform_args=("--grpc-proxy-port", "0"))
    return stack, spec


def metadata(stack: LocalStack, spec: FunctionSpec, **changes: str | None) -> list[tuple[str, str]]:
    fields: dict[str, str | None] = {
        "authorization": f"Bearer {stack.api_key}",
        "function-id": spec.function_id,
        **changes,
    }
    return [(name, value) for name, value in fields.items() if value is not None]


def test_unary_server_streaming_and_bidirectional_calls_reach_the_function(
    grpc_function: tuple[LocalStack, FunctionSpec],
) -> None:
    stack, spec = grpc_function
    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as channel:
        sent = metadata(stack, spec)
        assert channel.unary_unary("/echo.Echo/Unary")(b"hello", metadata=sent, timeout=30) == (
            b"hello"
        )
        repeated = channel.unary_stream("/echo.Echo/Repeat")(b"x", metadata=sent, timeout=30)
        assert list(repeated) == [b"x"] * 3

        def messages() -> Iterator[bytes]:
            yield from (b"one", b"two", b"three")

        chat = channel.stream_stream("/echo.Echo/Chat")(messages(), metadata=sent, timeout=30)
        assert list(chat) == [b"one", b"two", b"three"]
    # A named version works the same way.
    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as channel:
        pinned = metadata(stack, spec, **{"function-version-id": spec.version_id})
        answer = channel.unary_unary("/echo.Echo/Unary")(b"v", metadata=pinned, timeout=30)
        assert answer == b"v"


@pytest.mark.parametrize(
    ("changes", "code", "words"),
    [
        ({"function-id": None}, grpc.StatusCode.INVALID_ARGUMENT, "no function-id was passed"),
        ({"authorization": None}, grpc.StatusCode.UNAUTHENTICATED, "no authorization was passed"),
        ({"authorization": "Bearer wrong"}, grpc.StatusCode.UNAUTHENTICATED, "invalid token"),
        (
            {"function-id": str(uuid.uuid4())},
            grpc.StatusCode.NOT_FOUND,
            "failed to open stateful work request",
        ),
    ],
)
def test_refusals_are_the_references_grpc_statuses(
    grpc_function: tuple[LocalStack, FunctionSpec],
    changes: dict[str, Any],
    code: grpc.StatusCode,
    words: str,
) -> None:
    stack, spec = grpc_function
    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as channel:
        call = channel.unary_unary("/echo.Echo/Unary")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"hello", metadata=metadata(stack, spec, **changes), timeout=30)
    error: Any = refused.value
    assert error.code() == code
    assert words in error.details()


def test_a_sidecar_killed_mid_stream_gives_the_caller_a_clean_grpc_error(
    grpc_function: tuple[LocalStack, FunctionSpec],
) -> None:
    stack, spec = grpc_function
    [sidecar] = stack.sidecars(spec.version_id)
    release = threading.Event()

    def messages() -> Iterator[bytes]:
        yield b"first"
        release.wait(30)  # the stream stays open until the test is done

    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as channel:
        chat = channel.stream_stream("/echo.Echo/Chat")(
            messages(), metadata=metadata(stack, spec), timeout=60
        )
        assert next(chat) == b"first"
        sidecar.kill()
        with pytest.raises(grpc.RpcError) as broken:
            next(chat)
        release.set()
    error: Any = broken.value
    # The tunnel closed with the sidecar: the caller's connection ends, not hangs.
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
