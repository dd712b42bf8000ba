"""ASGI integration (Starlette, FastAPI): the NVCF context as a dependency and a middleware.

`NVCFContextMiddleware` parses the `NVCF-*` headers once per request and binds the request id
for logging; `nvcf_context` hands the context to a FastAPI endpoint via `Depends`.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from nvcf_worker import headers as h
from nvcf_worker.context import InvocationContext
from nvcf_worker.errors import InvalidHeader
from nvcf_worker.integrations._problem import PROBLEM_CONTENT_TYPE, invalid_header_problem
from nvcf_worker.logging import bind_request_id

__all__ = [
    "STATE_KEY",
    "NVCFContextMiddleware",
    "context_from_request",
    "nvcf_context",
]

#: The middleware stores the context at `scope["state"][STATE_KEY]`, i.e. `request.state.nvcf`.
STATE_KEY = "nvcf"

_REQUEST_ID_HEADER = h.REQUEST_ID.lower().encode("latin-1")


def context_from_request(request: Request) -> InvocationContext:
    """Return the request's `InvocationContext`: the middleware's, else parsed from the headers.

    Raises `InvalidHeader` when `NVCF-REQID` is missing or a header is invalid.
    """
    state = request.scope.get("state")
    if isinstance(state, dict):
        ctx = state.get(STATE_KEY)
        if isinstance(ctx, InvocationContext):
            return ctx
    return InvocationContext.from_headers(request.headers)


async def nvcf_context(request: Request) -> InvocationContext:
    """FastAPI dependency: `ctx: InvocationContext = Depends(nvcf_context)`.

    Returns the context of the request (see `context_from_request`); a missing `NVCF-REQID`
    or an invalid `NVCF-*` header raises `HTTPException(400)` whose detail names the header and
    the value. It does not bind the request id for logging: `NVCFContextMiddleware` does.
    """
    try:
        return context_from_request(request)
    except InvalidHeader as error:
        raise HTTPException(status_code=400, detail=str(error)) from error


class NVCFContextMiddleware:
    """Pure ASGI middleware: parse the NVCF context of each HTTP request that has `NVCF-REQID`.

    The context is stored at `scope["state"]["nvcf"]` (`request.state.nvcf`, also found by
    `nvcf_context`), and the request id is bound for logging for the whole lifetime of the
    request in the app, streaming included. Invalid `NVCF-*` headers are answered with a 400
    `application/problem+json` (`{"title", "status", "detail", "header", "value"}`) without
    calling the app. Requests without `NVCF-REQID` (health checks), WebSocket and lifespan
    events pass through untouched.
    Install it with `app.add_middleware(NVCFContextMiddleware)`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(
            name.lower() == _REQUEST_ID_HEADER for name, _ in scope["headers"]
        ):
            await self.app(scope, receive, send)
            return
        try:
            ctx = InvocationContext.from_headers(scope["headers"])
        except InvalidHeader as error:
            await _send_problem(send, error)
            return
        scope.setdefault("state", {})[STATE_KEY] = ctx
        with bind_request_id(ctx.request_id):
            await self.app(scope, receive, send)


async def _send_problem(send: Send, error: InvalidHeader) -> None:
    body = invalid_header_problem(error)
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
