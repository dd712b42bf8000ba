"""aiohttp server for tests, using `nvcf_context_middleware`.

`GET /health` answers without a context; `POST /infer` reads the first asset, reports progress
twice, writes `result.txt` and echoes the context as JSON. Usage: `nvcf_aiohttp_server.py PORT`.
"""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from nvcf_worker import configure_logging, current_request_id
from nvcf_worker.integrations.aiohttp import get_context, nvcf_context_middleware

logger = logging.getLogger("nvcf_aiohttp_server")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "bound_request_id": current_request_id()})


async def infer(request: web.Request) -> web.Response:
    ctx = get_context(request)
    text = await request.text()
    logger.info("serving %s", text)
    asset = ctx.asset_path(ctx.asset_ids[0]).read_bytes() if ctx.asset_ids else b""
    ctx.report_progress(50, {"stage": "read asset"})
    with ctx.open_output("result.txt") as output:
        output.write(asset + b"|" + text.encode())
    ctx.report_progress(100, {"stage": "done", "bytes": len(asset)})
    return web.json_response(
        {
            "text": text.upper(),
            "context": ctx.to_headers(),
            "bound_request_id": current_request_id(),
        }
    )


def main() -> None:
    configure_logging()
    app = web.Application(middlewares=[nvcf_context_middleware])
    app.router.add_get("/health", health)
    app.router.add_post("/infer", infer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
