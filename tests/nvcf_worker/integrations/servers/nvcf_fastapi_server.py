"""FastAPI server under uvicorn for tests, using `NVCFContextMiddleware` and `Depends(nvcf_context)`.

`GET /health` answers without a context; `POST /infer` (async) and `POST /infer-sync` (run in
the thread pool) read the first asset, report progress twice, write `result.txt` and echo the
context as JSON. Usage: `nvcf_fastapi_server.py PORT`.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request

from nvcf_worker import InvocationContext, configure_logging, current_request_id
from nvcf_worker.integrations.asgi import NVCFContextMiddleware, nvcf_context

logger = logging.getLogger("nvcf_fastapi_server")

NVCFContext = Annotated[InvocationContext, Depends(nvcf_context)]

app = FastAPI()
app.add_middleware(NVCFContextMiddleware)


def serve(ctx: InvocationContext, text: str) -> dict[str, Any]:
    logger.info("serving %s", text)
    asset = ctx.asset_path(ctx.asset_ids[0]).read_bytes() if ctx.asset_ids else b""
    ctx.report_progress(50, {"stage": "read asset"})
    with ctx.open_output("result.txt") as output:
        output.write(asset + b"|" + text.encode())
    ctx.report_progress(100, {"stage": "done", "bytes": len(asset)})
    return {
        "text": text.upper(),
        "context": ctx.to_headers(),
        "bound_request_id": current_request_id(),
    }


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "bound_request_id": current_request_id()}


@app.post("/infer")
async def infer(request: Request, ctx: NVCFContext) -> dict[str, Any]:
    text = (await request.body()).decode()
    result = serve(ctx, text)
    result["same_as_middleware"] = ctx is request.state.nvcf
    return result


@app.post("/infer-sync")
def infer_sync(ctx: NVCFContext) -> dict[str, Any]:
    return serve(ctx, "sync")


def main() -> None:
    configure_logging()
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, log_level="info")


if __name__ == "__main__":
    main()
