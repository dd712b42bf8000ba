"""A tiny BYOC function: aiohttp, `nvcf_worker` for the request context, JSON and SSE answers.

    python examples/byoc/hello/server.py --port 8000

- `GET /v2/health/ready`: 200 once the server listens (what the sidecar polls).
- `POST /`: `{"request_id": <NVCF-REQID>, "echo": <the request's JSON>}`; with
  `Accept: text/event-stream` it streams five server-sent events instead.
- `GET` or `POST /stream`: five server-sent events, one every 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from aiohttp import web

from nvcf_worker import InvalidHeader, InvocationContext, configure_logging
from nvcf_worker.integrations.aiohttp import get_context, nvcf_context_middleware

log = logging.getLogger("hello")
EVENTS = 5


def _context(request: web.Request) -> InvocationContext:
    # The middleware parsed the NVCF-* headers (invalid ones already got a 400 problem) and
    # bound the request id to every log line of this call.
    try:
        return get_context(request)
    except InvalidHeader as error:  # called without NVCF-REQID, i.e. not through NVCF
        raise web.HTTPBadRequest(text=str(error)) from error


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def infer(request: web.Request) -> web.StreamResponse:
    ctx = _context(request)
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await _stream(request, ctx)
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    log.info("echoing %d bytes", len(raw))
    return web.json_response({"request_id": ctx.request_id, "echo": body})


async def stream(request: web.Request) -> web.StreamResponse:
    return await _stream(request, _context(request))


async def _stream(request: web.Request, ctx: InvocationContext) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for index in range(1, EVENTS + 1):
        data = json.dumps({"request_id": ctx.request_id, "event": index, "of": EVENTS})
        await response.write(f"id: {index}\ndata: {data}\n\n".encode())
        if index < EVENTS:
            await asyncio.sleep(0.2)
    await response.write_eof()
    log.info("streamed %d events", EVENTS)
    return response


def make_app() -> web.Application:
    app = web.Application(middlewares=[nvcf_context_middleware])
    app.router.add_get("/v2/health/ready", health)
    app.router.add_post("/", infer)
    app.router.add_route("GET", "/stream", stream)
    app.router.add_route("POST", "/stream", stream)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="listen port on 127.0.0.1 (8000)")
    args = parser.parse_args()
    configure_logging()
    log.info("hello function listening on http://127.0.0.1:%d", args.port)
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
