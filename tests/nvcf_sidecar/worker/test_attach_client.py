"""The attach client against a real attach endpoint on loopback: GET and POST, tokens, framing.

Every test runs with the sidecar's default POST of in-memory bodies (the lean client) and with
`NVCF_ATTACH_CLIENT=aiohttp`."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.modules import load_module
from harness.ports import free_port
from nvcf_sidecar.protocol import (
    H1_CONTENT_TYPE,
    OCTET_STREAM_CONTENT_TYPE,
    HTTP1ProtocolConfig,
    encode_request_head,
    encode_response_head,
)
from nvcf_sidecar.worker.attach import (
    AttachClient,
    AttachConnectionError,
    AttachRefused,
    InvalidStreamedRequest,
    ResponseAlreadySent,
)
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.sessions import HttpSessions

SERVERS = Path(__file__).parent / "servers"
attach_helpers = load_module(SERVERS / "data_path_attach.py")
AttachServer = attach_helpers.AttachServer
ServedBody = attach_helpers.ServedBody

CONFIG = WorkerConfig(
    function_id="11111111-1111-1111-1111-111111111111",
    function_version_id="22222222-2222-2222-2222-222222222222",
    grpc_url="http://127.0.0.1:1",
)


@pytest.fixture(params=["lean", "aiohttp"])
async def sessions(request: pytest.FixtureRequest) -> AsyncIterator[HttpSessions]:
    config = dataclasses.replace(CONFIG, lean_attach=request.param == "lean")
    async with HttpSessions(config) as opened:
        yield opened


def _client(
    sessions: HttpSessions,
    target: str,
    *,
    request_token: str | None = "req-token",
    proxy: str | None = None,
) -> AttachClient:
    config = HTTP1ProtocolConfig(targetURI=target, responseAuthorizationToken="resp-token")
    if request_token is not None:
        config.requestAuthorizationToken = request_token
    if proxy is not None:
        config.proxyURI = proxy
    return sessions.attach_client(config)


async def _read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


@pytest.mark.parametrize("with_length", [True, False])
async def test_get_attach_streams_the_rest_of_the_body(
    attach_server, sessions: HttpSessions, with_length: bool
) -> None:
    data = bytes(range(256)) * 1000
    attach_server.serve_body(
        "req-token", ServedBody(data, with_length=with_length, chunk_size=7000)
    )
    client = _client(sessions, attach_server.url)

    async with client.request_body(OCTET_STREAM_CONTENT_TYPE) as rest:
        received = await _read_all(aiter(rest))

    assert received == data
    assert rest.error is None
    [get] = attach_server.gets
    assert (get.token, get.accept, get.status) == ("req-token", OCTET_STREAM_CONTENT_TYPE, 200)


async def test_get_attach_refused_is_an_attach_error_kept_on_the_stream(
    attach_server, sessions: HttpSessions
) -> None:
    client = _client(sessions, attach_server.url, request_token="unknown")

    async with client.request_body(OCTET_STREAM_CONTENT_TYPE) as rest:
        with pytest.raises(AttachRefused) as raised:
            await _read_all(aiter(rest))

    assert raised.value.status == 401
    assert raised.value.direction == "get"
    assert b"invalid or has expired" in raised.value.body
    assert rest.error is raised.value


async def test_get_attach_gives_up_when_no_head_arrives_in_time(
    attach_server, sessions: HttpSessions
) -> None:
    attach_server.serve_body("req-token", ServedBody(b"late", head_delay=1.0))
    client = _client(sessions, attach_server.url)

    async with client.request_body(OCTET_STREAM_CONTENT_TYPE, head_timeout=0.3) as rest:
        with pytest.raises(AttachConnectionError, match=r"no response head within 0\.3 s"):
            await _read_all(aiter(rest))


async def test_get_attach_to_a_closed_port_is_a_connection_error(sessions: HttpSessions) -> None:
    client = _client(sessions, f"http://127.0.0.1:{free_port()}")

    async with client.request_body(OCTET_STREAM_CONTENT_TYPE) as rest:
        with pytest.raises(AttachConnectionError):
            await _read_all(aiter(rest))


async def test_stream_full_get_attach_yields_the_head_then_the_body(
    attach_server, sessions: HttpSessions
) -> None:
    head = encode_request_head(
        "PUT", "/v1/full?x=1", [("content-type", "text/plain"), ("content-length", "11")]
    )
    attach_server.serve_body(
        "req-token", ServedBody(head + b"hello world", content_type=H1_CONTENT_TYPE, chunk_size=5)
    )
    client = _client(sessions, attach_server.url)

    async with client.request_body(H1_CONTENT_TYPE) as rest:
        request_head = await rest.read_request_head()
        body = await _read_all(aiter(rest))

    assert (request_head.method, request_head.target) == ("PUT", "/v1/full?x=1")
    assert request_head.headers == [("content-type", "text/plain"), ("content-length", "11")]
    assert body == b"hello world"
    assert attach_server.gets[0].accept == H1_CONTENT_TYPE


async def test_stream_full_request_with_a_transfer_coding_is_rejected(
    attach_server, sessions: HttpSessions
) -> None:
    data = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    attach_server.serve_body("req-token", ServedBody(data, content_type=H1_CONTENT_TYPE))
    client = _client(sessions, attach_server.url)

    async with client.request_body(H1_CONTENT_TYPE) as rest:
        with pytest.raises(InvalidStreamedRequest, match="unexpected transfer encoding"):
            await rest.read_request_head()
    assert isinstance(rest.error, InvalidStreamedRequest)


async def test_post_attach_of_known_bytes_has_exact_outer_length(
    attach_server, sessions: HttpSessions
) -> None:
    attach_server.expect_response("resp-token")
    client = _client(sessions, attach_server.url, request_token=None)
    head = encode_response_head(200, [("Content-Type", "text/plain")], content_length=5)

    await client.send_response(head, b"hello")

    post = await attach_server.response("resp-token")
    assert post.body == head + b"hello"
    assert post.headers["Authorization"] == "Bearer resp-token"
    assert post.headers["Content-Type"] == H1_CONTENT_TYPE
    assert post.headers["Content-Length"] == str(len(head) + 5)
    assert "Transfer-Encoding" not in post.headers
    assert "User-Agent" not in post.headers
    assert "Accept-Encoding" not in post.headers


async def _stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_post_attach_of_a_stream_of_known_length(
    attach_server, sessions: HttpSessions
) -> None:
    attach_server.expect_response("resp-token")
    client = _client(sessions, attach_server.url, request_token=None)
    head = encode_response_head(200, [], content_length=6)

    await client.send_response(head, _stream(b"abc", b"def"), body_length=6)

    post = await attach_server.response("resp-token")
    assert post.body == head + b"abcdef"
    assert post.headers["Content-Length"] == str(len(head) + 6)


async def test_post_attach_of_a_stream_of_unknown_length_is_chunked(
    attach_server, sessions: HttpSessions
) -> None:
    attach_server.expect_response("resp-token")
    client = _client(sessions, attach_server.url, request_token=None)
    head = encode_response_head(200, [("Content-Type", "text/event-stream")])

    await client.send_response(head, _stream(b"data: 1\n\n", b"data: 2\n\n"))

    post = await attach_server.response("resp-token")
    assert post.body == head + b"data: 1\n\ndata: 2\n\n"
    assert post.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in post.headers
    assert post.head().content_length() is None


async def test_post_attach_refused_and_a_second_response_is_refused_locally(
    attach_server, sessions: HttpSessions
) -> None:
    client = _client(sessions, attach_server.url, request_token=None)
    head = encode_response_head(200, [], content_length=0)

    with pytest.raises(AttachRefused) as raised:
        await client.send_response(head, b"")
    with pytest.raises(ResponseAlreadySent):
        await client.send_response(head, b"")

    assert (raised.value.direction, raised.value.status) == ("post", 401)
    assert client.response_started
    assert [post.status for post in attach_server.posts] == [401]


async def test_a_failing_body_aborts_the_post_so_it_never_looks_complete(
    attach_server, sessions: HttpSessions
) -> None:
    attach_server.expect_response("resp-token")
    client = _client(sessions, attach_server.url, request_token=None)
    head = encode_response_head(200, [], content_length=1000)

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 100
        raise ConnectionResetError("container went away")

    with pytest.raises(AttachConnectionError):
        await client.send_response(head, broken(), body_length=1000)

    post = await attach_server.response("resp-token")
    assert post.error is not None
    assert post.body == head + b"x" * 100


async def test_problem_responses_are_problem_json_with_exact_length(
    attach_server, sessions: HttpSessions
) -> None:
    attach_server.expect_response("resp-token")
    client = _client(sessions, attach_server.url, request_token=None)

    await client.send_problem("nvcf-worker-service", 500, "Internal error while doing things")

    post = await attach_server.response("resp-token")
    head = post.head()
    assert (head.status, head.reason) == (500, "Internal Server Error")
    assert head.headers == [
        ("Content-Type", "application/problem+json"),
        ("Content-Length", str(len(head.body))),
    ]
    assert head.body == (
        b'{"type":"urn:nvcf-worker-service:problem-details:internal-server-error",'
        b'"title":"Internal Server Error","status":500,'
        b'"detail":"Internal error while doing things"}'
    )


async def test_a_post_to_a_closed_port_is_a_connection_error_and_the_response_started(
    sessions: HttpSessions,
) -> None:
    client = _client(sessions, f"http://127.0.0.1:{free_port()}", request_token=None)

    with pytest.raises(AttachConnectionError, match=r"^POST attach: .*(refused|Connect call)"):
        await client.send_response(encode_response_head(204, []), b"")
    assert client.response_started


async def test_posts_of_one_sidecar_share_a_kept_alive_connection(
    attach_server, sessions: HttpSessions
) -> None:
    for token in ("one", "two", "three"):
        attach_server.expect_response(token)
        config = HTTP1ProtocolConfig(targetURI=attach_server.url, responseAuthorizationToken=token)
        await sessions.attach_client(config).send_response(encode_response_head(204, []), b"")
    posts = [await attach_server.response(token) for token in ("one", "two", "three")]
    assert len({post.peer_port for post in posts}) == 1


async def test_proxy_uri_is_used_as_a_forward_proxy_both_ways(
    attach_server, sessions: HttpSessions
) -> None:
    # The target host does not resolve: only going through the proxy reaches anything.
    target = "http://is-pod.invalid:8080"
    attach_server.serve_body("req-token", ServedBody(b"rest"))
    attach_server.expect_response("resp-token")
    client = _client(sessions, target, proxy=attach_server.url)

    async with client.request_body(OCTET_STREAM_CONTENT_TYPE) as rest:
        assert await _read_all(aiter(rest)) == b"rest"
    await client.send_response(encode_response_head(204, []), b"")

    post = await attach_server.response("resp-token")
    assert attach_server.gets[0].target == f"{target}/v2/nvcf/worker/request-attach"
    assert post.target == f"{target}/v2/nvcf/worker/request-attach"
