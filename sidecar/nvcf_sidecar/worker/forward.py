"""The call to the inference container: its URL, its `NVCF-*` headers, its body (reference §5.2 step 5).

Everything that decides what the container receives is a pure function here; `open_container`
makes the one call, with no timeout and no retries.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
from yarl import URL

from nvcf_sidecar.protocol import (
    INFERENCE_CONNECTION,
    INFERENCE_CONNECTION_FAILED,
    INFERENCE_REQUEST_FAILED,
    NVCF_INVOCATION_REGION,
    NVCF_POLL_SECONDS,
    WORKER_SERVICE,
    Header,
    PollBudget,
    WorkerInvokeFunctionRequest,
    strip_hop_by_hop,
)
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.errors import WorkerError
from nvcf_sidecar.worker.lean_http import (
    LeanConnectError,
    LeanHttpClient,
    LeanHttpError,
    LeanResetError,
)
from nvcf_worker import headers as nvcf_headers

__all__ = [
    "POLL_SECONDS_HEADER",
    "ContainerCall",
    "ContainerCallError",
    "ContainerClient",
    "ContainerResponse",
    "ForwardedBody",
    "RequestBodyTooShort",
    "ResponseStream",
    "canonical_header_name",
    "container_failure_problem",
    "container_headers",
    "container_url",
    "first_header",
    "open_container",
    "request_target_path",
    "worker_headers",
]

POLL_SECONDS_HEADER: Final = "Nvcf-Poll-Seconds"
"""The spelling NVIDIA's worker gives the shifted poll budget (Go's canonical header form)."""

_WORKER_OWNED: Final = frozenset(name.lower() for name in nvcf_headers.WORKER_OWNED_HEADERS)
# The HTTP client writes Host and Content-Length itself (from the URL and the body it sends), as
# Go's transport does; a caller's copy would contradict them.
_CLIENT_MANAGED: Final = frozenset({"host", "content-length"})
_REPLACED: Final = frozenset({NVCF_POLL_SECONDS, NVCF_INVOCATION_REGION})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_VISIBLE_ASCII: Final = re.compile(r"[^\x21-\x7e]")


ContainerClient = aiohttp.ClientSession | LeanHttpClient
"""What calls the container: the lean client (the default) or an aiohttp session."""


class ResponseStream(Protocol):
    """A container answer's body as it arrives."""

    async def read(self, n: int = -1) -> bytes: ...

    def iter_any(self) -> AsyncIterator[bytes]: ...


class ContainerResponse(Protocol):
    """A container answer whose head is in: aiohttp's `ClientResponse` or the lean client's
    `LeanResponse`. Its body errors are `aiohttp.ClientError`s or `OSError`s (LeanHttpError)."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> ResponseStream: ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...


class ContainerCallError(WorkerError):
    """The container call failed before a response head arrived; `cause` says how."""

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        super().__init__(f"the container call failed: {type(cause).__name__}: {cause}")


class RequestBodyTooShort(WorkerError):
    """The request body ended before the Content-Length the caller declared."""

    def __init__(self, declared: int, received: int) -> None:
        self.declared = declared
        self.received = received
        super().__init__(
            f"the request body ended after {received} bytes; Content-Length declared {declared}"
        )


def canonical_header_name(name: str) -> str:
    """Go's canonical form of a header name (`x-custom-id` -> `X-Custom-Id`).

    NVIDIA's worker adds every caller header through Go's `Header.Add`, which rewrites names this
    way, so containers (and Triton's case-sensitive header-forward patterns) see these spellings.
    A name that is not a valid token is returned unchanged, as Go does.
    """
    if not _TOKEN.fullmatch(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def first_header(headers: Iterable[Header], name: str) -> str | None:
    """The first value of header `name` (compared case-insensitively), or None."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def worker_headers(
    config: WorkerConfig,
    request: WorkerInvokeFunctionRequest,
    *,
    asset_dir: str,
    response_dir: str,
) -> list[Header]:
    """The headers only the worker sets, with the literal upper-case names NVIDIA's worker uses.

    Every one is sent even when empty; `NVCF-FUNCTION-ASSET-IDS` only when the request has assets.
    """
    headers: list[Header] = [
        (nvcf_headers.REQUEST_ID, request.requestId),
        (nvcf_headers.SUB, request.subject),
        (nvcf_headers.NCA_ID, request.ncaId),
        (nvcf_headers.FUNCTION_NAME, config.function_name),
        (nvcf_headers.FUNCTION_ID, config.function_id),
        (nvcf_headers.FUNCTION_VERSION_ID, config.function_version_id),
        (nvcf_headers.ASSET_DIR, asset_dir),
        (nvcf_headers.LARGE_OUTPUT_DIR, response_dir),
        (nvcf_headers.MAX_RESPONSE_SIZE_BYTES, str(request.maxDirectResponseSizeBytes)),
        (nvcf_headers.NSPECT_ID, config.nspect_id),
        (nvcf_headers.BACKEND, config.backend),
        (nvcf_headers.INSTANCE_TYPE, config.instance_type),
        (nvcf_headers.REGION, config.zone_name),
        (nvcf_headers.ENV, config.icms_environment),
    ]
    asset_ids = [asset.assetId for asset in request.inputAssetReference]
    if asset_ids:
        headers.append((nvcf_headers.FUNCTION_ASSET_IDS, ",".join(asset_ids)))
    return headers


