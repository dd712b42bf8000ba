"""The caller-facing pexec route `POST /v2/nvcf/pexec/functions/{fid}[/versions/{fvid}]` (§5.1, §11).

Authenticates the caller, queues a `WorkerInvokeFunctionRequest` with the first 32 KiB of the body
and attach tokens, waits for the worker's POST attach and relays it; withdraws abandoned requests.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from nats.errors import Error as NatsError

from nvcf_sidecar.platform.attach import STREAM_ERRORS
from nvcf_sidecar.platform.background import BackgroundTasks
from nvcf_sidecar.platform.errors import (
    FunctionNotFound,
    FunctionVersionNotFound,
    PublishFailed,
    QueueFull,
    WorkerResponseFailed,
)
from nvcf_sidecar.platform.problems import UNAUTHORIZED_CLIENT, problem_response
from nvcf_sidecar.platform.registry import FunctionVersion, Registry
from nvcf_sidecar.platform.relay import gateway_timeout, relay_response
from nvcf_sidecar.platform.tokens import STREAM_IDLE_TIMEOUT, AttachTokens, RequestBody
from nvcf_sidecar.platform.workqueue import WorkQueue
from nvcf_sidecar.protocol import (
    INLINE_BODY_BYTES,
    MAX_DIRECT_RESPONSE_BYTES,
    NVCF_INVOCATION_REGION,
    NVCF_POLL_SECONDS,
    POLL_GRACE_SECONDS,
    Header,
    InvalidPollSeconds,
    MessageTooLarge,
    StringKV,
    WorkerInvokeFunctionRequest,
    attach_config,
    encode_invoke_request,
    parse_bearer,
    parse_poll_seconds,
    strip_hop_by_hop,
)

__all__ = ["PEXEC_PATHS", "CallerIdentity", "PexecEndpoint", "forwarded_headers"]

PEXEC_PATHS: Final = (
    "/v2/nvcf/pexec/functions/{function_id}",
    "/v2/nvcf/pexec/functions/{function_id}/versions/{function_version_id}",
)

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


class PexecEndpoint:
    """The pexec routes and everything one invocation needs on the platform side."""

    def __init__(
        self,
        *,
        registry: Registry,
        callers: CallerIdentity,
        tokens: AttachTokens,
        queue: WorkQueue,
        background: BackgroundTasks,
        base_url: str,
        grpc_url: str,
    ) -> None:
        self._registry = registry
        self._callers = callers
        self._tokens = tokens
        self._queue = queue
        self._background = background
        self._base_url = base_url
        self._grpc_url = grpc_url

    def register(self, router: web.UrlDispatcher) -> None:
        """Add both pexec routes (with and without a version id)."""
        for path in PEXEC_PATHS:
            router.add_post(path, self.pexec)

    async def pexec(self, request: web.Request) -> web.StreamResponse:
        """Invoke a function version and answer with whatever its worker answers.

        401 problem for a bearer that is not an accepted key, 404 for an unknown function or
        version, 400 for a bad NVCF-POLL-SECONDS or an unreadable body, 429 when the queue is
        full, 504 (empty body) when no worker answered within the poll duration + 2 s.
        """
        if not self._callers.accepts(parse_bearer(request.headers.get("Authorization"))):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        try:
            version = self._registry.resolve(
                request.match_info["function_id"], request.match_info.get("function_version_id")
            )
        except FunctionNotFound:
            return problem_response(404, "function not found")
        except FunctionVersionNotFound:
            return problem_response(404, "function version not found")
        try:
            headers = forwarded_headers(request.raw_headers, self._queue.region)
        except UnicodeDecodeError:
            return problem_response(
                500,
                "failed to parse http request headers; "
                "cause: failed to convert header value to utf8",
            )
        try:
            poll_seconds = parse_poll_seconds(
                request.headers.get(NVCF_POLL_SECONDS), request.headers.get("Accept")
            )
        except InvalidPollSeconds as error:
            return problem_response(400, error.detail)
        request_id = str(uuid.uuid4())
        try:
            inline, rest = await _read_inline_body(request, request_id)
        except (*STREAM_ERRORS, EOFError) as error:
            return problem_response(400, f"failed to read request body: {error!r}")
        return await self._invoke(request, version, request_id, headers, inline, rest, poll_seconds)

    async def _invoke(
        self,
        request: web.Request,
        version: FunctionVersion,
        request_id: str,
        headers: list[Header],
        inline: bytes,
        rest: RequestBody | None,
        poll_seconds: int,
    ) -> web.StreamResponse:
        """Steps 5-7 of §5.1, with both tokens alive exactly as long as NVIDIA keeps them."""
        extra = {
            "request_id": request_id,
            "function_id": version.function_id,
            "function_version_id": version.function_version_id,
        }
        slot = self._tokens.mint_response(request_id)
        request_token = None if rest is None else self._tokens.mint_request(rest)
        try:
            item = self._work_item(request, version, request_id, headers, inline)
            item.statelessConfig.CopyFrom(
                attach_config(self._base_url, slot.token, request_token=request_token)
            )
            try:
                payload = encode_invoke_request(item)
                await self._queue.publish(version.function_version_id, request_id, payload)
            except QueueFull as error:
                _log.warning("work queue full", extra=extra)
                return problem_response(429, error.description)
            except (MessageTooLarge, PublishFailed, NatsError) as error:
                _log.error("work item not queued", extra={**extra, "error": str(error)})
                return problem_response(500, f"failed to send nats request; cause: {error}")
            _log.debug("invocation queued", extra={**extra, "poll_seconds": poll_seconds})
            try:
                async with asyncio.timeout(poll_seconds + POLL_GRACE_SECONDS):
                    worker = await slot.wait()
            except TimeoutError:
                _log.warning("no worker response in time", extra=extra)
                await self._queue.withdraw(version.function_version_id, request_id)
                return gateway_timeout(request_id)
            except WorkerResponseFailed as error:
                self._withdraw_later(version, request_id)
                return problem_response(500, error.detail)
            except asyncio.CancelledError:
                _log.info("caller left before the response", extra=extra)
                self._withdraw_later(version, request_id)
                raise
            finally:
                self._tokens.revoke(slot.token)
            _log.info("worker responded", extra={**extra, "status": worker.status})
            return await relay_response(request, worker, request_id)
        finally:
            self._tokens.revoke(slot.token)
            self._tokens.revoke(request_token)
            slot.abandon()
            if rest is not None:
                await rest.close()

    def _work_item(
        self,
        request: web.Request,
        version: FunctionVersion,
        request_id: str,
        headers: list[Header],
        inline: bytes,
    ) -> WorkerInvokeFunctionRequest:
        """The work item without its attach config (reference §3.1; no assets, no large URL)."""
        item = WorkerInvokeFunctionRequest(
            requestId=request_id,
            ncaId=self._callers.nca_id,
            subject=self._callers.subject,
            maxDirectResponseSizeBytes=MAX_DIRECT_RESPONSE_BYTES,
            requestBody=inline,
            directResponseUrl=self._grpc_url,
            requestMethod=request.method,
            requestPath=version.invocation_path,
        )
        item.requestTime.FromNanoseconds(time.time_ns())
        item.requestHeaders.extend(StringKV(key=name, value=value) for name, value in headers)
        return item

    def _withdraw_later(self, version: FunctionVersion, request_id: str) -> None:
        self._background.spawn(
            self._queue.withdraw(version.function_version_id, request_id),
            name=f"withdraw-{request_id}",
        )


async def _read_inline_body(
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
        inline = (
            await asyncio.wait_for(reader.readexactly(wanted), STREAM_IDLE_TIMEOUT)
            if wanted
            else b""
        )
        left = length - len(inline)
        return inline, (RequestBody(request_id, reader, left) if left else None)
    inline = reader.read_nowait(INLINE_BODY_BYTES)
    return inline, (None if reader.is_eof() else RequestBody(request_id, reader, None))
