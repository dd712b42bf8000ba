"""aiohttp integration: a middleware that gives each NVCF request its `InvocationContext`.

Invalid `NVCF-*` headers are answered with a 400 `application/problem+json` before the handler
runs; requests without `NVCF-REQID` (health checks) reach their handler without a context.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from nvcf_worker import headers as h
from nvcf_worker.context import InvocationContext
from nvcf_worker.errors import InvalidHeader
from nvcf_worker.integrations._problem import PROBLEM_CONTENT_TYPE, invalid_header_problem
from nvcf_worker.logging import bind_request_id

__all__ = [
    "NVCF_CONTEXT_KEY",
    "context_from_request",
    "get_context",
    "invalid_header_response",
    "nvcf_context_middleware",
]

NVCF_CONTEXT_KEY: Any
"""Where the middleware stores the context in the request: a typed `web.RequestKey` on aiohttp
versions that have it (3.14+), else the string `"nvcf"`. Prefer `get_context(request)`."""
if hasattr(web, "RequestKey"):
    NVCF_CONTEXT_KEY = web.RequestKey("nvcf", InvocationContext)
else:  # pragma: no cover - older aiohttp
    NVCF_CONTEXT_KEY = "nvcf"


def context_from_request(request: web.Request) -> InvocationContext:
    """Parse the `InvocationContext` from the request's `NVCF-*` headers.

    Raises `InvalidHeader` when `NVCF-REQID` is missing or a header is invalid.
    """
    return InvocationContext.from_headers(request.headers)


def get_context(request: web.Request) -> InvocationContext:
    """Return the context `nvcf_context_middleware` stored for this request.

    Raises `InvalidHeader` for `NVCF-REQID` when there is none (the request carried no
    `NVCF-REQID`, or the middleware is not installed); inside the middleware that becomes the
    same 400 answer as any invalid header.
    """
    ctx = request.get(NVCF_CONTEXT_KEY)
    if not isinstance(ctx, InvocationContext):
        raise InvalidHeader(
            h.REQUEST_ID,
            request.headers.get(h.REQUEST_ID),
            "missing, so this request has no NVCF invocation context "
            "(NVCF sends it with every call; is nvcf_context_middleware installed?)",
        )
    return ctx


def invalid_header_response(error: InvalidHeader) -> web.Response:
    """A 400 `application/problem+json` answer naming the invalid header and its value.

    Body: `{"title": "Bad Request", "status": 400, "detail": <message>, "header": <name>,
    "value": <value or null>}`.
    """
    return web.Response(
        status=400, body=invalid_header_problem(error), content_type=PROBLEM_CONTENT_TYPE
    )


@web.middleware
async def nvcf_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Parse the NVCF context of each request that has `NVCF-REQID`, and bind its request id.

    With `NVCF-REQID`: the context is stored under `NVCF_CONTEXT_KEY` (read it with
    `get_context`) and the request id is bound for logging while the handler runs. Invalid
    `NVCF-*` headers are answered with `invalid_header_response` without calling the handler;
    an `InvalidHeader` the handler raises gets the same answer. Without `NVCF-REQID` the
    handler runs without a context, so health checks keep working.
    Install it with `web.Application(middlewares=[nvcf_context_middleware])`.
    """
    try:
        if h.REQUEST_ID not in request.headers:
            return await handler(request)
        ctx = context_from_request(request)
        request[NVCF_CONTEXT_KEY] = ctx
        with bind_request_id(ctx.request_id):
            return await handler(request)
    except InvalidHeader as error:
        return invalid_header_response(error)
