"""PyTriton server for tests: model `nvcf_context` serves each request with its NVCF context.

It reads the request's first asset, reports progress twice, writes `result.txt` to the large-output
directory and returns TEXT upper-cased plus the context as JSON. Run by the `pytriton_server`
fixture: ports from TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT; SIGTERM stops it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton

from nvcf_worker import InvocationContext, configure_logging, current_request_id
from nvcf_worker.integrations.pytriton import infer_with_context, nvcf_triton_config

logger = logging.getLogger("nvcf_pytriton_model")


@infer_with_context
def infer(request: Request, ctx: InvocationContext) -> dict[str, Any]:
    text = b" ".join(request["TEXT"].tolist()).decode()
    logger.info("serving %s", text)
    asset = ctx.asset_path(ctx.asset_ids[0]).read_bytes() if ctx.asset_ids else b""
    ctx.report_progress(50, {"stage": "read asset"})
    with ctx.open_output("result.txt") as output:
        output.write(asset + b"|" + text.encode())
    ctx.report_progress(100, {"stage": "done", "bytes": len(asset)})
    echo = {"context": ctx.to_headers(), "bound_request_id": current_request_id()}
    return {
        "TEXT_UPPER": np.array([text.upper().encode()], dtype=np.object_),
        "CONTEXT": np.array([json.dumps(echo).encode()], dtype=np.object_),
    }


def main() -> None:
    configure_logging()
    # The harness stops servers with SIGTERM; PyTriton shuts down cleanly on KeyboardInterrupt.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = nvcf_triton_config(
        http_address="127.0.0.1",
        http_port=int(os.environ["TRITON_HTTP_PORT"]),
        grpc_address="127.0.0.1",
        grpc_port=int(os.environ["TRITON_GRPC_PORT"]),
        metrics_address="127.0.0.1",
        metrics_port=int(os.environ["TRITON_METRICS_PORT"]),
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="nvcf_context",
            infer_func=infer,
            inputs=[Tensor(name="TEXT", dtype=bytes, shape=(-1,))],
            outputs=[
                Tensor(name="TEXT_UPPER", dtype=bytes, shape=(1,)),
                Tensor(name="CONTEXT", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(batching=False),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
