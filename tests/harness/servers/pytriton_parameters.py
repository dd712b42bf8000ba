"""PyTriton server for tests: model `nvcf_parameters` echoes INPUT and returns the request
parameters (HTTP headers forwarded by Triton) as JSON in PARAMETERS.

Run by the `pytriton_server` fixture: ports from TRITON_HTTP_PORT, TRITON_GRPC_PORT and
TRITON_METRICS_PORT; binds 127.0.0.1; forwards `NVCF-*` headers; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import numpy as np

from nvcf_worker.integrations.tritonserver import (
    NVCF_HEADER_FORWARD_PATTERN,
    prepare_pytriton_environment,
)


def infer(requests: list[Any]) -> list[dict[str, Any]]:
    """Echo INPUT; PARAMETERS is the request's parameters as a JSON object."""
    responses = []
    for request in requests:
        parameters = json.dumps(dict(request.parameters or {}), sort_keys=True)
        responses.append(
            {
                "OUTPUT": request["INPUT"],
                "PARAMETERS": np.array([parameters.encode()], dtype=np.object_),
            }
        )
    return responses


def main() -> None:
    # PyTriton starts tritonserver with a copy of os.environ: fix it before Triton() exists.
    prepare_pytriton_environment()
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    # The harness stops servers with SIGTERM; PyTriton shuts down cleanly on KeyboardInterrupt.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=int(os.environ["TRITON_HTTP_PORT"]),
        grpc_address="127.0.0.1",
        grpc_port=int(os.environ["TRITON_GRPC_PORT"]),
        metrics_address="127.0.0.1",
        metrics_port=int(os.environ["TRITON_METRICS_PORT"]),
        http_header_forward_pattern=NVCF_HEADER_FORWARD_PATTERN,
        exit_on_error=True,
        strict_readiness=True,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="nvcf_parameters",
            infer_func=infer,
            inputs=[Tensor(name="INPUT", dtype=bytes, shape=(-1,))],
            outputs=[
                Tensor(name="OUTPUT", dtype=bytes, shape=(-1,)),
                Tensor(name="PARAMETERS", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(batching=False),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
