"""An inference container for the gateway-form tests: says what reached it, on any method and path.

Usage: `gateway_container.py PORT NAME`. `GET /v2/health/ready` is 200. Every other request, by its
`X-Gw-Action` header:

* `echo` (default): JSON `{name, method, target, headers: [[name, value], ...], body}` where
  `target` is the request target exactly as it arrived (path and query, undecoded);
* `sse`: `X-Gw-Events` (3) server-sent events `data: {"i": i}`, one every 50 ms;
* `accepted`: 202 `{"left": n}` until `X-Gw-Polls` (2) polls of the same NVCF-REQID arrived
  (a poll is a GET on the function's invocation path), then 200 `{"polled": n, "target": ...}`
  with the target of the first request.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web


def build_app(name: str) -> web.Application:
    seen: dict[str, tuple[int, str]] = {}

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        action = request.headers.get("X-Gw-Action", "echo")
        if action == "sse":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for index in range(int(request.headers.get("X-Gw-Events", "3"))):
                await response.write(f"data: {json.dumps({'i': index})}\n\n".encode())
                await asyncio.sleep(0.05)
            await response.write_eof()
            return response
        if action == "accepted":
            request_id = request.headers.get("NVCF-REQID", "")
            polls, target = seen.get(request_id, (-1, request.raw_path))
            polls += 1
            seen[request_id] = (polls, target)
            wanted = int(request.headers.get("X-Gw-Polls", "2"))
            if polls < wanted:
                return web.json_response({"left": wanted - polls}, status=202)
            return web.json_response({"polled": polls, "target": target})
        document = {
            "name": name,
            "method": request.method,
            "target": request.raw_path,
            "headers": [[key, value] for key, value in request.headers.items()],
            "body": body.decode(errors="replace"),
        }
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    web.run_app(build_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
