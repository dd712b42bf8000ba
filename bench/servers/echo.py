"""The model of `bench sidecar`: a JSON echo behind Triton's readiness route, on loopback.

`python echo.py --port N` answers `POST /` with `{"echo": <the request's JSON>}` and
`GET /v2/health/ready` with 200; the benchmark calls it directly and through the sidecar.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import orjson
from aiohttp import web

__all__ = ["create_app", "main"]

HEALTH_PATH = "/v2/health/ready"
ECHO_PATH = "/"


async def echo(request: web.Request) -> web.Response:
    """Parse the body as JSON and answer it wrapped in `{"echo": ...}` (400 when it is not JSON)."""
    body = await request.read()
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return web.json_response({"error": f"body is not JSON: {error}"}, status=400)
    return web.Response(body=orjson.dumps({"echo": document}), content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200)


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post(ECHO_PATH, echo)
    app.router.add_get(HEALTH_PATH, ready)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="JSON echo server for `python -m bench sidecar`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args(argv)
    # No access log: one line per request would cost this 2-core machine more than the echo.
    web.run_app(create_app(), host=options.host, port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
