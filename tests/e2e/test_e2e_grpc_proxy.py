"""gRPC functions through the platform's gRPC entry point (reference nvcf-grpc-sessions §5):
a grpcio client with `authorization` and `function-id` metadata calls the platform's proxy
port; the platform publishes a session item, the real sidecar dials back, and the calls reach a
real grpcio server. Refusals come back as gRPC statuses, as NVIDIA's proxy gives them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from e2e.conftest import grpc_echo_function
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

# Each channel its own connection: grpcio shares them between channels of one process by
# default, and a session is one connection.
OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]
DELIVERED = 'nvcf_worker_requests_total{outcome="delivered"}'


@pytest.fixture
def grpc_function(start_stack: Callable[..., LocalStack]) -> tuple[LocalStack, FunctionSpec]:
    spec = grpc_echo_function(max_request_concurrency=4)
    stack = start_stack([spec], platform_args=("--grpc-proxy-port", "0"))
    return stack, spec


def metadata(stack: LocalStack, spec: FunctionSpec, **changes: str | None) -> list[tuple[str, str]]:
    fields: dict[str, str | None] = {
        "authorization": f"Bearer {stack.api_key}",
        "function-id": spec.function_id,
        **changes,
    }
    return [(name, value) for name, value in fields.items() if value is not None]


def open_chat(channel: grpc.Channel, sent: list[tuple[str, str]], release: threading.Event) -> Any:
    """A bidi call that has had its first answer and stays open until `release` is set."""

    def messages() -> Iterator[bytes]:
        yield b"first"
        release.wait(30)

    chat = channel.stream_stream("/echo.Echo/Chat")(messages(), metadata=sent, timeout=60)
    assert next(chat) == b"first"
    return chat


def test_unary_server_streaming_and_bidirectional_calls_reach_the_function(
    grpc_function: tuple[LocalStack, FunctionSpec],
) -> None:
    stack, spec = grpc_function
    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as channel:
        sent = metadata(stack, spec)
        answer, call = channel.unary_unary("/echo.Echo/Unary").with_call(
            b"hello", metadata=sent, timeout=30
        )
        assert answer == b"hello"
        # The session's request id on every answer, and once as NVIDIA's cookie.
        head = dict(call.initial_metadata())
        request_id = str(uuid.UUID(head["nvcf-reqid"]))
        assert head["set-cookie"] == f"nvcf-request-id={request_id}"
        repeated = channel.unary_stream("/echo.Echo/Repeat")(b"x", metadata=sent, timeout=30)
        assert dict(repeated.initial_metadata())["nvcf-reqid"] == request_id  # one session
        assert "set-cookie" not in dict(repeated.initial_metadata())
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
    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as channel:
        chat = open_chat(channel, metadata(stack, spec), release)
        sidecar.kill()
        with pytest.raises(grpc.RpcError) as broken:
            next(chat)
        release.set()
    error: Any = broken.value
    # The tunnel closed with the sidecar: the caller's connection ends, not hangs.
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()


def test_a_second_connection_with_nvcf_reqid_resumes_the_live_session(
    grpc_function: tuple[LocalStack, FunctionSpec], scrape: Any
) -> None:
    stack, spec = grpc_function
    [sidecar] = stack.sidecars(spec.version_id)
    release = threading.Event()
    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as first:
        chat = open_chat(channel=first, sent=metadata(stack, spec), release=release)
        request_id = dict(chat.initial_metadata())["nvcf-reqid"]
        resumed = metadata(stack, spec, **{"nvcf-reqid": request_id})
        deadline = time.monotonic() + 15
        while True:  # the worker registers the session just after its tunnel opens
            try:
                with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as second:
                    answer, call = second.unary_unary("/echo.Echo/Unary").with_call(
                        b"again", metadata=resumed, timeout=30
                    )
                break
            except grpc.RpcError as error:
                # NOT_FOUND until the registration lands; anything else, or too long, fails.
                if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert answer == b"again"
        assert dict(call.initial_metadata())["nvcf-reqid"] == request_id
        release.set()
        assert list(chat) == []
    # Two connections, one session: one slot, one outcome.
    deadline = time.monotonic() + 15
    while scrape(sidecar.metrics_url).get(DELIVERED) != 1:
        assert time.monotonic() < deadline, scrape(sidecar.metrics_url).get(DELIVERED)
        time.sleep(0.1)


def test_resuming_a_session_that_does_not_exist_is_not_found(
    grpc_function: tuple[LocalStack, FunctionSpec],
) -> None:
    stack, spec = grpc_function
    unknown = str(uuid.uuid4())
    with grpc.insecure_channel(stack.grpc_proxy_address, options=OPTIONS) as channel:
        with pytest.raises(grpc.RpcError) as missing:
            channel.unary_unary("/echo.Echo/Unary")(
                b"x", metadata=metadata(stack, spec, **{"nvcf-reqid": unknown}), timeout=30
            )
        error: Any = missing.value
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == f"no existing session found for request id {unknown}"
        # A request id that is not a UUID counts as absent: a new session.
        plain = metadata(stack, spec, **{"nvcf-reqid": "not-a-uuid"})
        assert channel.unary_unary("/echo.Echo/Unary")(b"y", metadata=plain, timeout=30) == b"y"
