"""What the lean attach listener (`attach_listener.py`) answers on each route: the same as
`attach.py` on aiohttp's server (reference §4).

- `GET /v2/nvcf/worker/request-attach/liveness`: 204 while the response token's caller waits,
  else 410 problem.
- `GET /v2/nvcf/worker/request-attach`: the caller's body after the inline part, for a request
  token.
- `POST /v2/nvcf/worker/request-attach`: the worker's response (an HTTP/1.1 head, then the
  body) handed to the waiting caller; answered 200 once the caller's body was sent or dropped.

Without an Authorization header: the plain-text 401; unknown paths 404 and other methods 405
problems; unknown or used tokens the 401 problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Final, Protocol

from nvcf_platform.invocation.attach import STREAM_ERRORS, read_response_head, worker_response
from nvcf_platform.invocation.problems import MISSING_AUTHORIZATION
from nvcf_platform.invocation.tokens import (
    AttachTokens,
    RequestBody,
    ResponseSlot,
)
from nvcf_sidecar.protocol import (
    ATTACH_LIVENESS_PATH,
    ATTACH_PATH,
    FORWARD_FAILED_DETAIL,
    INVALID_TOKEN_DETAIL,
    OCTET_STREAM_CONTENT_TYPE,
    H1Error,
    RequestHead,
    ResponseHead,
    ResponseHeadParser,
    parse_bearer,
)
from nvcf_sidecar.worker.lean_response import LeanResponse

__all__ = ["AttachRoutes", "Exchange", "header"]

_ALLOWED: Final = {ATTACH_PATH: ("GET", "POST"), ATTACH_LIVENESS_PATH: ("GET",)}
_TEXT: Final = b"text/plain; charset=utf-8"
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_OK_EMPTY: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
_NO_CONTENT: Final = b"HTTP/1.1 204 No Content\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"

_log = logging.getLogger(__name__)


class Exchange(Protocol):
    """The connection a request came on, as the routes use it (`attach_listener.Connection`)."""

    keep_alive: bool

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def abort(self) -> None: ...
    def start_task(self, coroutine: Coroutine[Any, Any, None]) -> None: ...
    def read_body(self, head: RequestHead, length: int | None) -> LeanResponse: ...
    def skip_body(self, head: RequestHead, length: int | None) -> None: ...
    def answer(self, status: int, content_type: bytes, body: bytes, extra: bytes = b"") -> None: ...
    def answer_problem(
        self, status: int, detail: str | None = None, extra: bytes = b""
    ) -> None: ...
    def write_answer(self, start: bytes, body: bytes) -> None: ...
    def closing_header(self) -> bytes: ...
    def date_header(self) -> bytes: ...
    def finish_exchange(self) -> None: ...


class AttachRoutes:
    """The three attach routes over the token table the pexec handlers mint into."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: AttachTokens) -> None:
        self._tokens = tokens

    def serve(self, exchange: Exchange, head: RequestHead, length: int | None) -> None:
        """Answer one request whose head is in (`length`: its body's, None = chunked)."""
        path = head.target.split("?", 1)[0]
        authorization = header(head, "authorization")
        token = parse_bearer(authorization)
        if path == ATTACH_PATH and head.method == "POST" and token is not None:
            slot = self._tokens.claim_response(token)
            if slot is not None:
                self._post(exchange, head, slot, length)
                return
        exchange.skip_body(head, length)
        allowed = _ALLOWED.get(path)
        if authorization is None:
            exchange.answer(401, _TEXT, MISSING_AUTHORIZATION.encode())
        elif allowed is None:
            exchange.answer_problem(404)
        elif head.method not in allowed:
            exchange.answer_problem(405, extra=b"Allow: %b\r\n" % ",".join(allowed).encode())
        elif path == ATTACH_LIVENESS_PATH:
            if token is not None and self._tokens.response_waiting(token):
                exchange.write_answer(_NO_CONTENT, b"")
            else:
                exchange.answer_problem(410, INVALID_TOKEN_DETAIL)
        elif head.method == "GET":
            body = None if token is None else self._tokens.claim_request(token)
            if body is None:
                exchange.answer_problem(401, INVALID_TOKEN_DETAIL)
            else:
                exchange.start_task(_stream_request_body(exchange, body))
        else:
            exchange.answer_problem(401, INVALID_TOKEN_DETAIL)

    def _post(
        self, exchange: Exchange, head: RequestHead, slot: ResponseSlot, length: int | None
    ) -> None:
        body = exchange.read_body(head, length)
        if (header(head, "expect") or "").lower() == "100-continue":
            exchange.write(_CONTINUE)
        # The usual case: the inner head came whole with the request's, and is handled now.
        parser = ResponseHeadParser()
        first = body.read_nowait()
        try:
            inner = parser.feed(first) if first else None
        except H1Error as error:
            _inner_head_failed(exchange, slot, body, error)
            return
        if inner is None:
            exchange.start_task(_read_inner_head(exchange, slot, body, parser, len(first), length))
        else:
            _deliver(exchange, slot, body, inner, len(first) - len(inner.body), length)


