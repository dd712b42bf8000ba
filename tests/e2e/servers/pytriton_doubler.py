"""PyTriton container for the end-to-end tests: model `doubler` doubles INPUT and echoes the
request's NVCF-REQID.

Configured like an NVCF PyTriton container (`nvcf_triton_config`: NVCF-* headers forwarded into
request parameters, strict readiness); ports from TRITON_HTTP_PORT, TRITON_GRPC_PORT and
TRITON_METRICS_PORT, all on 127.0.0.1. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton

from nvcf_worker.integrations.pytriton import nvcf_triton_config


def infer(requests: list[Any]) -> list[dict[str, Any]]:
    """OUTPUT = 2 * INPUT; REQID = the NVCF-REQID header Triton forwarded ('' if none)."""
    responses = []
    for request in requests:
        request_id = str((request.parameters or {}).get("NVCF-REQID", ""))
        responses.append(
            {
                "OUTPUT": (request["INPUT"] * 2).astype(np.float32),
                "REQID": np.array([request_id.encode()], dtype=np.object_),
            }
        )
    return responses


def main() -> None:
    # PyTriton shuts down cleanly on KeyboardInterrupt; the stack stops servers with SIGTERM.
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
            model_name="doubler",
            infer_func=infer,
            inputs=[Tensor(name="INPUT", dtype=np.float32, shape=(-1,))],
            outputs=[
                Tensor(name="OUTPUT", dtype=np.float32, shape=(-1,)),
                Tensor(name="REQID", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(batching=False),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
