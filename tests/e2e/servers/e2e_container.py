"""An inference container for the end-to-end tests: one invocation route, steered by headers.

Usage: `e2e_container.py PORT [HEALTH_FILE]`. Every path but the ones below is the invocation
route; the `X-E2e-Action` header picks what it does:

* `echo` (default): JSON `{method, path, headers: [[name, value], ...], body_b64, body_sha256,
  body_length}` with an exact Content-Length;
* `raw`: the request body back as `application/octet-stream`;
* `sse`: `X-E2e-Events` (100) server-sent events `data: {"i": i, "t": <time.time()>}`, one every
  `X-E2e-Interval-Ms` (10) ms, no Content-Length;
* `sleep`: answers `{"slept": S}` after `X-E2e-Seconds` seconds, or gives up (counted as
  `abandoned`) as soon as its client disconnects;
* `die`: SIGKILLs its own process: before the response head (`X-E2e-Die: before-head`, default),
  after the head and `X-E2e-Sent` (100) bytes of a declared `X-E2e-Length` (1000) (`after-head`),
  or after 3 SSE events (`mid-stream`);
* `drop`: closes the connection without answering, and goes on serving.

`GET /v2/health/ready` answers the status code written in HEALTH_FILE (503 while it is missing;
200 when no file is given). `GET /stats` is `{requests, in_flight, max_in_flight, abandoned}` of
the invocation route.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web


def build_app(health_file: Path | None) -> web.Application:
    stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "abandoned": 0}

    async def ready(_request: web.Request) -> web.Response:
        status = 200
        if health_file is not None:
            try:
                status = int((await asyncio.to_thread(health_file.read_text)).strip() or "503")
            except (FileNotFoundError, ValueError):
                status = 503
        return web.Response(status=status, text=f"health {status}")

    async def report(_request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def invoke(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            return await act(request, request.headers.get("X-E2e-Action", "echo"))
        finally:
            stats["in_flight"] -= 1

    async def act(request: web.Request, action: str) -> web.StreamResponse:
        body = await request.read()
        if action == "echo":
            document = {
                "method": request.method,
                "path": request.path_qs,
                "headers": [[name, value] for name, value in request.headers.items()],
                "body_b64": base64.b64encode(body).decode(),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_length": len(body),
            }
            return web.Response(body=json.dumps(document).encode(), content_type="application/json")
        if action == "raw":
            return web.Response(body=body, content_type="application/octet-stream")
        if action == "sleep":
            seconds = float(request.headers.get("X-E2e-Seconds", "1"))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                # aiohttp does not cancel a handler whose client left; notice it here.
                if request.transport is None or request.transport.is_closing():
                    stats["abandoned"] += 1
                    raise web.HTTPServiceUnavailable(text="client left")
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            return web.json_response({"slept": seconds})
        if action == "sse":
            events = int(request.headers.get("X-E2e-Events", "100"))
            return await stream_events(request, events, die_after=None)
        if action == "die":
            mode = request.headers.get("X-E2e-Die", "before-head")
            if mode == "mid-stream":
                return await stream_events(request, 10, die_after=3)
            if mode == "after-head":
                response = web.StreamResponse(headers={"Content-Type": "text/plain"})
                response.content_length = int(request.headers.get("X-E2e-Length", "1000"))
                await response.prepare(request)
                await response.write(b"x" * int(request.headers.get("X-E2e-Sent", "100")))
                await die()
            await die()
        if action == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500, text="never sent: the connection is closed")
        raise web.HTTPBadRequest(text=f"unknown X-E2e-Action {action!r}")

    async def stream_events(
        request: web.Request, events: int, die_after: int | None
    ) -> web.StreamResponse:
        interval = float(request.headers.get("X-E2e-Interval-Ms", "10")) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(events):
            if index == die_after:
                await die()
            event = json.dumps({"i": index, "t": time.time()})
            await response.write(f"data: {event}\n\n".encode())
            await asyncio.sleep(interval)
        await response.write_eof()
        return response

    async def die() -> None:
        await asyncio.sleep(0.2)  # let what was written leave the socket buffer
        os.kill(os.getpid(), signal.SIGKILL)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/stats", report)
    app.router.add_route("*", "/{tail:.*}", invoke)
    return app


def main() -> None:
    port = int(sys.argv[1])
    health_file = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    web.run_app(build_app(health_file), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
