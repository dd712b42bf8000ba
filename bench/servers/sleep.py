"""The load of `bench scaling`: a function that answers after the time its caller asks for.

`python sleep.py --port N` answers `POST /` with `{"slept": s}` after `s` seconds when the body
is `{"sleep": s}` (at once for any other JSON) and `GET /v2/health/ready` with 200. One call
holds one request slot for `s` seconds, so a burst of them is a known amount of work.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import orjson
from aiohttp import web

__all__ = ["create_app", "main"]


async def sleep(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        document = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as error:
        return web.json_response({"error": f"body is not JSON: {error}"}, status=400)
    seconds = float(document.get("sleep", 0)) if isinstance(document, dict) else 0.0
    if seconds > 0:
        await asyncio.sleep(seconds)
    return web.Response(body=orjson.dumps({"slept": seconds}), content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200)


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/", sleep)
    app.router.add_get("/v2/health/ready", ready)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sleeping server for `python -m bench scaling`")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args(argv)
    # No access log: a burst's lines would cost this 2-core machine more than the sleeps.
    web.run_app(create_app(), host="127.0.0.1", port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
