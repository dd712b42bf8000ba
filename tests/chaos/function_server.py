"""The chaos suite's function server: answers a request's id back and logs every execution.

Usage: `function_server.py --port N --log FILE`. `POST /invoke` sleeps 5-50 ms, appends one JSON
line `{"id", "reqid", "start", "end"}` to FILE and answers `{"id", "reqid"}` (the body's `id` and
the `NVCF-REQID` header). `GET /v2/health/ready` answers 200. Standard library and aiohttp only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from aiohttp import web

SLEEP_RANGE_S = (0.005, 0.050)


class ExecutionLog:
    """One line per finished execution, appended with a single `write(2)` on an `O_APPEND` file,
    so a SIGKILL never leaves half a line in the middle of the file: at worst the last line is
    torn, and the next start of the server ends it with a newline before appending."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size:
            with open(path, "rb") as existing:
                existing.seek(size - 1)
                if existing.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def append(self, record: dict[str, object]) -> None:
        os.write(self._fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")


def build_app(log: ExecutionLog) -> web.Application:
    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def invoke(request: web.Request) -> web.Response:
        start = time.time()
        reqid = request.headers.get("NVCF-REQID", "")
        raw = await request.read()
        try:
            body = json.loads(raw)
            request_id = body["id"] if isinstance(body, dict) else None
        except ValueError:
            request_id = None
        if not isinstance(request_id, str):
            return web.json_response({"error": f"no string id in {raw[:80]!r}"}, status=400)
        await asyncio.sleep(random.uniform(*SLEEP_RANGE_S))
        log.append({"id": request_id, "reqid": reqid, "start": start, "end": time.time()})
        return web.json_response({"id": request_id, "reqid": reqid})

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/invoke", invoke)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="the execution log (appended to)")
    args = parser.parse_args()
    web.run_app(
        build_app(ExecutionLog(args.log)),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
