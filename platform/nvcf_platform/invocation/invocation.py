"""The caller-facing pexec route `POST /v2/nvcf/pexec/functions/{fid}[/versions/{fvid}]` (§5.1, §11).

Authenticates the caller, reads the first 32 KiB of the body and the input-asset header, then hands
the work item to `WorkerExchange` and relays the worker's answer. `invoke` is shared with exec.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol

from aiohttp import web
from nats.errors import Error as NatsError

from nvcf_platform.control.registry import FunctionVersion, Registry, canonical_uuid
from nvcf_platform.errors import (
    AssetNotFound,
    FunctionNotFound,
    FunctionVersionNotFound,
    PlatformError,
)
from nvcf_platform.invocation.attach import STREAM_ERRORS
from nvcf_platform.invocation.exchange import InvocationRefused, Outcome, WorkerExchange, refused
from nvcf_platform.invocation.problems import UNAUTHORIZED_CLIENT
from nvcf_platform.invocation.relay import relay_response
from nvcf_platform.invocation.tokens import STREAM_IDLE_TIMEOUT, RequestBody, random_uuid
from nvcf_sidecar.protocol import (
    INLINE_BODY_BYTES,
    NVCF_INPUT_ASSET_REFERENCES,
    NVCF_INVOCATION_REGION,
    NVCF_POLL_SECONDS,
    Header,
    InputAssetReference,
    InvalidPollSeconds,
    parse_bearer,
    parse_poll_seconds,
    strip_hop_by_hop,
)

__all__ = [
    "PEXEC_PATHS",
    "CallerIdentity",
    "InvalidAssetReference",
    "ObjectLinks",
    "PexecEndpoint",
    "forwarded_headers",
    "parse_asset_references",
    "poll_seconds_of",
    "read_inline_body",
    "request_headers",
]

PEXEC_PATHS: Final = (
    "/v2/nvcf/pexec/functions/{function_id}",
    "/v2/nvcf/pexec/functions/{function_id}/versions/{function_version_id}",
)

# What the IS reads of a header value at all: visible ASCII, space and tab.
_VISIBLE_ASCII: Final = re.compile(rb"[\t\x20-\x7e]*")
_ASSET_HEADER: Final = NVCF_INPUT_ASSET_REFERENCES.encode()

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """Who callers are to this platform: the accepted API keys and what work items say of them."""

    api_keys: tuple[str, ...]
    """Accepted bearer tokens; empty accepts any."""
    nca_id: str
    subject: str

    def accepts(self, token: str | None) -> bool:
        """Whether `token` (the caller's bearer) may invoke; compared in constant time."""
        if token is None:
            return False
        if not self.api_keys:
            return True
        encoded = token.encode()
        return any(hmac.compare_digest(encoded, key.encode()) for key in self.api_keys)

    def check(self, request: web.Request) -> None:
        """Raise `InvocationRefused` (401 problem) unless the request's bearer is accepted."""
        if not self.accepts(parse_bearer(request.headers.get("Authorization"))):
            raise refused(401, UNAUTHORIZED_CLIENT)


class ObjectLinks(Protocol):
    """What invocations need of the object store: asset references and large-response URLs."""

    async def asset_references(
        self, nca_id: str, asset_ids: Sequence[str]
    ) -> list[InputAssetReference]:
        """Presigned GETs for the assets, in order; raises `AssetNotFound` for a missing one."""
        ...

    def large_response_upload_url(self, nca_id: str, request_id: str) -> str:
        """A presigned PUT for the request's large response (a zip)."""
        ...


class InvalidAssetReference(PlatformError, ValueError):
    """An input-asset id (header or exec `inputAssetReferences`) that is not a UUID."""

    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(f"invalid input asset reference {value!r}: not a UUID")


def forwarded_headers(raw_headers: Sequence[tuple[bytes, bytes]], region: str) -> list[Header]:
    """The caller's headers as a work item carries them (reference §3.1 field 13, §5.1 step 2).

    Lower-case names, duplicates kept in order; hop-by-hop headers (and those `Connection`
    names) and `Authorization` removed; `nvcf-invocation-region` replaced by the platform's.
    Raises UnicodeDecodeError for a value that is not UTF-8.
    """
    pairs = [(name.decode("latin-1").lower(), value.decode()) for name, value in raw_headers]
    kept = [
        pair
        for pair in strip_hop_by_hop(pairs)
        if pair[0] != "authorization" and pair[0] != NVCF_INVOCATION_REGION
    ]
    kept.append((NVCF_INVOCATION_REGION, region))
    return kept


def request_headers(request: web.Request, region: str) -> list[Header]:
    """`forwarded_headers` of a caller's request; a value that is not UTF-8 refuses it with
    NVIDIA's 500 problem."""
    try:
        return forwarded_headers(request.raw_headers, region)
    except UnicodeDecodeError:
        raise refused(
            500,
            "failed to parse http request headers; cause: failed to convert header value to utf8",
        ) from None


def poll_seconds_of(value: str | None, accept: str | None, *, tlb: bool = False) -> int:
    """`parse_poll_seconds`, a bad value refusing the call with a 400 problem (§11.3)."""
    try:
        return parse_poll_seconds(value, accept, tlb=tlb)
    except InvalidPollSeconds as error:
        raise refused(400, error.detail) from None


def parse_asset_references(values: Iterable[bytes]) -> list[str]:
    """Asset ids from `NVCF-INPUT-ASSET-REFERENCES` values (repeatable, comma-separated).

    Blanks are skipped and duplicates kept; ids come back as canonical UUIDs. A value that is not
    visible ASCII is ignored, as NVIDIA's header decoder does. Raises `InvalidAssetReference`.
    """
    asset_ids: list[str] = []
    for value in values:
        if not _VISIBLE_ASCII.fullmatch(value):
            continue
        for part in value.decode("ascii").split(","):
            text = part.strip()
            if text:
                asset_ids.append(_asset_id(text))
    return asset_ids


def _asset_id(text: str) -> str:
    canonical = canonical_uuid(text)
    if canonical is None:
        raise InvalidAssetReference(text)
    return canonical


class PexecEndpoint:
    """The pexec routes, and `invoke`, the initial-invocation core exec shares."""

    def __init__(
        self,
        *,
        registry: Registry,
        callers: CallerIdentity,
        exchange: WorkerExchange,
        objects: ObjectLinks | None = None,
        resolve: Callable[[str, str | None], FunctionVersion] | None = None,
    ) -> None:
        self._registry = registry
        self._resolve = resolve
        self._callers = callers
        self._exchange = exchange
        self._objects = objects

    @property
    def exchange(self) -> WorkerExchange:
        """The core that queues work items and waits for workers (shared with status polls)."""
        return self._exchange

    def register(self, router: web.UrlDispatcher) -> None:
        """Add both pexec routes (with and without a version id)."""
        for path in PEXEC_PATHS:
            router.add_post(path, self.pexec)

    def authorize(self, request: web.Request) -> FunctionVersion:
        """The version a pexec or exec request invokes, after checking the caller's bearer.

        Raises `InvocationRefused`: 401 problem for a bearer that is not an accepted key, 404 for
        an unknown function or version; `resolve` (the control plane's) also refuses versions
        that are not deployed (404) or DEGRADED (400).
        """
        return self.authorize_function(
            request,
            request.match_info["function_id"],
            request.match_info.get("function_version_id"),
        )

    def authorize_function(
        self, request: web.Request, function_id: str, version_id: str | None
    ) -> FunctionVersion:
        """`authorize` for ids that do not come from the path (the gateway form's headers/Host)."""
        self._callers.check(request)
        if self._resolve is not None:
            return self._resolve(function_id, version_id)
        try:
            return self._registry.resolve(function_id, version_id)
        except FunctionNotFound:
            raise refused(404, "function not found") from None
        except FunctionVersionNotFound:
            raise refused(404, "function version not found") from None

    async def pexec(self, request: web.Request) -> web.StreamResponse:
        """Invoke a function version and answer with whatever its worker answers.

        401/404 as `authorize`; 400 for a bad NVCF-POLL-SECONDS, input-asset header or an
        unreadable body; 404 for an unknown asset; 429 when the queue is full; 504 (empty body)
        when no worker answered within the poll duration + 2 s.
        """
        try:
            version = self.authorize(request)
            headers = request_headers(request, self._exchange.region)
            poll_seconds = poll_seconds_of(
                request.headers.get(NVCF_POLL_SECONDS), request.headers.get("Accept")
            )
            asset_ids = self._asset_header(request)
            return await self.relay_call(
                request, version, headers=headers, poll_seconds=poll_seconds, asset_ids=asset_ids
            )
        except InvocationRefused as error:
            return error.answer

    async def relay_call(
        self,
        request: web.Request,
        version: FunctionVersion,
        *,
        headers: Sequence[Header],
        poll_seconds: int,
        asset_ids: Sequence[str] = (),
        path: str | None = None,
        large_response: bool = True,
    ) -> web.StreamResponse:
        """Read the caller's body, invoke `version` (`invoke`'s options) and relay the worker's
        answer: the part pexec and the gateway form share. Raises `InvocationRefused` (400 for
        an unreadable body, else as `invoke`)."""
        request_id = random_uuid()
        try:
            inline, rest = await read_inline_body(request, request_id)
        except (*STREAM_ERRORS, EOFError) as error:
            raise refused(400, f"failed to read request body: {error!r}") from None
        async with self.invoke(
            version,
            request_id,
            method=request.method,
            headers=headers,
            inline=inline,
            rest=rest,
            poll_seconds=poll_seconds,
            asset_ids=asset_ids,
            path=path,
            large_response=large_response,
        ) as outcome:
            if isinstance(outcome, web.Response):
                return outcome
            return await relay_response(request, outcome, request_id)

    @asynccontextmanager
    async def invoke(
        self,
        version: FunctionVersion,
        request_id: str,
        *,
        method: str,
        headers: Sequence[Header],
        inline: bytes,
        rest: RequestBody | None,
        poll_seconds: int,
        asset_ids: Sequence[str] = (),
        path: str | None = None,
        large_response: bool = True,
    ) -> AsyncIterator[Outcome]:
        """Queue an initial invocation and yield the worker's response or the empty 504.

        With an object store, `asset_ids` become the item's `inputAssetReference` (404 problem
        for a missing one) and the item gets a `largeResponseUrl` (unless `large_response` is
        False); without one both are skipped. `path` replaces the version's invocation path as
        `requestPath` (the gateway form's path and query). Raises `InvocationRefused`; see
        `WorkerExchange.invoke` for the rest.
        """
        assets, large_response_url = await self._object_links(request_id, asset_ids)
        if not large_response:
            large_response_url = ""
        item = self._exchange.work_item(
            version,
            request_id,
            method=method,
            headers=headers,
            body=inline,
            assets=assets,
            large_response_url=large_response_url,
        )
        if path is not None:
            item.requestPath = path
        async with self._exchange.invoke(version, item, rest, poll_seconds) as outcome:
            yield outcome

    def _asset_header(self, request: web.Request) -> list[str]:
        if self._objects is None:
            return []
        values = (value for name, value in request.raw_headers if name.lower() == _ASSET_HEADER)
        try:
            return parse_asset_references(values)
        except InvalidAssetReference as error:
            raise refused(400, f"invalid {NVCF_INPUT_ASSET_REFERENCES} header: {error}") from None

    async def _object_links(
        self, request_id: str, asset_ids: Sequence[str]
    ) -> tuple[list[InputAssetReference], str]:
        """The asset references and large-response URL of a new work item.

        Without an object store: no references and an empty URL.
        """
        objects = self._objects
        if objects is None:
            return [], ""
        nca_id = self._exchange.nca_id
        extra = {"request_id": request_id}
        try:
            assets = await objects.asset_references(nca_id, asset_ids) if asset_ids else []
            url = objects.large_response_upload_url(nca_id, request_id)
        except AssetNotFound as error:
            _log.info("input asset not found", extra={**extra, "asset_id": error.asset_id})
            raise refused(404, str(error)) from None
        except (PlatformError, NatsError, TimeoutError) as error:
            _log.error("object links failed", extra={**extra, "error": repr(error)})
            raise refused(500, f"failed to get asset dtos; cause: {error}") from None
        return assets, url


async def read_inline_body(
    request: web.Request, request_id: str
) -> tuple[bytes, RequestBody | None]:
    """Up to 32 KiB of the caller's body, and the rest (if any) for a GET attach (§5.1 step 3).

    With a declared length: wait for 32 KiB or the end. Without one (chunked): take only what
    already arrived, never wait, since a streaming caller may send more only after a response.
    """
    reader = request.content
    if not request.body_exists:
        return b"", None
    length = request.content_length
    if length is not None:
        wanted = min(length, INLINE_BODY_BYTES)
        # What already arrived (a small body comes with its head) is taken without a wait.
        inline = reader.read_nowait(wanted) if wanted else b""
        if len(inline) < wanted:
            more = reader.readexactly(wanted - len(inline))
            inline += await asyncio.wait_for(more, STREAM_IDLE_TIMEOUT)
        left = length - len(inline)
        return inline, (RequestBody(request_id, reader, left) if left else None)
    inline = reader.read_nowait(INLINE_BODY_BYTES)
    return inline, (None if reader.is_eof() else RequestBody(request_id, reader, None))
