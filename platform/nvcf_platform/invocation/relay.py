"""Relaying a worker's response to the caller, with the headers the invocation service adds (§11.2).

Shared by the routes that relay a worker answer as it is: pexec and status polls (exec wraps it).
"""

from __future__ import annotations

import logging

from aiohttp import web

from nvcf_platform.invocation.attach import STREAM_ERRORS
from nvcf_platform.invocation.problems import abort_response
from nvcf_platform.invocation.tokens import WorkerResponse
from nvcf_sidecar.protocol import (
    ACCESS_CONTROL_EXPOSE_HEADERS,
    NVCF_REQID,
    NVCF_STATUS,
    nvcf_status,
    strip_hop_by_hop,
)

__all__ = ["SMALL_BODY_BYTES", "gateway_timeout", "relay_response"]

#: Bodies up to this declared length are gathered and sent with the head in one write.
SMALL_BODY_BYTES = 64 * 1024

_log = logging.getLogger(__name__)


def _add_nvcf_headers(response: web.StreamResponse, request_id: str) -> None:
    headers = response.headers
    headers.add(NVCF_STATUS, nvcf_status(response.status))
    headers.add(NVCF_REQID, request_id)
    # Appended: the container's own expose-headers values stay.
    headers.add(ACCESS_CONTROL_EXPOSE_HEADERS, NVCF_REQID)


def gateway_timeout(request_id: str) -> web.Response:
    """The 504 for a worker that did not answer in time: empty body, `nvcf-status: errored`."""
    response = web.Response(status=504)
    _add_nvcf_headers(response, request_id)
    return response


def _response(kind: type[web.StreamResponse], worker: WorkerResponse) -> web.StreamResponse:
    response = kind(status=worker.status)
    for name, value in strip_hop_by_hop(worker.headers):
        if name.lower() != "content-length":
            response.headers.add(name, value)
    return response


async def relay_response(
    request: web.Request, worker: WorkerResponse, request_id: str
) -> web.StreamResponse:
    """Send the worker's status, headers and body to the caller as they arrive.

    Content-Length is relayed when the worker's framing gave one; otherwise the body is chunked
    and every piece is written as soon as it arrives (SSE flushes event by event). A body that
    breaks off aborts the caller's connection. `worker.finish()` is called in every outcome, which
    lets the worker's POST attach complete.
    """
    small = worker.content_length is not None and worker.content_length <= SMALL_BODY_BYTES
    response: web.StreamResponse = _response(web.Response if small else web.StreamResponse, worker)
    _add_nvcf_headers(response, request_id)
    try:
        if isinstance(response, web.Response):
            # A small body is gathered and sent with the head in one write.
            chunks: list[bytes] = []
            broken: BaseException | None = None
            try:
                async for chunk in worker.body():
                    chunks.append(chunk)
            except STREAM_ERRORS as error:
                broken = error
            body = b"".join(chunks)
            if broken is None and len(body) == worker.content_length:
                response.body = body
                await response.prepare(request)
                await response.write_eof()
                return response
            # Short or broken: relay what came, as a streamed answer would have, then break off.
            response = _response(web.StreamResponse, worker)
            _add_nvcf_headers(response, request_id)
            response.content_length = worker.content_length
            await response.prepare(request)
            await response.write(body)
            raise broken or ConnectionResetError(
                f"worker body ended after {len(body)} of {worker.content_length} bytes"
            )
        if worker.content_length is not None:
            response.content_length = worker.content_length
        await response.prepare(request)
        async for chunk in worker.body():
            await response.write(chunk)
        await response.write_eof()
    except STREAM_ERRORS as error:
        _log.warning(
            "response relay broke off", extra={"request_id": request_id, "error": repr(error)}
        )
        abort_response(request)
    finally:
        worker.finish()
    return response
