"""The worker's side of the attach protocol: the rest of a request by GET, the response by POST (§4).

One `AttachClient` serves one work item (or one poll) and sends at most one response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from types import TracebackType
from typing import Final

import aiohttp

from nvcf_sidecar.protocol import (
    H1_CONTENT_TYPE,
    PROBLEM_CONTENT_TYPE,
    H1Error,
    HTTP1ProtocolConfig,
    RequestHead,
    RequestHeadParser,
    attach_liveness_url,
    attach_url,
    bearer,
    encode_response_head,
    post_attach_content_length,
    worker_problem,
)
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.lean_http import LeanHttpClient, LeanHttpError

__all__ = [
    "GET_HEAD_TIMEOUT_SECONDS",
    "LIVENESS_TIMEOUT_SECONDS",
    "AttachClient",
    "AttachConnectionError",
    "AttachError",
    "AttachFactory",
    "AttachRefused",
    "InvalidStreamedRequest",
    "RequestBodyStream",
    "ResponseAlreadySent",
]

GET_HEAD_TIMEOUT_SECONDS: Final = 5.0
"""How long the platform has to answer GET attach with a head; the body then streams unbounded."""

_ERROR_BODY_LIMIT: Final = 1024
LIVENESS_TIMEOUT_SECONDS: Final = 2.0
"""How long a redelivered item waits to learn whether its response is still wanted."""


class AttachError(WorkerError):
    """An attach call to the platform failed; `direction` is `get` (request) or `post` (response)."""

    def __init__(self, direction: str, message: str) -> None:
        self.direction = direction
        super().__init__(f"{direction.upper()} attach: {message}")


class AttachRefused(AttachError):
    """The platform answered an attach call with a status other than 200."""

    def __init__(self, direction: str, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        text = body.decode(errors="replace").strip()
        super().__init__(
            direction, f"the platform answered {status}" + (f": {text}" if text else "")
        )


class AttachConnectionError(AttachError):
    """An attach call could not be made, timed out, or its connection broke off."""


class InvalidStreamedRequest(AttachError):
    """A stream-full GET attach did not carry a usable HTTP/1.1 request head."""

    def __init__(self, error: H1Error) -> None:
        self.error = error
        super().__init__("get", f"invalid streamed request: {error}")


class ResponseAlreadySent(AttachError):
    """A second response was attempted for the same request."""

    def __init__(self) -> None:
        super().__init__("post", "response already sent")


class RequestBodyStream:
    """The rest of one request, fetched by GET attach in the background from `async with` on.

    The GET starts when the block is entered; the platform has `head_timeout` seconds to answer
    with a head, after which the body streams without deadline. Iterating yields the body bytes
    (after the request head, in stream-full mode, once `read_request_head` has taken it). Leaving
    the block stops the transfer. The first failure is kept in `error`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        accept: str,
        proxy: str | None,
        head_timeout: float = GET_HEAD_TIMEOUT_SECONDS,
    ) -> None:
        self._session = session
        self._url = url
        self._headers = {"Authorization": bearer(token), "Accept": accept}
        self._proxy = proxy
        self._head_timeout = head_timeout
        self._task: asyncio.Task[aiohttp.ClientResponse] | None = None
        self._pending = b""
        self.error: AttachError | None = None

    async def __aenter__(self) -> RequestBodyStream:
        self._task = asyncio.create_task(self._open(), name=f"GET attach {self._url}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            task.result().close()  # drops the connection if the body was not read to the end

    async def _open(self) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self._head_timeout):
                response = await self._session.get(
                    self._url, headers=self._headers, proxy=self._proxy
                )
                if response.status != 200:
                    try:
                        body = await response.content.read(_ERROR_BODY_LIMIT)
                    finally:
                        response.release()
                    raise AttachRefused("get", response.status, body)
        except TimeoutError:
            raise AttachConnectionError(
                "get", f"no response head within {self._head_timeout:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            raise AttachConnectionError("get", f"{type(error).__name__}: {error}") from error
        return response

    def _failed(self, error: AttachError) -> AttachError:
        if self.error is None:
            self.error = error
        return error

    async def _response(self) -> aiohttp.ClientResponse:
        if self._task is None:
            raise RuntimeError("RequestBodyStream is not open; use `async with`")
        try:
            # Shielded: a reader that goes away must not cancel the transfer the block owns.
            return await asyncio.shield(self._task)
        except AttachError as error:
            raise self._failed(error) from None

    async def read_request_head(self) -> RequestHead:
        """Read the request head of a stream-full (`+h1`) GET attach body.

        Raises `InvalidStreamedRequest` when the head is malformed, ends early or declares a
        transfer coding other than identity, and `AttachError` when the GET itself fails.
        """
        response = await self._response()
        parser = RequestHeadParser()
        try:
            async for chunk in response.content.iter_any():
                head = parser.feed(chunk)
                if head is not None:
                    self._pending = head.body
                    return head
            parser.feed_eof()
        except H1Error as error:
            raise self._failed(InvalidStreamedRequest(error)) from error
        except (aiohttp.ClientError, OSError) as error:
            raise self._failed(
                AttachConnectionError("get", f"the request broke off: {error}")
            ) from error
        raise AssertionError("feed_eof() returns only after a complete head")  # pragma: no cover

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        response = await self._response()
        if self._pending:
            pending, self._pending = self._pending, b""
            yield pending
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as error:
            raise self._failed(
                AttachConnectionError("get", f"the request body broke off: {error}")
            ) from error


class AttachClient:
    """The attach calls of one request, to the IS pod named by its `HTTP1ProtocolConfig`.

    `proxyURI`, when set, is used as an HTTP forward proxy for both directions. A response whose
    body is in memory goes out through `lean` when given and no proxy is set (`lean_http.py`:
    a fraction of aiohttp's CPU per call); everything else through `session`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: HTTP1ProtocolConfig,
        *,
        lean: LeanHttpClient | None = None,
    ) -> None:
        self._session = session
        self._lean = lean if not config.proxyURI else None
        self._url = attach_url(config.targetURI)
        self._liveness_url = attach_liveness_url(config.targetURI)
        self._proxy = config.proxyURI or None
        self._response_token = config.responseAuthorizationToken
        self._request_token = config.requestAuthorizationToken or None
        self._response_started = False

    @property
    def has_request_body(self) -> bool:
        """Whether part of the request waits at GET attach (a request token was minted)."""
        return self._request_token is not None

    @property
    def response_started(self) -> bool:
        """Whether the one response of this request was attempted (delivered or not)."""
        return self._response_started

    def request_body(
        self, accept: str, *, head_timeout: float = GET_HEAD_TIMEOUT_SECONDS
    ) -> RequestBodyStream:
        """The GET attach transfer of the rest of the request; `async with` starts it.

        `accept` is `get_attach_accept(request.requestMethod)`. Only valid when
        `has_request_body`.
        """
        if self._request_token is None:
            raise RuntimeError("this request has no request token: its body was inline")
        return RequestBodyStream(
            self._session,
            self._url,
            self._request_token,
            accept=accept,
            proxy=self._proxy,
            head_timeout=head_timeout,
        )

    async def response_wanted(self) -> bool | None:
        """Whether the platform still waits for this request's response: True (204), False (410:
        the token was used or given up), None when it does not say (NVIDIA's IS has no such
        route; errors and time-outs too). Uses nothing up: the token stays valid."""
        headers = {"Authorization": bearer(self._response_token)}
        try:
            async with asyncio.timeout(LIVENESS_TIMEOUT_SECONDS):
                async with self._session.get(
                    self._liveness_url, headers=headers, proxy=self._proxy
                ) as response:
                    await response.read()
                    status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        return {204: True, 410: False}.get(status)

    async def send_response(
        self, head: bytes, body: bytes | AsyncIterable[bytes], *, body_length: int | None = None
    ) -> None:
        """POST attach: deliver `head` (an encoded response head) followed by `body`.

        A streamed body is relayed chunk by chunk as it is produced; `body_length` is its length
        when known (sent as the outer Content-Length with the head), else the POST is chunked.
        Returns once the platform answered 200, which it does after the caller took the body.
        Raises `ResponseAlreadySent` on a second call, `AttachRefused` for any other answer and
        `AttachConnectionError` when the call fails; an exception raised by `body` aborts the
        POST (the platform never sees a complete body) and surfaces as AttachConnectionError.
        """
        if self._response_started:
            raise ResponseAlreadySent()
        self._response_started = True
        data: bytes | AsyncIterable[bytes]
        if isinstance(body, bytes):
            data = head + body
            outer_length: int | None = len(data)
        else:
            data = _prefixed(head, body)
            outer_length = post_attach_content_length(head, body_length)
        headers = {"Authorization": bearer(self._response_token), "Content-Type": H1_CONTENT_TYPE}
        if self._lean is not None and isinstance(data, bytes):
            await self._post_lean(self._lean, headers, data)
            return
        if outer_length is not None:
            headers["Content-Length"] = str(outer_length)
        try:
            async with self._session.post(
                self._url, data=data, headers=headers, proxy=self._proxy
            ) as response:
                if response.status != 200:
                    answer = await response.content.read(_ERROR_BODY_LIMIT)
                    raise AttachRefused("post", response.status, answer)
        except (aiohttp.ClientError, OSError) as error:
            raise AttachConnectionError("post", f"{type(error).__name__}: {error}") from error

    async def _post_lean(self, lean: LeanHttpClient, headers: dict[str, str], data: bytes) -> None:
        try:
            answer = await lean.request(
                "POST", self._url, headers.items(), data, limit=_ERROR_BODY_LIMIT
            )
        except LeanHttpError as error:
            raise AttachConnectionError("post", f"{type(error).__name__}: {error}") from error
        if answer.status != 200:
            raise AttachRefused("post", answer.status, answer.body)

    async def send_problem(self, source: str, status: int, detail: str) -> None:
        """POST attach of a worker-generated problem+json response (reference §5.2 steps 3-8)."""
        body = worker_problem(source, status, detail)
        head = encode_response_head(
            status, [("Content-Type", PROBLEM_CONTENT_TYPE)], content_length=len(body)
        )
        await self.send_response(head, body)


async def _prefixed(head: bytes, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    # The head goes out on its own so the platform can relay it before the first body byte.
    yield head
    async for chunk in body:
        yield chunk


AttachFactory = Callable[[HTTP1ProtocolConfig], AttachClient]
"""Makes the `AttachClient` of one work item or poll (`HttpSessions.attach_client`)."""
