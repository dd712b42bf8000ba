"""The exec JSON wrapper: `POST /v2/nvcf/exec/functions/{fid}[/versions/{fvid}]` and
`GET /v2/nvcf/exec/status/{requestId}` (reference §11.6).

A pexec invocation (or status poll) whose request and answer are JSON documents: the caller's
`requestBody` goes to the worker as the body, and the worker's answer comes back wrapped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from nvcf_platform.control.registry import canonical_uuid
from nvcf_platform.errors import PlatformError
from nvcf_platform.invocation.attach import STREAM_ERRORS
from nvcf_platform.invocation.exchange import InvocationRefused, Outcome, refused
from nvcf_platform.invocation.invocation import (
    InvalidAssetReference,
    PexecEndpoint,
    forwarded_headers,
    poll_seconds_of,
)
from nvcf_platform.invocation.status import StatusEndpoint
from nvcf_platform.invocation.tokens import STREAM_IDLE_TIMEOUT, RequestBody, WorkerResponse
from nvcf_sidecar.protocol import (
    INLINE_BODY_BYTES,
    NVCF_POLL_SECONDS,
    NVCF_REQID,
    STATUS_ERRORED,
    STATUS_FULFILLED,
    STATUS_IN_PROGRESS,
    parse_poll_seconds,
)

__all__ = [
    "EXEC_BODY_LIMIT",
    "EXEC_PATHS",
    "EXEC_STATUS_PATH",
    "MAX_WRAPPED_RESPONSE_BYTES",
    "ExecEndpoint",
    "ExecRequest",
    "InvalidExecRequest",
    "parse_exec_request",
    "wrap_outcome",
]

EXEC_PATHS: Final = (
    "/v2/nvcf/exec/functions/{function_id}",
    "/v2/nvcf/exec/functions/{function_id}/versions/{function_version_id}",
)
EXEC_STATUS_PATH: Final = "/v2/nvcf/exec/status/{request_id}"

EXEC_BODY_LIMIT: Final = 2 * 1024 * 1024
"""Largest exec request body (axum's default extractor limit in NVIDIA's service)."""
MAX_WRAPPED_RESPONSE_BYTES: Final = 64 * 1024 * 1024
"""Largest worker body the wrapper parses (NVIDIA's has no bound); bigger is a 500."""

_NIL_UUID: Final = "00000000-0000-0000-0000-000000000000"
_I64: Final = (-(2**63), 2**63 - 1)
_JSON: Final = "application/json"

_log = logging.getLogger(__name__)


class InvalidExecRequest(PlatformError, ValueError):
    """An exec body that is not JSON or not `{"requestHeader": {...}, "requestBody": ...}`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """What an exec body asks for."""

    body: bytes
    """`requestBody` re-serialised (compact, keys sorted, as serde_json writes it)."""
    poll_seconds: str | None
    """`requestHeader.pollDurationSeconds` as the NVCF-POLL-SECONDS text, None when absent."""
    asset_ids: tuple[str, ...]
    """`requestHeader.inputAssetReferences` as canonical UUIDs."""


def parse_exec_request(data: bytes) -> ExecRequest:
    """Parse an exec body; raises `InvalidExecRequest` (or `InvalidAssetReference`).

    Unknown fields are ignored and `null` counts as absent, except for `requestBody`, which must
    be present (any JSON, null included).
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidExecRequest(str(error)) from None
    if not isinstance(document, dict):
        raise InvalidExecRequest(f"invalid type: {_kind(document)}, expected an object")
    if "requestBody" not in document:
        raise InvalidExecRequest("missing field `requestBody`")
    header = document.get("requestHeader")
    if header is None:
        header = {}
    elif not isinstance(header, dict):
        raise InvalidExecRequest(
            f"requestHeader: invalid type: {_kind(header)}, expected an object"
        )
    poll = header.get("pollDurationSeconds")
    if poll is not None and (
        isinstance(poll, bool) or not isinstance(poll, int) or not _I64[0] <= poll <= _I64[1]
    ):
        raise InvalidExecRequest(
            f"requestHeader.pollDurationSeconds: invalid value: {_kind(poll)}, expected i64"
        )
    references = header.get("inputAssetReferences")
    if references is None:
        references = []
    elif not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise InvalidExecRequest(
            "requestHeader.inputAssetReferences: invalid type, expected a sequence of strings"
        )
    asset_ids = []
    for reference in references:
        asset_id = canonical_uuid(reference)
        if asset_id is None:
            raise InvalidAssetReference(reference)
        asset_ids.append(asset_id)
    return ExecRequest(
        body=orjson.dumps(document["requestBody"], option=orjson.OPT_SORT_KEYS),
        poll_seconds=None if poll is None else str(poll),
        asset_ids=tuple(asset_ids),
    )


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {value!r}"
    return "a sequence" if isinstance(value, list) else "a map"


class _BufferReader:
    """A `ChunkReader` over bytes already in memory (the exec body beyond the inline part)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def readany(self) -> bytes:
        data, self._data = self._data, b""
        return data


async def wrap_outcome(outcome: Outcome, request_id: str) -> web.Response:
    """The exec JSON answer for a worker response or a platform stand-in (nulls omitted).

    `status`: fulfilled for 200/302, in-progress for 202, else errored; `percentComplete` 100
    and 302 answered as 200 with `responseReference` = Location; `errorCode` for the rest;
    `response` is the parsed body of a 200 (not JSON: 500 problem). A stand-in answer carries
    the reqId of its `nvcf-reqid` header, else the nil UUID, as NVIDIA's wrapper does.
    """
    status = outcome.status
    worker: WorkerResponse | None = None
    if isinstance(outcome, web.Response):
        request_id = outcome.headers.get(NVCF_REQID, _NIL_UUID)
    else:
        worker = outcome
    fulfilled = status in (200, 302)
    fields: dict[str, Any] = {
        "reqId": request_id,
        "status": (
            STATUS_FULFILLED
            if fulfilled
            else STATUS_IN_PROGRESS
            if status == 202
            else STATUS_ERRORED
        ),
    }
    if status == 302:
        location = None if worker is None else _header(worker.headers, "location")
        fields["responseReference"] = location or ""
    if fulfilled:
        fields["percentComplete"] = 100
    elif status != 202:
        fields["errorCode"] = status
    if status == 200 and worker is not None:
        fields["response"] = orjson.Fragment(await _json_body(worker, request_id))
    return web.Response(
        status=200 if status == 302 else status, body=orjson.dumps(fields), content_type=_JSON
    )


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


async def _json_body(worker: WorkerResponse, request_id: str) -> bytes:
    """The worker's body, parsed and re-serialised (keys sorted); raises `InvocationRefused`."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in worker.body():
            size += len(chunk)
            if size > MAX_WRAPPED_RESPONSE_BYTES:
                raise refused(
                    500, f"response body of {request_id} exceeds {MAX_WRAPPED_RESPONSE_BYTES} bytes"
                )
            chunks.append(chunk)
    except STREAM_ERRORS as error:
        raise refused(500, f"failed to read the response body: {error!r}") from None
    try:
        value = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as error:
        _log.warning("exec response is not JSON", extra={"request_id": request_id})
        raise refused(
            500, f"invalid json in response body for request_id: {request_id}; cause: {error}"
        ) from None
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


async def _read_body(request: web.Request) -> bytes:
    """The whole exec body, at most `EXEC_BODY_LIMIT` bytes; raises `InvocationRefused` (400)."""
    too_large = refused(400, "failed to collect request body: length limit exceeded")
    if request.content_length is not None and request.content_length > EXEC_BODY_LIMIT:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await asyncio.wait_for(request.content.readany(), STREAM_IDLE_TIMEOUT):
            size += len(chunk)
            if size > EXEC_BODY_LIMIT:
                raise too_large
            chunks.append(chunk)
    except STREAM_ERRORS as error:
        raise refused(400, f"failed to collect request body: {error!r}") from None
    return b"".join(chunks)


class ExecEndpoint:
    """The exec routes over the pexec and status cores (and the pexec endpoint's object store)."""

    def __init__(self, *, pexec: PexecEndpoint, status: StatusEndpoint) -> None:
        self._pexec = pexec
        self._status = status

    def register(self, router: web.UrlDispatcher) -> None:
        """Add both exec routes and the exec status route."""
        for path in EXEC_PATHS:
            router.add_post(path, self.exec)
        router.add_get(EXEC_STATUS_PATH, self.exec_status, allow_head=False)

    async def exec(self, request: web.Request) -> web.Response:
        """Invoke with a JSON-wrapped body and answer the worker's response wrapped in JSON.

        400 problem for a body over 2 MB, not JSON, of the wrong shape, with a bad asset id or
        poll duration; otherwise the problems pexec answers (401, 404, 429, 500) unwrapped.
        """
        try:
            try:
                wanted = parse_exec_request(await _read_body(request))
            except (InvalidExecRequest, InvalidAssetReference) as error:
                raise refused(400, str(error)) from None
            version = self._pexec.authorize(request)
            raw_headers = [(b"content-type", _JSON.encode())]
            if wanted.poll_seconds is not None:
                raw_headers.append((NVCF_POLL_SECONDS.encode(), wanted.poll_seconds.encode()))
            headers = forwarded_headers(raw_headers, self._pexec.exchange.region)
            poll_seconds = poll_seconds_of(wanted.poll_seconds, None)
            request_id = str(uuid.uuid4())
            inline, left = wanted.body[:INLINE_BODY_BYTES], wanted.body[INLINE_BODY_BYTES:]
            rest = RequestBody(request_id, _BufferReader(left), len(left)) if left else None
            async with self._pexec.invoke(
                version,
                request_id,
                method="POST",
                headers=headers,
                inline=inline,
                rest=rest,
                poll_seconds=poll_seconds,
                asset_ids=wanted.asset_ids,
            ) as outcome:
                return await wrap_outcome(outcome, request_id)
        except InvocationRefused as error:
            return error.answer

    async def exec_status(self, request: web.Request) -> web.Response:
        """Poll a request as `GET /v2/nvcf/pexec/status` does, the answer wrapped in JSON.

        The status request's own headers are not forwarded (only `nvcf-invocation-region`), and
        the poll waits the default 60 s. An unknown request is a wrapped 404 (nil reqId).
        """
        try:
            request_id = self._status.authorize(request)
            headers = forwarded_headers((), self._status.exchange.region)
            poll_seconds = parse_poll_seconds(None, None)
            async with self._status.poll(request_id, headers, poll_seconds) as outcome:
                return await wrap_outcome(outcome, request_id)
        except InvocationRefused as error:
            return error.answer
