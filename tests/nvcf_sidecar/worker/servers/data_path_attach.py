"""An attach endpoint playing the invocation service's side for the sidecar's data-path tests.

`AttachServer` runs in the test's event loop on a loopback port. GET attach serves the body (or
`+h1` request) registered for a request token; POST attach records what arrives for a registered
response token, chunk by chunk with arrival times. Tokens are single use and checked like the IS
does: an unknown one is answered 401 problem+json. `invoke_request()` builds work items.

Test modules load this file by path (`load_data_path_attach()` in each), as `tests/nvcf_sidecar`
cannot be a package next to the real `nvcf_sidecar`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from multidict import CIMultiDictProxy

from harness.ports import LOOPBACK, free_port
from nvcf_sidecar.protocol import (
    ATTACH_LIVENESS_PATH,
    ATTACH_PATH,
    INVALID_TOKEN_DETAIL,
    OCTET_STREAM_CONTENT_TYPE,
    PROBLEM_CONTENT_TYPE,
    ResponseHead,
    WorkerInvokeFunctionRequest,
    attach_config,
    invocation_problem,
    parse_bearer,
    parse_response_head,
)


@dataclass
class ServedBody:
    """What GET attach answers for one request token."""

    data: bytes
    content_type: str = OCTET_STREAM_CONTENT_TYPE
    with_length: bool = True
    chunk_size: int = 64 * 1024
    head_delay: float = 0.0
    stall: float = 0.0
    """Seconds to hold the body open after the data, before ending it."""


@dataclass
class GetRecord:
    """One GET attach as it arrived."""

    token: str | None
    accept: str | None
    target: str
    status: int
    disconnected: bool = False
    """The worker closed the connection before the whole answer was sent."""


@dataclass
class PostRecord:
    """One POST attach as it arrived, and what was answered."""

    token: str | None
    status: int
    headers: CIMultiDictProxy[str]
    target: str
    body: bytes = b""
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, byte count) of every chunk read from the request body."""
    error: str | None = None
    """Why reading the body failed (the sender broke the request off), else None."""
    peer_port: int | None = None
    """The client port of the connection it came on (one port: one kept-alive connection)."""

    def head(self) -> ResponseHead:
        """The inner response head (its `body` is the rest of the POST body)."""
        return parse_response_head(self.body)


