"""A tiny inference container whose readiness a test controls with a file.

Usage: `shell_container.py PORT STATE_FILE`. `GET /v2/health/ready` answers the status code
written in STATE_FILE (e.g. `200`, `404`, `503`), or 503 while the file does not exist.
`POST /infer?seconds=S` sleeps S seconds, then answers 200 `{"slept": S}`; `GET /calls` tells how
many inference calls started and finished.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web


def build_app(state_file: Path) -> web.Application:
    calls = {"started": 0, "finished": 0}

    def read_status() -> int:
        try:
            return int(state_file.read_text().strip() or "503")
        except (FileNotFoundError, ValueError):
            return 503

    async def ready(_request: web.Request) -> web.Response:
        status = read_status()
        return web.Response(status=status, text=f"health {status}")

    async def infer(request: web.Request) -> web.Response:
        calls["started"] += 1
        await request.read()
        seconds = float(request.query.get("seconds", "0"))
        await asyncio.sleep(seconds)
        calls["finished"] += 1
        return web.json_response({"slept": seconds})

    async def count(_request: web.Request) -> web.Response:
        return web.json_response(calls)

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/infer", infer)
    app.router.add_get("/calls", count)
    return app


def main() -> None:
    port, state_file = int(sys.argv[1]), Path(sys.argv[2])
    web.run_app(build_app(state_file), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