def container_headers(
    worker: Iterable[Header],
    caller: Iterable[Header],
    poll: PollBudget,
    *,
    default_content_type: str | None = None,
) -> list[Header]:
    """Every header of the container call except Host and the body framing.

    In order: the `worker` headers; `NVCF-INVOCATION-REGION` (the last caller
    `nvcf-invocation-region` value, under NVIDIA's literal name); the caller's headers with
    worker-owned names (anti-spoofing), hop-by-hop headers, Host, Content-Length and
    NVCF-POLL-SECONDS removed and names in Go's canonical form; `Content-Type:
    default_content_type` when given and the caller sent none (compatibility mode uses
    `application/json`); and `Nvcf-Poll-Seconds` set to the shifted budget.
    """
    headers = list(worker)
    region: str | None = None
    forwarded: list[Header] = []
    for name, value in strip_hop_by_hop(caller):
        lower = name.lower()
        if lower == NVCF_INVOCATION_REGION:
            region = value
        elif lower in _WORKER_OWNED or lower in _CLIENT_MANAGED or lower in _REPLACED:
            continue
        else:
            forwarded.append((canonical_header_name(name), value))
    if region is not None:
        headers.append((nvcf_headers.INVOCATION_REGION, region))
    headers.extend(forwarded)
    if default_content_type is not None and first_header(forwarded, "content-type") is None:
        headers.append(("Content-Type", default_content_type))
    headers.append((POLL_SECONDS_HEADER, poll.header_value))
    return headers


def container_url(inference_url: str, request_path: str) -> str:
    """`<inference_url><request_path>`, the path and query kept verbatim.

    An empty path means `/`; a path without its leading slash gets one. Bytes that cannot appear
    in a request line (space, control, non-ASCII) are percent-encoded; nothing else is touched.
    """
    path = request_path or "/"
    if not path.startswith("/"):
        path = "/" + path
    path = _NOT_VISIBLE_ASCII.sub(
        lambda match: "".join(f"%{byte:02X}" for byte in match.group().encode()), path
    )
    return inference_url.rstrip("/") + path


def request_target_path(target: str) -> str:
    """The path and query to call for a stream-full request's target (origin or absolute form)."""
    if target.startswith("/") or "://" not in target:
        return target
    url = URL(target, encoded=True)
    return url.raw_path_qs


def container_failure_problem(error: BaseException) -> tuple[str, str]:
    """The (problem source, detail) for a container call that failed before a response head.

    Refused, reset or timed-out connections are the container's connection failing
    (`inference-connection`); anything else, a malformed response or a closed connection
    included, is the worker's internal error (`nvcf-worker-service`) — as NVIDIA's worker sorts
    Go's network errors.
    """
    # aiohttp's connect, reset and timeout errors are all OSErrors; a server that closed the
    # connection without answering (ServerDisconnectedError) is not, like Go's io.EOF. The lean
    # client says which it was: no connection or a broken one are the container's; a close
    # without an answer, a malformed answer or a request it could not send are not.
    if isinstance(error, LeanHttpError):
        if isinstance(error, LeanConnectError | LeanResetError):
            return INFERENCE_CONNECTION, INFERENCE_CONNECTION_FAILED
        return WORKER_SERVICE, INFERENCE_REQUEST_FAILED
    if isinstance(error, OSError):
        return INFERENCE_CONNECTION, INFERENCE_CONNECTION_FAILED
    return WORKER_SERVICE, INFERENCE_REQUEST_FAILED


class ForwardedBody:
    """The request body streamed to the container: inline bytes, then the rest from GET attach.

    The rest is only read when the inline part has been sent. When a declared length is given,
    ending short of it is an error rather than a request the container would wait on forever.
    Whatever stopped the body early is kept in `error`, so the caller can tell a failed body
    source from a failed container.
    """

    def __init__(
        self, inline: bytes, rest: AsyncIterable[bytes] | None, declared_length: int | None
    ) -> None:
        self._inline = inline
        self._rest = rest
        self._declared_length = declared_length
        self.sent = 0
        self.error: Exception | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            if self._inline:
                self.sent += len(self._inline)
                yield self._inline
            if self._rest is not None:
                async for chunk in self._rest:
                    if chunk:
                        self.sent += len(chunk)
                        yield chunk
            if self._declared_length is not None and self.sent < self._declared_length:
                raise RequestBodyTooShort(self._declared_length, self.sent)
        except Exception as error:
            self.error = error
            raise


@dataclass(frozen=True)
class ContainerCall:
    """One call to the inference container, ready to send."""

    method: str
    url: str
    headers: list[Header]
    body: bytes | ForwardedBody | None
    """Bytes when the whole body is known, a stream when part of it comes over GET attach."""
    body_length: int | None
    """The Content-Length to send with a streamed body; None sends it chunked."""


async def open_container(client: ContainerClient, call: ContainerCall) -> ContainerResponse:
    """Send `call` and return the container's response once its head has arrived.

    No timeout and no retries; redirects are returned, not followed (a passthrough relays them).
    The body keeps streaming in the background while the response is read (full duplex).
    Any failure before the head raises `ContainerCallError`; cancellation closes the connection.
    Either client puts the same bytes on the wire: Host first, the call's headers in order, then
    Content-Length (`0` without a body for methods other than GET, HEAD, OPTIONS and TRACE) or
    `Transfer-Encoding: chunked` for a stream of unknown length.
    """
    if isinstance(client, LeanHttpClient):
        try:
            return await client.open(
                call.method, call.url, call.headers, call.body, body_length=call.body_length
            )
        except LeanHttpError as error:
            raise ContainerCallError(error) from error
    session = client
    headers = call.headers
    if isinstance(call.body, ForwardedBody) and call.body_length is not None:
        headers = [*headers, ("Content-Length", str(call.body_length))]
    try:
        return await session.request(
            call.method,
            URL(call.url, encoded=True),
            headers=headers,
            data=call.body,
            allow_redirects=False,
        )
    except Exception as error:
        raise ContainerCallError(error) from error