class AttachServer:
    """`async with AttachServer() as server`: an attach endpoint at `server.url`."""

    def __init__(self) -> None:
        self.url = ""
        self.gets: list[GetRecord] = []
        self.posts: list[PostRecord] = []
        self._bodies: dict[str, ServedBody] = {}
        self._expected: dict[str, asyncio.Future[PostRecord]] = {}
        self._runner: web.AppRunner | None = None
        self.liveness = True
        """Answer the liveness route as this project's platform does; False: 404, as NVIDIA's IS."""
        self.liveness_checks: list[str | None] = []

    async def __aenter__(self) -> AttachServer:
        app = web.Application(client_max_size=1024**3)
        app.router.add_get(ATTACH_PATH, self._get)
        app.router.add_post(ATTACH_PATH, self._post)
        app.router.add_get(ATTACH_LIVENESS_PATH, self._liveness)
        # Handlers are cancelled when the worker drops a connection: that is how a test sees it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, LOOPBACK, port).start()
        self.url = f"http://{LOOPBACK}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def serve_body(self, token: str, body: ServedBody) -> None:
        """Answer the GET attach presenting `token` with `body` (once)."""
        self._bodies[token] = body

    def expect_response(self, token: str) -> None:
        """Accept the POST attach presenting `token` (once); others are answered 401."""
        self._expected[token] = asyncio.get_running_loop().create_future()

    async def response(self, token: str, within: float = 10.0) -> PostRecord:
        """The POST attach that presented `token`, once its body has been read."""
        async with asyncio.timeout(within):
            return await self._expected[token]

    async def _get(self, request: web.Request) -> web.StreamResponse:
        token = parse_bearer(request.headers.get("Authorization"))
        served = self._bodies.pop(token, None) if token is not None else None
        record = GetRecord(token, request.headers.get("Accept"), request.raw_path, 200)
        self.gets.append(record)
        if served is None:
            record.status = 401
            return _invalid_token()
        try:
            if served.head_delay:
                await asyncio.sleep(served.head_delay)
            response = web.StreamResponse(headers={"Content-Type": served.content_type})
            if served.with_length:
                response.content_length = len(served.data)
            await response.prepare(request)
            view = memoryview(served.data)
            for start in range(0, len(view), served.chunk_size):
                await response.write(view[start : start + served.chunk_size])
            if served.stall:
                await asyncio.sleep(served.stall)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            record.disconnected = True
            raise
        return response

    async def _liveness(self, request: web.Request) -> web.Response:
        token = parse_bearer(request.headers.get("Authorization"))
        self.liveness_checks.append(token)
        if not self.liveness:
            raise web.HTTPNotFound()
        future = self._expected.get(token) if token is not None else None
        if future is not None and not future.done():
            return web.Response(status=204)
        return web.Response(
            status=410,
            body=invocation_problem(410, INVALID_TOKEN_DETAIL),
            content_type=PROBLEM_CONTENT_TYPE,
        )

    async def _post(self, request: web.Request) -> web.Response:
        token = parse_bearer(request.headers.get("Authorization"))
        future = self._expected.get(token) if token is not None else None
        if future is None or future.done():
            self.posts.append(PostRecord(token, 401, request.headers, request.raw_path))
            return _invalid_token()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        record = PostRecord(
            token, 200, request.headers, request.raw_path, peer_port=peer[1] if peer else None
        )
        self.posts.append(record)
        chunks: list[bytes] = []
        try:
            async for chunk in request.content.iter_any():
                record.arrivals.append((time.monotonic(), len(chunk)))
                chunks.append(chunk)
        except (Exception, asyncio.CancelledError) as error:
            # The worker broke the POST off (seen as a read error or a cancelled handler).
            record.error = f"{type(error).__name__}: {error}"
            record.status = 400
            record.body = b"".join(chunks)
            future.set_result(record)
            if isinstance(error, asyncio.CancelledError):
                raise
            return web.Response(status=record.status)
        record.body = b"".join(chunks)
        future.set_result(record)
        return web.Response(status=record.status)


def _invalid_token() -> web.Response:
    return web.Response(
        status=401,
        body=invocation_problem(401, INVALID_TOKEN_DETAIL),
        content_type=PROBLEM_CONTENT_TYPE,
    )


def invoke_request(
    attach_url: str,
    request_id: str,
    *,
    method: str = "POST",
    path: str = "/echo",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | None = b"",
    request_token: str | None = None,
    response_token: str = "response-token",
    proxy_uri: str | None = None,
    request_time: float | None = None,
    asset_ids: Iterable[str] = (),
) -> WorkerInvokeFunctionRequest:
    """A work item as the IS builds it; `request_time` defaults to now."""
    request = WorkerInvokeFunctionRequest(
        requestId=request_id,
        ncaId="caller-nca",
        subject="caller-subject",
        maxDirectResponseSizeBytes=5 * 1024 * 1024,
        requestMethod=method,
        requestPath=path,
    )
    if body is not None:
        request.requestBody = body
    moment = time.time() if request_time is None else request_time
    request.requestTime.seconds = int(moment)
    request.requestTime.nanos = int((moment - int(moment)) * 1e9)
    for key, value in headers:
        request.requestHeaders.add(key=key, value=value)
    for asset_id in asset_ids:
        request.inputAssetReference.add(assetId=asset_id, reference=f"http://assets/{asset_id}")
    request.statelessConfig.CopyFrom(
        attach_config(attach_url, response_token, request_token=request_token, proxy_uri=proxy_uri)
    )
    return request
