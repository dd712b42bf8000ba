"""The worker-facing attach endpoints `GET|POST /v2/nvcf/worker/request-attach` (reference §4).

GET streams the rest of a caller's body to the worker; POST carries the worker's HTTP/1.1-framed
response to the waiting pexec handler and stays open until the caller has the whole body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from nvcf_platform.invocation.problems import abort_response, problem_response
from nvcf_platform.invocation.tokens import (
    STREAM_IDLE_TIMEOUT,
    AttachTokens,
    ChunkReader,
    WorkerResponse,
)
from nvcf_sidecar.protocol import (
    ATTACH_LIVENESS_PATH,
    ATTACH_PATH,
    FORWARD_FAILED_DETAIL,
    INVALID_TOKEN_DETAIL,
    OCTET_STREAM_CONTENT_TYPE,
    H1Error,
    ResponseHead,
    ResponseHeadParser,
    parse_bearer,
)

__all__ = [
    "STREAM_ERRORS",
    "AttachEndpoints",
    "HeadReader",
    "read_response_head",
    "worker_response",
]

STREAM_ERRORS: Final = (ConnectionError, TimeoutError, HttpProcessingError)
"""What reading a peer's body can raise: disconnects, idle timeouts, broken framing."""

_log = logging.getLogger(__name__)


class AttachEndpoints:
    """Both attach routes over one token table (shared with the pexec handler that mints)."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: AttachTokens) -> None:
        self._tokens = tokens

    def register(self, router: web.UrlDispatcher) -> None:
        """Add `GET` and `POST /v2/nvcf/worker/request-attach`, and its `/liveness` check."""
        router.add_get(ATTACH_PATH, self.get_request_attach)
        router.add_post(ATTACH_PATH, self.post_request_attach)
        router.add_get(ATTACH_LIVENESS_PATH, self.response_liveness, allow_head=False)

    async def response_liveness(self, request: web.Request) -> web.Response:
        """204 while the response token's caller still waits, else 410 problem (nothing used).

        This platform's addition (NVIDIA's IS answers 404): a worker asks before running a
        redelivered work item whose first worker may already have answered.
        """
        token = parse_bearer(request.headers.get("Authorization"))
        if token is not None and self._tokens.response_waiting(token):
            return web.Response(status=204)
        return problem_response(410, INVALID_TOKEN_DETAIL)

    async def get_request_attach(self, request: web.Request) -> web.StreamResponse:
        """Stream the caller's body after the inline part, for a request token.

        200 `application/octet-stream`, with Content-Length when the caller declared one, else
        chunked. If the caller's body breaks off, the connection is aborted so the worker sees it.
        """
        token = parse_bearer(request.headers.get("Authorization"))
        body = None if token is None else self._tokens.claim_request(token)
        if body is None:
            return problem_response(401, INVALID_TOKEN_DETAIL)
        extra = {"request_id": body.request_id}
        try:
            response = web.StreamResponse(status=200)
            response.content_type = OCTET_STREAM_CONTENT_TYPE
            if body.length is not None:
                response.content_length = body.length
            await response.prepare(request)
            try:
                async for chunk in body.chunks():
                    await response.write(chunk)
            except STREAM_ERRORS as error:
                _log.warning("caller body broke off", extra={**extra, "error": repr(error)})
                abort_response(request)
                return response
            await response.write_eof()
            _log.debug("request body streamed to the worker", extra=extra)
            return response
        finally:
            body.finish()

    async def post_request_attach(self, request: web.Request) -> web.StreamResponse:
        """Take the worker's response for a response token and relay it to the waiting caller.

        The body must start with an HTTP/1.1 response head (no Transfer-Encoding, at most 64
        headers, within the head-size limit); a bad head is 400 and the caller gets 500. Answers
        200 once the caller-facing body was sent or dropped; 500 "Failed to forward response" when
        the pexec handler no longer waits.
        """
        token = parse_bearer(request.headers.get("Authorization"))
        slot = None if token is None else self._tokens.claim_response(token)
        if slot is None:
            return problem_response(401, INVALID_TOKEN_DETAIL)
        extra = {"request_id": slot.request_id}
        try:
            head, head_length = await read_response_head(request.content)
            response = worker_response(head, head_length, request.content_length, request.content)
        except H1Error as error:
            _log.warning("bad response head from the worker", extra={**extra, "error": str(error)})
            slot.fail(error.detail)
            return problem_response(400, error.detail)
        except STREAM_ERRORS as error:
            detail = f"Failed to read response body: {error!r}"
            slot.fail(detail)
            return problem_response(500, detail)
        if not slot.deliver(response):
            _log.warning("worker response arrived after the caller's wait", extra=extra)
            return problem_response(500, FORWARD_FAILED_DETAIL)
        _log.debug("worker response head delivered", extra={**extra, "status": head.status})
        # Bounded by the relay: it ends when the body ends, stalls past the idle timeout, or the
        # caller leaves, and it sets `finished` in every case.
        await response.finished.wait()
        return web.Response(status=200)


class HeadReader(ChunkReader, Protocol):
    """A POST body as both attach servers read it (aiohttp's `StreamReader`, `LeanResponse`)."""

    def read_nowait(self) -> bytes: ...


async def read_response_head(
    reader: HeadReader, parser: ResponseHeadParser | None = None, fed: int = 0
) -> tuple[ResponseHead, int]:
    """The inner response head and how many bytes of the stream it took (body bytes excluded).

    `parser` and `fed`: a parse already begun on the first `fed` bytes.
    """
    parser = parser or ResponseHeadParser()
    while True:
        # What already arrived is taken without a wait: a small answer comes whole.
        chunk = reader.read_nowait() or await asyncio.wait_for(
            reader.readany(), STREAM_IDLE_TIMEOUT
        )
        if not chunk:
            parser.feed_eof()  # raises IncompleteHead: the stream ended inside the head
            raise AssertionError("feed_eof returned before a complete head")
        fed += len(chunk)
        head = parser.feed(chunk)
        if head is not None:
            return head, fed - len(head.body)


def worker_response(
    head: ResponseHead,
    head_length: int,
    outer_length: int | None,
    reader: ChunkReader,
    on_finish: Callable[[], None] | None = None,
) -> WorkerResponse:
    """The worker's response from its inner head; H1Error for a bad Content-Length there.

    Without an inner length, the outer framing still bounds the body, as hyper's size hint does.
    """
    length = head.content_length()
    if length is None and outer_length is not None:
        length = max(outer_length - head_length, 0)
    return WorkerResponse(
        status=head.status,
        reason=head.reason,
        headers=head.headers,
        content_length=length,
        first_chunk=head.body,
        reader=reader,
        on_finish=on_finish,
    )