def header(head: RequestHead, name: str) -> str | None:
    """The first value of header `name` (lower case), else None."""
    for key, value in head.headers:
        if key.lower() == name:
            return value
    return None


def _inner_head_failed(
    exchange: Exchange, slot: ResponseSlot, body: LeanResponse, error: H1Error
) -> None:
    _log.warning(
        "bad response head from the worker",
        extra={"request_id": slot.request_id, "error": str(error)},
    )
    slot.fail(error.detail)
    body.close()
    exchange.answer_problem(400, error.detail)


async def _read_inner_head(
    exchange: Exchange,
    slot: ResponseSlot,
    body: LeanResponse,
    parser: ResponseHeadParser,
    fed: int,
    outer_length: int | None,
) -> None:
    """The rest of an inner response head that did not come with the request's."""
    try:
        head, head_length = await read_response_head(body, parser, fed)
    except H1Error as error:
        _inner_head_failed(exchange, slot, body, error)
        return
    except STREAM_ERRORS as error:
        detail = f"Failed to read response body: {error!r}"
        slot.fail(detail)
        body.close()
        exchange.answer_problem(500, detail)
        return
    except asyncio.CancelledError:
        slot.fail("the platform stopped")
        exchange.abort()
        raise
    _deliver(exchange, slot, body, head, head_length, outer_length)


def _deliver(
    exchange: Exchange,
    slot: ResponseSlot,
    body: LeanResponse,
    head: ResponseHead,
    head_length: int,
    outer_length: int | None,
) -> None:
    """Hand the worker's response to the waiting caller; the POST is answered 200 once the
    caller's body was sent or dropped (`WorkerResponse.finish`), as `attach.py` does."""

    def relayed() -> None:
        body.close()
        exchange.write_answer(_OK_EMPTY, b"")

    try:
        response = worker_response(head, head_length, outer_length, body, relayed)
    except H1Error as error:
        _inner_head_failed(exchange, slot, body, error)
        return
    extra = {"request_id": slot.request_id}
    if not slot.deliver(response):
        _log.warning("worker response arrived after the caller's wait", extra=extra)
        body.close()
        exchange.answer_problem(500, FORWARD_FAILED_DETAIL)
        return
    _log.debug("worker response head delivered", extra={**extra, "status": head.status})


async def _stream_request_body(exchange: Exchange, body: RequestBody) -> None:
    """The GET attach: 200 and the caller's body after the inline part, with its length when
    the caller declared one, else chunked; a body that breaks off drops the connection so the
    worker sees it."""
    extra = {"request_id": body.request_id}
    chunked = body.length is None
    try:
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if chunked
            else b"Content-Length: %d\r\n" % (body.length or 0)
        )
        exchange.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\n%b%b%b\r\n"
            % (
                OCTET_STREAM_CONTENT_TYPE.encode(),
                framing,
                exchange.date_header(),
                exchange.closing_header(),
            )
        )
        try:
            async for chunk in body.chunks():
                if chunk:
                    exchange.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await exchange.drain()
        except STREAM_ERRORS as error:
            _log.warning("caller body broke off", extra={**extra, "error": repr(error)})
            exchange.abort()
            return
        except asyncio.CancelledError:
            # The caller's request ended (`RequestBody.close`): what the worker got must not
            # pass for the whole body.
            exchange.abort()
            raise
        if chunked:
            exchange.write(_LAST_CHUNK)
        _log.debug("request body streamed to the worker", extra=extra)
        exchange.finish_exchange()
    finally:
        body.finish()
