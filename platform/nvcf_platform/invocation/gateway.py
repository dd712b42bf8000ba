"""The gateway form of invocation (NVIDIA's host / header "TLB" routing, control-plane reference §8).

A request naming a function by `function-id` [+ `function-version-id`] headers, or by a Host
`<fid>.…` / `<fvid>.<fid>.…`, goes to that function's container with its own method, path and query.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Final

from aiohttp import hdrs, web
from yarl import URL

from nvcf_platform.control.registry import canonical_uuid
from nvcf_platform.invocation.exchange import InvocationRefused
from nvcf_platform.invocation.invocation import (
    PexecEndpoint,
    poll_seconds_of,
    request_headers,
)
from nvcf_sidecar.protocol import FEATURE_DISABLE_WORKER_COMPATIBILITY, NVCF_POLL_SECONDS

__all__ = [
    "FUNCTION_ID_HEADER",
    "FUNCTION_VERSION_ID_HEADER",
    "FunctionRouting",
    "InvocationGateway",
    "function_routing",
    "routing_from_headers",
    "routing_from_host",
]

FUNCTION_ID_HEADER: Final = "function-id"
FUNCTION_VERSION_ID_HEADER: Final = "function-version-id"
_UUID_LENGTH: Final = len("00000000-0000-0000-0000-000000000000")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FunctionRouting:
    """The function (and maybe version) a gateway-form request names; ids are canonical UUIDs."""

    function_id: str
    function_version_id: str | None = None


def routing_from_headers(function_id: str | None, version_id: str | None) -> FunctionRouting | None:
    """The routing the `function-id` and `function-version-id` header values name.

    None unless `function_id` is a UUID (any form NVIDIA's parser takes); a version id that is
    not one is ignored, as NVIDIA's service does.
    """
    function = canonical_uuid(function_id.strip()) if function_id is not None else None
    if function is None:
        return None
    version = canonical_uuid(version_id.strip()) if version_id is not None else None
    return FunctionRouting(function, version)


def routing_from_host(host: str) -> FunctionRouting | None:
    """The routing a host name starting with a UUID names: `<fid>…` or `<fvid>.<fid>…`.

    Only the leading hyphenated UUIDs count (what follows them, a port included, is not read);
    the second one, when there is one, is the function and the first its version.
    """
    first = _hyphenated_uuid(host[:_UUID_LENGTH])
    if first is None:
        return None
    second = _hyphenated_uuid(host[_UUID_LENGTH + 1 : 2 * _UUID_LENGTH + 1])
    if second is not None:
        return FunctionRouting(second, first)
    return FunctionRouting(first)


def function_routing(request: web.BaseRequest) -> FunctionRouting | None:
    """A request's gateway routing, or None for the path router: the headers win over the host.

    The host is the authority of an absolute-form request target, else the Host header;
    `Forwarded` and `X-Forwarded-Host` are not read.
    """
    headers = request.headers
    by_headers = routing_from_headers(
        headers.get(FUNCTION_ID_HEADER), headers.get(FUNCTION_VERSION_ID_HEADER)
    )
    if by_headers is not None:
        return by_headers
    target = request.raw_path
    if not target.startswith("/") and "://" in target:
        authority = URL(target, encoded=True).raw_authority
        if authority:
            return routing_from_host(authority)
    host = headers.get(hdrs.HOST)
    return routing_from_host(host) if host is not None else None


def _hyphenated_uuid(text: str) -> str | None:
    if len(text) != _UUID_LENGTH:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _request_target(request: web.BaseRequest) -> str:
    """The caller's path and query, as sent (an absolute-form target loses its scheme and host)."""
    target = request.raw_path
    if target.startswith("/"):
        return target
    return URL(target, encoded=True).raw_path_qs


class InvocationGateway:
    """Serves gateway-form requests as pexec work items with the caller's method, path and query.

    What differs from pexec (reference §8, wire protocol §5.1): the function's invocation path is
    not applied; the worker runs in passthrough mode (`nvcf-feature-disable-worker-compatibility`);
    no input-asset header is read and no large-response URL is minted; the default poll wait is
    60 s, also for server-sent events. Authorization, version resolution, queueing, 202 tracking
    (polled at `/v2/nvcf/pexec/status/{reqid}`) and the relay are pexec's own.
    """

    def __init__(self, pexec: PexecEndpoint) -> None:
        self._pexec = pexec

    async def serve(self, request: web.Request, routing: FunctionRouting) -> web.StreamResponse:
        """Invoke the routed function and relay its worker's answer.

        401 problem for a bearer that is not accepted, 404 for an unknown function or version,
        400 for a bad NVCF-POLL-SECONDS or an unreadable body, else as pexec.
        """
        try:
            version = self._pexec.authorize_function(
                request, routing.function_id, routing.function_version_id
            )
            exchange = self._pexec.exchange
            headers = [
                (name, value)
                for name, value in request_headers(request, exchange.region)
                if name != FEATURE_DISABLE_WORKER_COMPATIBILITY
            ]
            headers.append((FEATURE_DISABLE_WORKER_COMPATIBILITY, "true"))
            poll_seconds = poll_seconds_of(
                request.headers.get(NVCF_POLL_SECONDS), request.headers.get("Accept"), tlb=True
            )
            path = _request_target(request)
            _log.debug(
                "gateway invocation",
                extra={"function_id": version.function_id, "method": request.method, "path": path},
            )
            return await self._pexec.relay_call(
                request,
                version,
                headers=headers,
                poll_seconds=poll_seconds,
                path=path,
                large_response=False,
            )
        except InvocationRefused as error:
            return error.answer
